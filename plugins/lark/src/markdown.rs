//! The markdown detector that picks between a plain `text` message and a schema-2.0 markdown
//! card for an agent reply (reference §L7).
//!
//! It is a port of the reference's nine regular expressions as hand-written scans (the plugin
//! carries no regex engine). It deliberately leans towards "markdown": prose that happens to
//! contain a pair of backticks still renders fine in a card, while a false negative shows the
//! user raw `**bold**`. Owns nothing else; rendering lives in `render`.

/// Whether `text` contains markdown worth rendering as a card.
///
/// True when the text contains a fenced code marker (three backticks), inline code (a backtick,
/// at least one other character, another backtick), `**x**`, `__x__`, a `[text](url)` link, or
/// a line that is a heading (`#`–`######` then a space or tab), a bullet (`-`, `*` or `+` after
/// optional spaces/tabs, then a space or tab), a numbered item (`1.` then a space or tab), a
/// quote (`>` then a space or tab), a rule (exactly `---`, `***` or `___`) or a table row
/// (starts with `|` and contains a second `|`). Empty text is plain.
pub fn contains_markdown(text: &str) -> bool {
    if text.is_empty() {
        return false;
    }
    if text.contains("```") || has_inline_code(text) {
        return true;
    }
    if has_delimited(text, "**", b'*') || has_delimited(text, "__", b'_') || has_link(text) {
        return true;
    }
    text.split('\n').any(is_markdown_line)
}

/// A backtick, one or more non-backtick characters, a backtick (`` `[^`]+` ``).
fn has_inline_code(text: &str) -> bool {
    let mut last: Option<usize> = None;
    for (at, byte) in text.bytes().enumerate() {
        if byte == b'`' {
            if last.is_some_and(|previous| at > previous + 1) {
                return true;
            }
            last = Some(at);
        }
    }
    false
}

/// `marker`, one or more bytes other than `forbidden`, `marker` (e.g. `\*\*[^*]+\*\*`).
fn has_delimited(text: &str, marker: &str, forbidden: u8) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text[from..].find(marker) {
        let start = from + found + marker.len();
        let run = bytes[start..]
            .iter()
            .take_while(|byte| **byte != forbidden)
            .count();
        if run > 0 && text[start + run..].starts_with(marker) {
            return true;
        }
        from = from + found + 1;
    }
    false
}

/// `[text](url)` with non-empty text and url on one stretch (`\[[^\]]+\]\([^)]+\)`).
fn has_link(text: &str) -> bool {
    let bytes = text.as_bytes();
    for (open, _) in text.match_indices('[') {
        let label = bytes[open + 1..]
            .iter()
            .take_while(|byte| **byte != b']')
            .count();
        let close = open + 1 + label;
        if label == 0 || close >= bytes.len() || bytes.get(close + 1) != Some(&b'(') {
            continue;
        }
        let url = bytes[close + 2..]
            .iter()
            .take_while(|byte| **byte != b')')
            .count();
        if url > 0 && close + 2 + url < bytes.len() {
            return true;
        }
    }
    false
}

fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// The line-anchored patterns: heading, bullet, numbered item, quote, rule, table row.
fn is_markdown_line(line: &str) -> bool {
    let bytes = line.as_bytes();
    // Heading: `^#{1,6}[ \t]`.
    let hashes = bytes.iter().take_while(|byte| **byte == b'#').count();
    if (1..=6).contains(&hashes) && bytes.get(hashes).copied().is_some_and(is_blank) {
        return true;
    }
    // Quote: `^>[ \t]`.
    if bytes.first() == Some(&b'>') && bytes.get(1).copied().is_some_and(is_blank) {
        return true;
    }
    // Rule: a line that is exactly `---`, `***` or `___`.
    if matches!(line, "---" | "***" | "___") {
        return true;
    }
    // Table row: `^\|.*\|`.
    if bytes.first() == Some(&b'|') && bytes[1..].contains(&b'|') {
        return true;
    }
    // Bullet `^[ \t]*[-*+][ \t]` and numbered item `^[ \t]*\d+\.[ \t]`.
    let indent = bytes.iter().take_while(|byte| is_blank(**byte)).count();
    let rest = &bytes[indent..];
    if matches!(rest.first(), Some(b'-' | b'*' | b'+'))
        && rest.get(1).copied().is_some_and(is_blank)
    {
        return true;
    }
    let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
    digits > 0
        && rest.get(digits) == Some(&b'.')
        && rest.get(digits + 1).copied().is_some_and(is_blank)
}

#[cfg(test)]
mod tests {
    use super::contains_markdown;

    /// The reference's `TestContainsMarkdown` table.
    #[test]
    fn reference_table() {
        let plain = [
            "",
            "Hello!",
            "sure, on it",
            "Hello, world. How are you?",
            "the build is green",
            "我已经创建了 issue MUL-42",
        ];
        for text in plain {
            assert!(!contains_markdown(text), "{text:?} must stay plain");
        }
        let markdown = [
            "# Heading",
            "## Second-level",
            "**bold** statement",
            "call __init__ then run",
            "- bullet one\n- bullet two",
            "1. first\n2. second",
            "> quoted line",
            "see [docs](https://example.com)",
            "run `make check` first",
            "```go\nfunc foo() {}\n```",
            "| col1 | col2 |\n|------|------|\n| a    | b    |",
            "---",
            "  - indented bullet",
            "plain prose\nthen a `inline code`\nthen more prose",
        ];
        for text in markdown {
            assert!(contains_markdown(text), "{text:?} is markdown");
        }
    }

    /// Where each pattern stops, as the reference's regular expressions draw the line.
    #[test]
    fn pattern_boundaries() {
        let plain = [
            "####### seven hashes",
            "#hashtag",
            "a lone ` backtick",
            "two adjacent `` backticks",
            "-dash without a space",
            "----",
            "| a lone pipe",
            "text | with | pipes not at the start",
            "1.5 million",
            ">quote without a space",
            "[] ()",
            "[label] (spaced)",
            "[label]()",
            "a ** b",
            "snake_case and __ alone",
            "-\r\n",
        ];
        for text in plain {
            assert!(!contains_markdown(text), "{text:?} must stay plain");
        }
        let markdown = [
            "###### Six",
            "#\tTab heading",
            "***bold***",
            "intro\n\n* star bullet",
            "+ plus bullet",
            "\t- tab-indented bullet",
            "12. twelfth",
            "***",
            "___",
            "text\n---\nmore",
            "||",
            "`x`",
            "**multi\nline bold**",
            "[a](b)",
            "* *",
        ];
        for text in markdown {
            assert!(contains_markdown(text), "{text:?} is markdown");
        }
    }
}
