//! Chat commands typed by users: `/<name> [args]` (reference §H).
//!
//! A command is recognised only on the first non-empty line of the user's own text (the bot's
//! own mention is already removed from it by the decoder), after leading whitespace. The name
//! is the run of ASCII letters, digits, `_` and `-` after the `/`, lower-cased, and must be
//! followed by whitespace or the end of the line (`/usr/bin`, `//x` and commands in the middle
//! of a sentence are plain text). What the name means is the host's business: this module only
//! splits the text.

/// The `/new` directive (the host's fresh-context command).
pub const NEW_DIRECTIVE: &str = "/new";
/// The name of the `/new` command: the enricher keeps only its args as the body.
pub const NEW_COMMAND: &str = "new";

/// A parsed command (the WIT `command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Lower-case name without the `/`.
    pub name: String,
    /// The rest of the text, trimmed: the rest of the command line, then the lines after it
    /// (blank lines between the two dropped, inner layout preserved); empty when none.
    pub args: String,
}

/// Parses a command from the user's own text; `None` for plain text.
pub fn parse_command(text: &str) -> Option<Command> {
    let (first_line, following) = first_non_empty_line(text)?;
    let line = first_line.trim_start();
    let rest = line.strip_prefix('/')?;
    let name_len = rest
        .bytes()
        .position(|byte| !(byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-')))
        .unwrap_or(rest.len());
    if name_len == 0 {
        return None;
    }
    let (name, same_line) = rest.split_at(name_len);
    if same_line
        .chars()
        .next()
        .is_some_and(|ch| !ch.is_whitespace())
    {
        return None;
    }
    let same_line = same_line.trim();
    let following = trim_blank_lines(following);
    let args = match (same_line.is_empty(), following.is_empty()) {
        (_, true) => same_line.to_string(),
        (true, false) => following.trim_start().to_string(),
        (false, false) => format!("{same_line}\n{following}"),
    };
    Some(Command {
        name: name.to_ascii_lowercase(),
        args,
    })
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
            Some(Command {
                name: "issue".into(),
                args: "Title\nbody".into()
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
