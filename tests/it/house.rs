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
    ("llm", 3),
    ("telegram", 3),
    ("db", 3),
    ("repo", 4),
    ("migrate", 4),
    ("catalog", 5),
    ("retention", 5),
    ("embedded", 5),
    ("takeover", 6),
    ("actors", 6),
    ("bot", 7),
    ("pipeline", 8),
    ("server", 9),
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
            if module
                .last()
                .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
            {
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
            'r' if matches!(chars.peek(), Some('"' | '#'))
                && !out.ends_with(|c: char| c.is_alphanumeric() || c == '_') =>
            {
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

/// One `use` declaration's leaf: the name it binds (`*` for a glob), the absolute
/// path it names, and whether it is `pub` (visible to other files: a re-export).
#[derive(Clone, Debug)]
struct Use {
    public: bool,
    name: String,
    path: Module,
}

/// A file of the crate, read: its module, its code without comments and strings, its
/// `use` declarations (paths made absolute; other crates' left out), and its code
/// outside them.
struct Source {
    module: Module,
    uses: Vec<Use>,
    rest: String,
    children: BTreeSet<String>,
}

/// The `mod x;` a file declares.
fn children(code: &str) -> BTreeSet<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line
                .strip_prefix("pub ")
                .or(line.strip_prefix("pub(crate) "))
                .unwrap_or(line);
            line.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(|m| m.trim().to_string())
        })
        .collect()
}

/// A path's first segment made absolute for a file of `module`: `crate`, `super`,
/// `self` or a child module; `None` for another crate's path.
fn anchor(first: &str, module: &Module, children: &BTreeSet<String>) -> Option<Module> {
    match first {
        "crate" => Some(Vec::new()),
        "super" => Some(module[..module.len().saturating_sub(1)].to_vec()),
        "self" => Some(module.clone()),
        child if children.contains(child) => {
            let mut path = module.clone();
            path.push(child.to_string());
            Some(path)
        }
        _ => None,
    }
}

/// Reads a file: splits its `use` declarations from the rest of its code.
fn read(module: &Module, text: &str) -> Source {
    let code = code(text);
    let children = children(&code);
    let (mut uses, mut rest, mut at) = (Vec::new(), String::new(), 0);
    while let Some(found) = code[at..].find("use ") {
        let start = at + found;
        let before = code[..start].trim_end();
        let boundary = before.is_empty() || before.ends_with([';', '{', '}', ']']) || before.ends_with("pub");
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let boundary = boundary || (public && before.ends_with(')'));
        let word = code[..start]
            .chars()
            .last()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let Some(end) = code[start..].find(';').map(|e| start + e) else {
            break;
        };
        if !(boundary && word) {
            rest.push_str(&code[at..start + 4]);
            at = start + 4;
            continue;
        }
        rest.push_str(&code[at..start]);
        let tree = code[start + 4..end].trim();
        let mut leaves = Vec::new();
        leaves_of(tree, Vec::new(), &mut leaves);
        for (path, name) in leaves {
            let Some(first) = path.first() else { continue };
            if let Some(mut absolute) = anchor(first, module, &children) {
                absolute.extend(path[1..].iter().filter(|s| *s != "self").cloned());
                uses.push(Use {
                    public,
                    name,
                    path: absolute,
                });
            }
        }
        at = end + 1;
    }
    rest.push_str(&code[at..]);
    Source {
        module: module.clone(),
        uses,
        rest,
        children,
    }
}

/// The leaves of a use tree (`a::{b, c::d as e, f::*}`): each path and the name it
/// binds.
fn leaves_of(tree: &str, prefix: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let mut path = prefix;
        path.extend(
            tree[..open]
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        let inner = &tree[open + 1..];
        let close = matching(inner);
        for item in split_top(&inner[..close]) {
            leaves_of(item, path.clone(), out);
        }
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((path, alias)) => (path, Some(alias.trim().to_string())),
        None => (tree, None),
    };
    let mut full = prefix;
    full.extend(
        path.split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
    );
    let name = alias.unwrap_or_else(|| match full.last().map(String::as_str) {
        Some("self") => full.iter().rev().nth(1).cloned().unwrap_or_default(),
        Some(last) => last.to_string(),
        None => String::new(),
    });
    if full.last().is_some_and(|l| l == "*") {
        full.pop();
    }
    out.push((full, name));
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

/// The file that defines what `path` names: the longest prefix of it that is a file,
/// then through that file's re-exports (`pub use`) for the rest, as Rust resolves it.
fn define(path: &Module, sources: &BTreeMap<Module, Source>, depth: usize) -> Option<Module> {
    let file = (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| sources.contains_key(p))?;
    let rest = &path[file.len()..];
    let (Some(next), true) = (rest.first(), depth < 16) else {
        return Some(file);
    };
    let source = &sources[&file];
    let exported = source.uses.iter().filter(|u| u.public);
    for u in exported {
        if u.name == *next {
            let mut target = u.path.clone();
            target.extend(rest[1..].iter().cloned());
            return define(&target, sources, depth + 1).or(Some(file));
        }
        if u.name == "*" {
            let mut target = u.path.clone();
            target.extend(rest.iter().cloned());
            if let Some(found) = define(&target, sources, depth + 1)
                && found != u.path
            {
                return Some(found);
            }
        }
    }
    Some(file)
}

/// The absolute paths named inline (outside `use`) through `crate::`, `super::`,
/// `self::` or a child module.
fn inline_paths(source: &Source) -> Vec<Module> {
    let mut found = Vec::new();
    let text = source.rest.as_str();
    let starts = ["crate", "super", "self"]
        .into_iter()
        .map(String::from)
        .chain(source.children.iter().cloned());
    for first in starts {
        let prefix = format!("{first}::");
        let mut at = 0;
        while let Some(i) = text[at..].find(&prefix) {
            let start = at + i;
            at = start + prefix.len();
            if text[..start]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue;
            }
            // The run of `ident::ident::...` right after the prefix.
            let mut segments = Vec::new();
            let mut cursor = &text[at..];
            loop {
                let ident: String = cursor
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if ident.is_empty() {
                    break;
                }
                cursor = &cursor[ident.len()..];
                segments.push(ident);
                match cursor.strip_prefix("::") {
                    Some(more) => cursor = more,
                    None => break,
                }
            }
            if let Some(mut path) = anchor(&first, &source.module, &source.children) {
                path.extend(segments);
                found.push(path);
            }
        }
    }
    found
}

