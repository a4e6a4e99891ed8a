//! The markdown rendering hook: agents answer in markdown; a channel shows its own format.
//!
//! Implement [`Renderer`] for a channel with rich text (HTML, its own markup, cards) and call it
//! in `deliver`; the default method, [`plain`], is for channels that show plain text: it drops the
//! markup and keeps the words, link targets and list structure.
//!
//! ```
//! use switchboard_plugin_sdk::markdown::{PlainText, Renderer};
//! assert_eq!(PlainText.render("**Hi** see [docs](https://x.test)"), "Hi see docs (https://x.test)");
//! ```

/// Turns an agent's markdown into what the channel shows. The default is [`plain`].
pub trait Renderer {
    /// Renders `markdown` for the channel.
    fn render(&self, markdown: &str) -> String {
        plain(markdown)
    }
}

/// The default renderer: plain text (see [`plain`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainText;

impl Renderer for PlainText {}

/// Markdown → plain text: headings, emphasis, inline code marks and code fences dropped, links
/// as `text (url)`, list bullets as `•`, quotes kept as `> `. Code blocks keep their text as is.
#[must_use]
pub fn plain(markdown: &str) -> String {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push(line.to_string());
            continue;
        }
        let indent = &line[..line.len() - trimmed.len()];
        let heading = trimmed.trim_start_matches('#');
        let text = if heading.len() < trimmed.len() && heading.starts_with(' ') {
            heading.trim_start()
        } else {
            trimmed
        };
        let (bullet, text) = match text.strip_prefix("- ").or_else(|| text.strip_prefix("* ")) {
            Some(rest) => ("• ", rest),
            None => ("", text),
        };
        out.push(format!("{indent}{bullet}{}", inline(text)));
    }
    out.join("\n")
}

/// Inline markup of one line: `**`, `__`, `` ` `` and `~~` dropped, `[text](url)` → `text (url)`.
fn inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("**").or_else(|| rest.strip_prefix("__")) {
            rest = after;
        } else if let Some(after) = rest.strip_prefix("~~") {
            rest = after;
        } else if let Some(after) = rest.strip_prefix('`') {
            rest = after;
        } else if c == '['
            && let Some((label, url, after)) = link(rest)
        {
            out.push_str(label);
            if !url.is_empty() && url != label {
                out.push_str(" (");
                out.push_str(url);
                out.push(')');
            }
            rest = after;
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `[label](url)rest` → (label, url, rest).
fn link(text: &str) -> Option<(&str, &str, &str)> {
    let close = text.find("](")?;
    let label = &text[1..close];
    let after = &text[close + 2..];
    let end = after.find(')')?;
    Some((label, &after[..end], &after[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_dropped_and_words_kept() {
        let md = "# Title\n\nSome **bold**, __also__, `code` and ~~gone~~ text.\n\
                  - one\n* two\n> quoted\n```\nlet x = **1**;\n```\n[a](https://a.test) [b]";
        assert_eq!(
            plain(md),
            "Title\n\nSome bold, also, code and gone text.\n• one\n• two\n> quoted\n\
             let x = **1**;\na (https://a.test) [b]"
        );
    }

    #[test]
    fn a_custom_renderer_overrides_the_default() {
        struct Shout;
        impl Renderer for Shout {
            fn render(&self, markdown: &str) -> String {
                plain(markdown).to_uppercase()
            }
        }
        assert_eq!(Shout.render("**hi**"), "HI");
        assert_eq!(PlainText.render("#hashtag"), "#hashtag");
    }
}
