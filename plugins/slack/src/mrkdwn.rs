//! Markdown (what agents write) → Slack mrkdwn and Block Kit (channels-protocols §1.8–1.9).
//!
//! mrkdwn has `*bold*`, `_italic_`, `~strike~`, code, quotes and `<url|label>`, but no headings,
//! `**bold**` or `[label](url)`; only `&`, `<` and `>` are escaped. A short reply without
//! headings is one plain `text` message; a long or structured one becomes blocks — a `header`
//! per heading and `section`s of at most 3,000 characters — and at most 50 blocks go in one
//! message, so a very long reply is several messages. No text exceeds 40,000 characters.

use serde_json::{Value, json};

/// Slack truncates a message's `text` beyond this many characters.
pub const TEXT_MAX: usize = 40_000;
/// The most characters of a `section` block's text.
pub const SECTION_MAX: usize = 3_000;
/// The most characters of a `header` block's text.
pub const HEADER_MAX: usize = 150;
/// The most blocks in one message.
pub const BLOCKS_MAX: usize = 50;

/// One message to post: its `text` (the whole message, or the notification fallback of its
/// blocks) and its blocks, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// mrkdwn, at most [`TEXT_MAX`] characters.
    pub text: String,
    /// Block Kit blocks, at most [`BLOCKS_MAX`].
    pub blocks: Option<Vec<Value>>,
}

/// Escapes literal text for mrkdwn.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The first `max` characters of `text`.
pub fn truncate(text: &str, max: usize) -> &str {
    text.char_indices()
        .nth(max)
        .map_or(text, |(at, _)| &text[..at])
}

enum Part {
    Heading(String),
    Body(String),
}

/// Splits markdown into headings (plain text) and mrkdwn bodies.
fn parts(markdown: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut body = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            fenced = !fenced;
            body.push_str("```\n");
            continue;
        }
        if fenced {
            body.push_str(&escape(line));
            body.push('\n');
            continue;
        }
        let hashes = trimmed.bytes().take_while(|b| *b == b'#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            if !body.trim().is_empty() {
                parts.push(Part::Body(body.trim_end().to_string()));
            }
            body.clear();
            parts.push(Part::Heading(trimmed[hashes..].trim().to_string()));
            continue;
        }
        body.push_str(&convert_line(line));
        body.push('\n');
    }
    if fenced {
        body.push_str("```\n");
    }
    if !body.trim().is_empty() {
        parts.push(Part::Body(body.trim_end().to_string()));
    }
    parts
}

/// One line outside code blocks: list bullets, quotes, then inline markup.
fn convert_line(line: &str) -> String {
    let indent = &line[..line.len() - line.trim_start().len()];
    let rest = &line[indent.len()..];
    if let Some(item) = ["- ", "* ", "+ "].iter().find_map(|b| rest.strip_prefix(b)) {
        return format!("{indent}• {}", inline(item));
    }
    if let Some(quoted) = rest.strip_prefix('>') {
        return format!("{indent}>{}", inline(quoted));
    }
    format!("{indent}{}", inline(rest))
}

/// Inline markup: code, links, `**bold**`/`__bold__`, `*italic*`, `~~strike~~`.
pub fn inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let closing = |marker: &str| {
            rest.strip_prefix(marker)
                .filter(|after| !after.starts_with(' '))
                .and_then(|after| {
                    after
                        .find(marker)
                        .filter(|end| *end > 0)
                        .map(|end| (after, end))
                })
        };
        if let Some((after, end)) = closing("`") {
            out.push_str(&format!("`{}`", escape(&after[..end])));
            rest = &after[end + 1..];
        } else if let Some(((label, url), tail)) = link(rest) {
            out.push_str(&format!("<{}|{}>", url.replace('>', "%3E"), escape(label)));
            rest = tail;
        } else if let Some((marker, with)) = [("**", "*"), ("__", "*"), ("~~", "~")]
            .into_iter()
            .find(|(m, _)| closing(m).is_some())
        {
            let (after, end) = closing(marker).expect("found above");
            out.push_str(&format!("{with}{}{with}", inline(&after[..end])));
            rest = &after[end + marker.len()..];
        } else if let Some((after, end)) = closing("*") {
            out.push_str(&format!("_{}_", inline(&after[..end])));
            rest = &after[end + 1..];
        } else {
            out.push_str(&escape(&rest[..c.len_utf8()]));
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `[label](url)` at the start of `text`: ((label, url), the rest).
fn link(text: &str) -> Option<((&str, &str), &str)> {
    let inner = text.strip_prefix('[')?;
    let (label, after) = inner.split_once("](")?;
    let (url, tail) = after.split_once(')')?;
    let plausible = !label.contains('[') && !url.contains(char::is_whitespace) && url.contains(':');
    plausible.then_some(((label, url), tail))
}

/// Markdown → mrkdwn as one string (headings as bold lines): streaming updates and notices.
pub fn to_mrkdwn(markdown: &str) -> String {
    let rendered: Vec<String> = parts(markdown)
        .into_iter()
        .map(|part| match part {
            Part::Heading(h) => format!("*{}*", escape(&h)),
            Part::Body(b) => b,
        })
        .collect();
    rendered.join("\n")
}

/// The messages that carry `markdown`.
pub fn render(markdown: &str) -> Vec<Message> {
    let parts = parts(markdown);
    let structured = parts.iter().any(|p| matches!(p, Part::Heading(_)));
    if !structured {
        let text = to_mrkdwn(markdown);
        if text.chars().count() <= SECTION_MAX {
            return vec![Message { text, blocks: None }];
        }
    }
    let mut blocks = Vec::new();
    for part in parts {
        match part {
            Part::Heading(h) => blocks.push(json!({
                "type": "header",
                "text": { "type": "plain_text", "text": truncate(&h, HEADER_MAX), "emoji": true },
            })),
            Part::Body(body) => blocks.extend(
                chunks(&body, SECTION_MAX)
                    .into_iter()
                    .map(|t| json!({ "type": "section", "text": { "type": "mrkdwn", "text": t } })),
            ),
        }
    }
    blocks
        .chunks(BLOCKS_MAX)
        .map(|group| {
            let text: Vec<&str> = group
                .iter()
                .filter_map(|b| b.pointer("/text/text").and_then(Value::as_str))
                .collect();
            Message {
                text: truncate(&text.join("\n"), TEXT_MAX).to_string(),
                blocks: Some(group.to_vec()),
            }
        })
        .collect()
}

/// Splits mrkdwn into pieces of at most `max` characters, at a paragraph, line or word break
/// when one is in the second half of the piece; a code block cut in two is closed and reopened.
pub fn chunks(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.to_string();
    // Room for the "```\n" a cut code block is reopened with and the "\n```" it is closed with.
    let room = max.saturating_sub(8).max(1);
    while rest.chars().count() > max {
        let window = truncate(&rest, room);
        let half = window.len() / 2;
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).filter(|at| *at > half))
            .unwrap_or(window.len());
        let mut piece = rest[..cut].trim_end().to_string();
        let mut next = rest[cut..].trim_start_matches([' ', '\n']).to_string();
        if piece.matches("```").count() % 2 == 1 {
            piece.push_str("\n```");
            next = format!("```\n{next}");
        }
        out.push(piece);
        rest = next;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}
