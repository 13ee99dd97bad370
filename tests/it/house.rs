//! The crate's house rules, read off the source: no import circles between files, and
//! each layer imports only the layers below it (`docs/architecture.md` draws them).
//!
//! Each file under `src/` is a room; each path through `crate::` (in a `use` or inline)
//! or `super::` is an arrow to the file that defines it. Doc comments and comments are
//! not arrows (a doc link may point anywhere). The library and the binary (`main.rs`,
//! `cli/`, a crate of its own that imports the library as `botdb::`) are checked each
//! on its own. No database is involved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, bottom to top: a module may import only modules of
/// a lower rank (its own files among themselves: the file graph has no circle).
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("config", 1),
    ("shutdown", 1),
    ("telemetry", 1),
    ("model", 2),
    ("db", 3),
    ("repo", 4),
    ("migrate", 4),
    ("catalog", 5),
    ("retention", 5),
    ("embedded", 5),
    ("takeover", 6),
    ("actors", 6),
    ("bot", 7),
    ("server", 8),
];

type Module = Vec<String>;

/// Every `.rs` file under `dir`, by module path (`src/a/b.rs` and `src/a/b/mod.rs` are
/// `a::b`; `lib.rs` and `main.rs` are the root).
fn files(dir: &Path, root: &Path, out: &mut BTreeMap<Module, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut module: Module = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
                module.pop();
            }
            out.insert(module, path);
        }
    }
}

