//! Chat commands typed by users: `/new` and `/issue` (multica-lark §H, fresh/issue command
//! tests).
//!
//! A command is recognised only on the first non-empty line of the user's own text, must be
//! lower case and must be followed by whitespace or the end of the line (`/issuetracker`,
//! `/Issue` and commands in the middle of a sentence are plain text).

/// The `/new` directive.
pub const NEW_DIRECTIVE: &str = "/new";
/// The `/issue` directive.
pub const ISSUE_DIRECTIVE: &str = "/issue";

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/new` bare (`None`) or with the text that starts the fresh context.
    NewContext(Option<String>),
    /// `/issue <title>` with optional description lines.
    Issue {
        /// Rest of the directive line, trimmed.
        title: String,
        /// The lines after the title line (layout preserved), if any.
        description: Option<String>,
    },
    /// `/issue` without a title.
    IssueUsage,
}

/// Parses a command from the user's own text; `None` for plain text.
pub fn parse_command(text: &str) -> Option<Command> {
    let (first_line, following) = first_non_empty_line(text)?;
    let line = first_line.trim_start();
    if let Some(rest) = directive_argument(line, NEW_DIRECTIVE) {
        let mut body = rest.trim().to_string();
        let following = trim_blank_lines(following);
        if !following.is_empty() {
            if !body.is_empty() {
                body.push('\n');
            }
            body.push_str(following);
        }
        return Some(Command::NewContext((!body.is_empty()).then_some(body)));
    }
    if let Some(rest) = directive_argument(line, ISSUE_DIRECTIVE) {
        let title = rest.trim();
        if title.is_empty() {
            return Some(Command::IssueUsage);
        }
        let description = trim_blank_lines(following);
        return Some(Command::Issue {
            title: title.to_string(),
            description: (!description.is_empty()).then(|| description.to_string()),
        });
    }
    None
}

/// The text after `directive` when `line` starts with it followed by whitespace or the end.
fn directive_argument<'a>(line: &'a str, directive: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(directive)?;
    match rest.chars().next() {
        None => Some(rest),
        Some(ch) if ch.is_whitespace() => Some(rest),
        Some(_) => None,
    }
}

/// Splits off the first line that is not blank; returns it and everything after it.
fn first_non_empty_line(text: &str) -> Option<(&str, &str)> {
    let mut rest = text;
    loop {
        let (line, after) = match rest.split_once('\n') {
            Some((line, after)) => (line, after),
            None => (rest, ""),
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.trim().is_empty() {
            return Some((line, after));
        }
        if after.is_empty() {
            return None;
        }
        rest = after;
    }
}

/// Removes leading blank lines and trailing whitespace, keeping the indentation of the first
/// kept line and every inner line.
fn trim_blank_lines(text: &str) -> &str {
    let text = text.trim_end();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
            start += line.len();
        } else {
            break;
        }
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_line_endings() {
        assert_eq!(
            parse_command("\r\n/issue Title\r\nbody\r\n"),
            Some(Command::Issue {
                title: "Title".into(),
                description: Some("body".into())
            })
        );
    }

    #[test]
    fn blank_line_helper() {
        assert_eq!(
            trim_blank_lines("\n  \n  indented\n\nnext  \n\n"),
            "  indented\n\nnext"
        );
        assert_eq!(trim_blank_lines(" \n \t\n"), "");
    }
}
