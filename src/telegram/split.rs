//! A reply longer than one Telegram message, as several messages.
//!
//! Telegram refuses a `sendMessage` whose text is over 4,096 characters, and counts
//! them as JavaScript does: in UTF-16 code units (an emoji outside the Basic
//! Multilingual Plane counts twice). A model's reply may be far longer, so the outbox
//! sends it as the parts [`split_message`] gives, in order.
//!
//! Where a part ends, best first: at a line break in the last half of what fits (a
//! paragraph or a line stays whole), else at the last whitespace that fits (a word, or a
//! URL, stays whole), else, for one word longer than a message, at the last grapheme
//! boundary that fits (an emoji with its modifiers, a letter with its accents, a flag,
//! `\r\n` stay together). Only a grapheme longer than a whole message (hundreds of
//! combining marks) is cut between its characters, and even then never inside a
//! surrogate pair: no part is ever invalid text.
//!
//! The whitespace at a cut is dropped (Telegram would trim it from the end of a message
//! anyway, and a part must not start with a blank line); the indentation of the line
//! that follows a line break is kept. Nothing else is dropped: the parts, in order, with
//! the whitespace between them, are the text.

use std::ops::Range;

use unicode_segmentation::UnicodeSegmentation;

/// Telegram's longest message, in UTF-16 code units (what Telegram calls characters).
pub const MAX_MESSAGE_UTF16: usize = 4096;

/// The length of `text` as Telegram counts it: UTF-16 code units.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// `text` as messages of at most `max` UTF-16 code units each, in order (see the
/// module docs for where they are cut). A text that fits is returned whole, as it is;
/// an empty text gives no message. No part is empty or only whitespace, unless the
/// whole text is (and fits).
///
/// A `max` below 2 is taken as 2: one character outside the Basic Multilingual Plane
/// is two units and cannot be cut.
pub fn split_message(text: &str, max: usize) -> Vec<String> {
    split_ranges(text, max)
        .into_iter()
        .map(|part| text[part].to_string())
        .collect()
}

/// The byte ranges of `text` that [`split_message`] returns; what lies between them is
/// whitespace.
fn split_ranges(text: &str, max: usize) -> Vec<Range<usize>> {
    let max = max.max(2);
    if text.is_empty() {
        return Vec::new();
    }
    if utf16_len(text) <= max {
        let whole = 0..text.len();
        return Vec::from([whole]);
    }
    let mut parts = Vec::new();
    let mut start = 0;
    // The units from `start` on, kept as it moves so that the whole is read once.
    let mut remaining = utf16_len(text);
    while start < text.len() {
        let rest = &text[start..];
        if rest.graphemes(true).all(is_blank) {
            // The whitespace after the last cut, with nothing after it.
            break;
        }
        if remaining <= max {
            parts.push(start..start + trim_blank_end(rest));
            break;
        }
        let next = match find_cut(rest, max) {
            Cut::AtBlank(at) => {
                let end = start + trim_blank_end(&rest[..at]);
                if end > start {
                    parts.push(start..end);
                }
                at + skip_blank(&rest[at..])
            }
            Cut::Hard(at) => {
                // Kept indentation before a grapheme too long to join it is whitespace
                // at a cut like any other.
                if !rest[..at].graphemes(true).all(is_blank) {
                    parts.push(start..start + at);
                }
                at
            }
        };
        remaining -= utf16_len(&rest[..next]);
        start += next;
    }
    parts
}

/// Where the part that begins `rest` ends (a byte offset into `rest`).
enum Cut {
    /// At whitespace starting here: the whitespace is dropped.
    AtBlank(usize),
    /// Inside a word: nothing is dropped.
    Hard(usize),
}

/// The cut of the first part of `rest`, which is longer than `max` units.
fn find_cut(rest: &str, max: usize) -> Cut {
    let mut units = 0;
    // The end of the last whole grapheme that fits.
    let mut fits = 0;
    let mut last_break = None;
    let mut last_blank = None;
    for (at, grapheme) in rest.grapheme_indices(true) {
        // Whitespace just past the window is a cut too: the part is then the window.
        if is_blank(grapheme) && at > 0 {
            if is_line_break(grapheme) && units >= max / 2 {
                last_break = Some(at);
            }
            last_blank = Some(at);
        }
        units += utf16_len(grapheme);
        if units > max {
            break;
        }
        fits = at + grapheme.len();
    }
    if let Some(at) = last_break.or(last_blank) {
        return Cut::AtBlank(at);
    }
    if fits > 0 {
        return Cut::Hard(fits);
    }
    // The first grapheme alone is longer than a message: cut between its characters,
    // never inside one (so never inside a surrogate pair).
    let mut units = 0;
    let mut end = 0;
    for (at, c) in rest.char_indices() {
        units += c.len_utf16();
        if units > max {
            break;
        }
        end = at + c.len_utf8();
    }
    // `max` is at least 2, so at least one character fits.
    Cut::Hard(end.max(rest.chars().next().map_or(rest.len(), char::len_utf8)))
}