/// The code of a file without its comments (doc comments included) and string
/// literals, and without its `#[cfg(test)] mod tests` (unit tests may reach anywhere).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                out.push_str("\"\"");
            }
            // A raw string `r"..."` / `r#"..."#`: to its closing quote and hashes.
            'r' if matches!(chars.peek(), Some('"' | '#')) && !out.ends_with(|c: char| c.is_alphanumeric() || c == '_') => {
                let mut hashes = 0;
                while chars.peek() == Some(&'#') {
                    chars.next();
                    hashes += 1;
                }
                if chars.next() != Some('"') {
                    continue;
                }
                let mut closing = 0;
                let mut in_quote = false;
                for c in chars.by_ref() {
                    if in_quote && c == '#' {
                        closing += 1;
                    } else {
                        in_quote = c == '"';
                        closing = 0;
                    }
                    if in_quote && closing == hashes {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal (`'"'`, `'\''`), not a lifetime.
            '\'' => {
                let mut ahead = chars.clone();
                match (ahead.next(), ahead.next()) {
                    (Some('\\'), _) => {
                        chars.next();
                        chars.next();
                        for c in chars.by_ref() {
                            if c == '\'' {
                                break;
                            }
                        }
                    }
                    (Some(_), Some('\'')) => {
                        chars.next();
                        chars.next();
                    }
                    _ => out.push(c),
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The paths a file of `module` names through `crate::` (expanding `{a, b::c}`
/// groups) and `super::` (its parent module), as module paths from the crate root.
fn named_paths(code: &str, module: &Module) -> Vec<Module> {
    let mut found = Vec::new();
    let parent = module[..module.len().saturating_sub(1)].to_vec();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            expand(rest, base.clone(), &mut found);
        }
    }
    found
}

/// Reads one path (`a::b::{c, d::e}`) at the start of `text` into `found`.
fn expand(text: &str, mut path: Module, found: &mut Vec<Module>) {
    let mut rest = text;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            if let Some(group) = rest.strip_prefix('{') {
                let end = matching(group);
                for item in split_top(&group[..end]) {
                    expand(item.trim(), path.clone(), found);
                }
            } else {
                found.push(path);
            }
            return;
        }
        rest = &rest[ident.len()..];
        if ident != "self" {
            path.push(ident);
        }
        match rest.strip_prefix("::") {
            Some(more) => rest = more,
            None => {
                found.push(path);
                return;
            }
        }
    }
}

/// The index of the `}` that closes a group opened just before `text`.
fn matching(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

/// `a, b::{c, d}, e` split at the commas outside braces.
fn split_top(text: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The file a path lands in: its longest prefix that is a file.
fn resolve(path: &Module, files: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| files.contains_key(p))
}

/// The import graph of the files in `files` (arrows between distinct files).
fn graph(files: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    files
        .iter()
        .map(|(module, path)| {
            let text = std::fs::read_to_string(path).unwrap();
            let arrows = named_paths(&code(&text), module)
                .iter()
                .filter_map(|p| resolve(p, files))
                .filter(|target| target != module)
                .collect();
            (module.clone(), arrows)
        })
        .collect()
}

/// The circles of `graph`: its strongly connected components of more than one file.
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit<'a>(
        node: &'a Module,
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        seen: &mut BTreeSet<&'a Module>,
        out: &mut Vec<&'a Module>,
    ) {
        if !seen.insert(node) {
            return;
        }
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, seen, out);
        }
        out.push(node);
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, tos) in graph {
        for to in tos {
            reversed.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for node in order.into_iter().rev() {
        let mut component = Vec::new();
        visit(node, &reversed, &mut seen, &mut component);
        if component.len() > 1 {
            found.push(component.iter().map(|m| m.join("::")).collect());
        }
    }
    found
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's files and the binary's, apart.
fn crates() -> [BTreeMap<Module, PathBuf>; 2] {
    let mut all = BTreeMap::new();
    files(&src(), &src(), &mut all);
    let (bin, lib) = all.into_iter().partition(|(module, path): &(Module, PathBuf)| {
        path.ends_with("main.rs") || module.first().is_some_and(|m| m == "cli")
    });
    [lib, bin]
}

#[test]
fn no_file_of_the_crate_imports_itself_through_others() {
    for files in crates() {
        assert!(files.len() > 3, "read the files under {}", src().display());
        let graph = graph(&files);
        assert!(graph.values().map(BTreeSet::len).sum::<usize>() > 10, "found the imports");
        assert_eq!(circles(&graph), Vec::<Vec<String>>::new(), "import circles");
    }
}

#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let [lib, _] = crates();
    let rank = |module: &Module| -> u32 {
        let top = module.first().map(String::as_str).unwrap_or("");
        LAYERS
            .iter()
            .find(|(name, _)| *name == top)
            .map(|(_, rank)| *rank)
            .unwrap_or_else(|| panic!("module {top} has no layer in LAYERS (tests/it/house.rs, docs/architecture.md)"))
    };
    let mut wrong = Vec::new();
    for (from, tos) in graph(&lib) {
        if from.is_empty() {
            continue; // lib.rs: the root declares and re-exports everything
        }
        for to in tos {
            if !to.is_empty() && from[0] != to[0] && rank(&to) >= rank(&from) {
                wrong.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert_eq!(wrong, Vec::<String>::new(), "imports of a layer not below");
}

/// The rules bite: a made-up circle and a made-up upward import are found.
#[test]
fn the_house_rules_find_a_circle_and_read_paths_as_rust_does() {
    let m = |s: &str| -> Module { s.split("::").map(str::to_string).collect() };
    let graph: BTreeMap<Module, BTreeSet<Module>> = [
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
        (m("d"), BTreeSet::from([m("a")])),
    ]
    .into();
    let found = circles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].iter().collect::<BTreeSet<_>>().len(), 3);
    let code = code(
        "use crate::db::{Database, hosts::Hosts};\n/// [`crate::actors::X`]\nlet s = \"crate::bot\"; \
         let e = crate::error::Error::Internal; use super::gate::Gate;",
    );
    let mut paths = named_paths(&code, &m("actors::actor"));
    paths.sort();
    assert_eq!(
        paths,
        vec![
            m("actors::gate::Gate"),
            m("db::Database"),
            m("db::hosts::Hosts"),
            m("error::Error::Internal")
        ]
    );
}
