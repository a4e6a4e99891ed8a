//! Markdown → Telegram HTML (`parse_mode: HTML`), cut into messages of at most 4,096 UTF-16
//! code units.
//!
//! Supported: fenced code blocks (`<pre><code class="language-x">`), inline code, `**bold**`,
//! `__bold__`, `*italic*`, `_italic_`, `~~strike~~`, `[text](url)` links and `#` headings (bold).
//! Everything else is text with `&`, `<` and `>` escaped; a marker without its closing pair
//! stays literal. Inline markup does not cross lines.
//!
//! Chunks are measured on the HTML, which is never shorter than the text Telegram counts, so
//! a chunk always fits. Blocks (paragraphs, code blocks) are packed whole; one that does not fit
//! is split: a code block by lines into several closed `<pre>` blocks, a paragraph between lines
//! or words. A split never falls inside a tag, an entity or a character (so never inside a
//! UTF-16 surrogate pair).

/// Telegram's longest message text, in UTF-16 code units.
pub const MAX_UNITS: usize = 4096;

/// Escapes text for Telegram HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(ch),
        }
    }
    out
}

fn units(text: &str) -> usize {
    text.encode_utf16().count()
}

/// `text` escaped, in pieces of at most `limit` UTF-16 units each, cut after a newline, else
/// after a space, else between characters.
pub fn split_escaped(text: &str, limit: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (mut used, mut cut, mut newline, mut space) = (0, rest.len(), None, None);
        for (at, ch) in rest.char_indices() {
            let width = match ch {
                '&' => 5,
                '<' | '>' => 4,
                '"' => 6,
                _ => ch.len_utf16(),
            };
            if used + width > limit {
                cut = newline.or(space).unwrap_or(at);
                if cut == 0 {
                    cut = ch.len_utf8(); // a limit narrower than one character
                }
                break;
            }
            used += width;
            match ch {
                '\n' => newline = Some(at + 1),
                ' ' => space = Some(at + 1),
                _ => {}
            }
        }
        pieces.push(escape(&rest[..cut]));
        rest = &rest[cut..];
    }
    pieces
}

/// Renders `markdown` as Telegram HTML messages, each at most [`MAX_UNITS`] long. Empty text
/// gives no message.
pub fn markdown_chunks(markdown: &str) -> Vec<String> {
    pack(blocks(markdown))
}

/// Plain text (a notice) as Telegram HTML messages.
pub fn plain_chunks(text: &str) -> Vec<String> {
    split_escaped(text.trim(), MAX_UNITS)
}

/// Packs rendered blocks into messages, a blank line between two blocks of one message.
fn pack(blocks: Vec<String>) -> Vec<String> {
    let mut chunks: Vec<String> = Vec::new();
    for block in blocks {
        match chunks.last_mut() {
            Some(last) if units(last) + 2 + units(&block) <= MAX_UNITS => {
                last.push_str("\n\n");
                last.push_str(&block);
            }
            _ => chunks.push(block),
        }
    }
    chunks
}

/// The rendered blocks of `markdown`, each at most [`MAX_UNITS`] long.
fn blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            flush_paragraph(&mut paragraph, &mut out);
            // The block runs to the closing fence, or to the end of an unfinished reply.
            let code: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.trim_start().starts_with("```"))
                .collect();
            code_block(info.trim(), &code.join("\n"), &mut out);
        } else if trimmed.is_empty() {
            flush_paragraph(&mut paragraph, &mut out);
        } else {
            paragraph.push(line);
        }
    }
    flush_paragraph(&mut paragraph, &mut out);
    out
}

fn code_block(language: &str, code: &str, out: &mut Vec<String>) {
    let language: String = language
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '#'))
        .collect();
    let open = if language.is_empty() {
        "<pre>".to_string()
    } else {
        format!("<pre><code class=\"language-{language}\">")
    };
    let close = if language.is_empty() {
        "</pre>"
    } else {
        "</code></pre>"
    };
    let room = MAX_UNITS - units(&open) - units(close);
    let pieces = if code.is_empty() {
        vec![String::new()]
    } else {
        split_escaped(code, room)
    };
    for piece in pieces {
        out.push(format!("{open}{}{close}", piece.trim_end_matches('\n')));
    }
}

fn flush_paragraph(paragraph: &mut Vec<&str>, out: &mut Vec<String>) {
    if paragraph.is_empty() {
        return;
    }
    let rendered: Vec<String> = paragraph.iter().map(|line| render_line(line)).collect();
    let html = rendered.join("\n");
    if units(&html) <= MAX_UNITS {
        out.push(html);
    } else {
        // Too long for one message even alone: plain text, cut between lines or words.
        out.extend(split_escaped(&paragraph.join("\n"), MAX_UNITS));
    }
    paragraph.clear();
}

fn render_line(line: &str) -> String {
    let trimmed = line.trim_start();
    let hashes = trimmed.bytes().take_while(|b| *b == b'#').count();
    if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
        return format!("<b>{}</b>", inline(trimmed[hashes..].trim()));
    }
    for bullet in ["- ", "* ", "+ "] {
        if let Some(item) = trimmed.strip_prefix(bullet) {
            let indent = &line[..line.len() - trimmed.len()];
            return format!("{indent}• {}", inline(item));
        }
    }
    inline(line)
}

/// Inline markup of one line.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        if let Some((html, used)) = span(
            rest,
            at == 0 || !text[..at].ends_with(char::is_alphanumeric),
        ) {
            out.push_str(&html);
            at += used;
        } else {
            let ch = rest.chars().next().unwrap_or(' ');
            out.push_str(&escape(ch.encode_utf8(&mut [0; 4])));
            at += ch.len_utf8();
        }
    }
    out
}

/// The markup span that starts `rest`, rendered, and its length in bytes.
fn span(rest: &str, word_start: bool) -> Option<(String, usize)> {
    if let Some(code) = rest.strip_prefix('`') {
        let end = code.find('`').filter(|e| *e > 0)?;
        return Some((format!("<code>{}</code>", escape(&code[..end])), end + 2));
    }
    if let Some(label) = rest.strip_prefix('[') {
        let close = label
            .find(']')
            .filter(|c| label[c + 1..].starts_with('('))?;
        let url_len = label[close + 2..].find(')')?;
        let url = &label[close + 2..close + 2 + url_len];
        if close == 0 || url.is_empty() || url.contains(char::is_whitespace) {
            return None;
        }
        let html = format!(
            "<a href=\"{}\">{}</a>",
            escape(url),
            inline(&label[..close])
        );
        return Some((html, 1 + close + 2 + url_len + 1));
    }
    for (marker, tag, needs_word_start) in [
        ("**", "b", false),
        ("__", "b", true),
        ("~~", "s", false),
        ("*", "i", false),
        ("_", "i", true),
    ] {
        let Some(inner) = rest.strip_prefix(marker) else {
            continue;
        };
        if (needs_word_start && !word_start) || inner.starts_with(char::is_whitespace) {
            continue;
        }
        let Some(end) = inner.find(marker).filter(|e| *e > 0) else {
            continue;
        };
        let body = &inner[..end];
        let after = &inner[end + marker.len()..];
        if body.ends_with(char::is_whitespace)
            || (needs_word_start && after.starts_with(char::is_alphanumeric))
        {
            continue;
        }
        return Some((
            format!("<{tag}>{}</{tag}>", inline(body)),
            marker.len() * 2 + end,
        ));
    }
    None
}