/// Whether `name` occurs as a whole identifier in `text`.
fn mentions(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().last();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The import graph of the files in `files`: an arrow from a file to the file that
/// defines each thing it uses. A facade's `pub use` of its own descendants is not an
/// arrow by itself (it only re-exports); using such a name in its own code is.
fn graph(files: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let sources: BTreeMap<Module, Source> = files
        .iter()
        .map(|(module, path)| {
            (
                module.clone(),
                read(module, &std::fs::read_to_string(path).unwrap()),
            )
        })
        .collect();
    sources
        .values()
        .map(|source| {
            let own = |path: &Module| path.len() > source.module.len() && path.starts_with(&source.module);
            let mut named: Vec<Module> = inline_paths(source);
            for u in &source.uses {
                let reexport = u.public && own(&u.path);
                if !reexport || (u.name != "*" && mentions(&source.rest, &u.name)) {
                    named.push(u.path.clone());
                }
            }
            let arrows = named
                .iter()
                .filter_map(|path| define(path, &sources, 0))
                .filter(|target| *target != source.module)
                .collect();
            (source.module.clone(), arrows)
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
        assert!(
            graph.values().map(BTreeSet::len).sum::<usize>() > 10,
            "found the imports"
        );
        // Each circle with its arrows, so that the one to turn around can be chosen.
        let found: Vec<Vec<String>> = circles(&graph)
            .into_iter()
            .map(|members| {
                let inside: BTreeSet<&str> = members.iter().map(String::as_str).collect();
                graph
                    .iter()
                    .filter(|(from, _)| inside.contains(from.join("::").as_str()))
                    .flat_map(|(from, tos)| {
                        tos.iter()
                            .filter(|to| inside.contains(to.join("::").as_str()))
                            .map(move |to| format!("{} -> {}", from.join("::"), to.join("::")))
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            found,
            Vec::<Vec<String>>::new(),
            "import circles, by their arrows"
        );
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
            .unwrap_or_else(|| {
                panic!("module {top} has no layer in LAYERS (tests/it/house.rs, docs/architecture.md)")
            })
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

/// The rules bite: a made-up circle is found, and paths are read as Rust resolves
/// them (through re-exports to the defining file, comments and strings left out).
#[test]
fn the_house_rules_find_a_circle_and_read_paths_as_rust_does() {
    let m = |s: &str| -> Module {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    let made_up: BTreeMap<Module, BTreeSet<Module>> = [
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
        (m("d"), BTreeSet::from([m("a")])),
    ]
    .into();
    let found = circles(&made_up);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].iter().collect::<BTreeSet<_>>().len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod actors;\npub mod db;\npub mod error;\n");
    write(
        "actors/mod.rs",
        "mod gate;\nmod request;\npub use gate::Gate;\npub use request::{DbRequest, Table};\n\
         pub fn start() -> Gate { gate::Gate }\n",
    );
    write(
        "actors/gate.rs",
        "/// [`crate::db::Database`]\npub struct Gate;\nconst S: &str = \"crate::error\";\n",
    );
    write(
        "actors/request.rs",
        "use crate::actors::Gate;\nuse crate::{db::Database, error::Error as E};\npub trait DbRequest {}\npub trait Table {}\n\
         fn f() { let _ = super::gate::Gate; }\n",
    );
    write("db.rs", "pub struct Database;\n");
    write("error.rs", "pub struct Error;\n");
    let mut files_found = BTreeMap::new();
    files(dir.path(), dir.path(), &mut files_found);
    let graph = graph(&files_found);
    let arrows = |module: &str| graph[&m(module)].iter().map(|t| t.join("::")).collect::<Vec<_>>();
    // The facade uses `Gate` in its own code, and only re-exports the request's traits.
    assert_eq!(arrows("actors"), ["actors::gate"]);
    // A doc link and a string are not arrows.
    assert!(arrows("actors::gate").is_empty());
    // Through the facade's re-export to the defining file; groups and aliases; super.
    assert_eq!(arrows("actors::request"), ["actors::gate", "db", "error"]);
}