/// Whitespace a message may be cut at. Not the no-break spaces: they are there so that
/// the words around them stay together.
fn is_blank(grapheme: &str) -> bool {
    grapheme
        .chars()
        .all(|c| c.is_whitespace() && !matches!(c, '\u{a0}' | '\u{2007}' | '\u{202f}'))
}

fn is_line_break(grapheme: &str) -> bool {
    grapheme.contains(['\n', '\r', '\u{2028}', '\u{2029}'])
}

/// The length of `part` without the whitespace at its end.
fn trim_blank_end(part: &str) -> usize {
    part.grapheme_indices(true)
        .rev()
        .find(|(_, g)| !is_blank(g))
        .map_or(0, |(at, g)| at + g.len())
}

/// How much of the whitespace that begins `rest` a cut drops: all of it, but the
/// indentation after its last line break (the next line's, which is meaningful in code).
fn skip_blank(rest: &str) -> usize {
    let mut after_break = None;
    let mut end = rest.len();
    for (at, grapheme) in rest.grapheme_indices(true) {
        if !is_blank(grapheme) {
            end = at;
            break;
        }
        if is_line_break(grapheme) {
            after_break = Some(at + grapheme.len());
        }
    }
    after_break.unwrap_or(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Checks every promise of [`split_message`] on `text`, and returns the parts.
    fn check(text: &str, max: usize) -> Vec<String> {
        let ranges = split_ranges(text, max);
        let max = max.max(2);
        let boundaries: Vec<usize> = text
            .grapheme_indices(true)
            .map(|(at, _)| at)
            .chain([text.len()])
            .collect();
        let mut previous_end = 0;
        for (i, part) in ranges.iter().enumerate() {
            let s = &text[part.clone()];
            assert!(!s.is_empty(), "part {i} is empty");
            assert!(utf16_len(s) <= max, "part {i} is {} units", utf16_len(s));
            if ranges.len() > 1 {
                assert!(
                    !s.graphemes(true).all(is_blank),
                    "part {i} of {text:?} ({max}) is {s:?}"
                );
            }
            // What lies between two parts is whitespace: nothing else is lost.
            let gap = &text[previous_end..part.start];
            assert!(gap.graphemes(true).all(is_blank), "lost {gap:?} before part {i}");
            previous_end = part.end;
            // No grapheme is cut, unless it alone is longer than a message.
            for at in [part.start, part.end] {
                let whole = boundaries.contains(&at);
                let giant = text
                    .grapheme_indices(true)
                    .find(|(from, g)| (*from..from + g.len()).contains(&at))
                    .is_some_and(|(_, g)| utf16_len(g) > max);
                assert!(whole || giant, "part {i} cuts a grapheme at byte {at}");
            }
        }
        assert!(
            text[previous_end..].graphemes(true).all(is_blank),
            "the end was lost"
        );
        if !text.is_empty() && !text.graphemes(true).all(is_blank) {
            assert!(!ranges.is_empty(), "a text gave no part");
        }
        split_message(text, max)
    }

    #[test]
    fn a_text_that_fits_is_returned_as_it_is() {
        assert_eq!(check("hello", 4096), vec!["hello"]);
        assert_eq!(check("  indented\n", 4096), vec!["  indented\n"]);
        assert!(check("", 4096).is_empty());
        let exactly = "я".repeat(MAX_MESSAGE_UTF16);
        assert_eq!(check(&exactly, MAX_MESSAGE_UTF16), vec![exactly.clone()]);
    }

    #[test]
    fn a_20000_character_reply_is_cut_at_line_breaks() {
        // 228 characters and a line break a paragraph: 17 paragraphs fit in a message.
        let paragraph = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(4);
        let paragraph = format!("{}\n", paragraph.trim_end());
        let reply = paragraph.repeat(20_000_usize.div_ceil(paragraph.len()));
        assert!(reply.chars().count() >= 20_000);
        let parts = check(&reply, MAX_MESSAGE_UTF16);
        assert_eq!(parts.len(), 88_usize.div_ceil(17), "88 paragraphs, 17 a message");
        for part in &parts[..parts.len() - 1] {
            // Each ends where a paragraph ended, in the last half of the window.
            assert_eq!(part.lines().count(), 17);
            assert!(part.ends_with("elit."), "{:?}", &part[part.len() - 10..]);
        }
        assert_eq!(
            parts.join("\n"),
            reply.trim_end(),
            "joined, the parts are the reply"
        );
    }

    #[test]
    fn prose_without_line_breaks_is_cut_between_words() {
        let words: Vec<String> = (0..3000).map(|i| format!("word{i}")).collect();
        let text = words.join(" ");
        let parts = check(&text, 100);
        assert!(parts.iter().all(|p| !p.starts_with(' ') && !p.ends_with(' ')));
        assert_eq!(parts.join(" "), text, "no word was cut");
    }

    #[test]
    fn one_10000_character_word_is_cut_where_the_window_ends() {
        let word = "x".repeat(10_000);
        let parts = check(&word, MAX_MESSAGE_UTF16);
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        assert_eq!(lens, vec![4096, 4096, 1808]);
        assert_eq!(parts.concat(), word);
        // A long word after a short one: the short one goes alone, the URL stays whole.
        let url = format!("https://example.org/{}", "a".repeat(3000));
        let text = format!("see {url}");
        assert_eq!(check(&text, 3022), vec!["see".to_string(), url]);
    }

    #[test]
    fn emoji_and_cjk_are_counted_in_utf16_and_never_cut() {
        // 😀 is two UTF-16 units: 3000 of them are 6000 units, two messages.
        let smileys = "😀".repeat(3000);
        let parts = check(&smileys, MAX_MESSAGE_UTF16);
        assert_eq!(parts.len(), 2);
        assert_eq!(utf16_len(&parts[0]), 4096);
        assert_eq!(parts[0].chars().count(), 2048, "2,048 emoji fill a message");
        // An odd window: the pair that would straddle it goes whole to the next part.
        let parts = check(&smileys, 4095);
        assert_eq!(utf16_len(&parts[0]), 4094);
        assert_eq!(parts.concat(), smileys);
        // A family (seven chars joined by ZWJ, eleven units) and flags stay whole.
        let family = "👨‍👩‍👧‍👦";
        let text = family.repeat(20);
        let parts = check(&text, 30);
        assert!(parts.iter().all(|p| p.graphemes(true).all(|g| g == family)));
        assert_eq!(parts.concat(), text);
        let flags = "🇺🇦🇯🇵".repeat(50);
        assert_eq!(check(&flags, 9).concat(), flags);
        // CJK has no spaces: cut at the window, each character one unit.
        let cjk = "中文字符".repeat(2000);
        let parts = check(&cjk, MAX_MESSAGE_UTF16);
        assert_eq!(parts[0].chars().count(), 4096);
        assert_eq!(parts.concat(), cjk);
        // An accent stays on its letter.
        let accented = "e\u{301}".repeat(100);
        let parts = check(&accented, 7);
        assert!(parts.iter().all(|p| p.starts_with('e')));
    }

    #[test]
    fn a_grapheme_longer_than_a_message_is_cut_between_characters() {
        let zalgo = format!("a{}", "\u{301}".repeat(50));
        let parts = check(&zalgo, 10);
        assert_eq!(parts.concat(), zalgo);
        assert!(parts.iter().all(|p| utf16_len(p) <= 10));
        // With max below 2, an emoji still goes whole.
        assert_eq!(check("😀😀", 1), vec!["😀", "😀"]);
    }

    #[test]
    fn crlf_is_one_line_break_and_dropped_whole() {
        let line = "a line of text\r\n";
        let text = line.repeat(100);
        let parts = check(&text, 40);
        assert!(parts.iter().all(|p| !p.contains('\r') || p.contains("\r\n")));
        assert!(parts.iter().all(|p| !p.starts_with('\n') && !p.ends_with('\r')));
        assert_eq!(parts.join("\r\n"), text.trim_end());
    }

    #[test]
    fn indentation_after_a_cut_line_break_is_kept_and_blank_lines_dropped() {
        let text = format!("{}\n\n\n    indented code\n", "x ".repeat(30));
        let parts = check(&text, 70);
        assert_eq!(parts.last().map(String::as_str), Some("    indented code"));
        // No-break spaces are not places to cut.
        let text = "a\u{a0}b ".repeat(20);
        assert!(
            check(&text, 10)
                .iter()
                .all(|p| p.starts_with('a') && p.ends_with('b'))
        );
    }

    #[test]
    fn whitespace_runs_longer_than_a_message_are_dropped() {
        let text = format!("start{}end", " ".repeat(10_000));
        assert_eq!(check(&text, 100), vec!["start", "end"]);
        let text = format!("{}text{}", " ".repeat(300), "\n ".repeat(300));
        assert_eq!(check(&text, 100), vec!["text"]);
    }

    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "a",
            "word",
            " ",
            "  ",
            "\n",
            "\r\n",
            "\n\n",
            "\t",
            "😀",
            "👨‍👩‍👧",
            "🇺🇦",
            "中文",
            "e\u{301}",
            "\u{a0}",
            "\u{301}",
            "\r",
            "xxxxxxxxxxxxxxxxxxxx",
        ])
    }

    proptest! {
        #[test]
        fn every_promise_holds_on_any_text(pieces in prop::collection::vec(piece(), 0..200), max in 1usize..40) {
            check(&pieces.concat(), max);
        }
    }
}
