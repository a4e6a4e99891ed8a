//! Chat commands typed by users: `/<name> [args]` on the first non-empty line of the user's own
//! text (the bot's mention already removed by the decoder; a slash command's `command-body` is
//! `/cmd text`). The name is ASCII letters, digits, `_` and `-`, lower-cased, and must be followed
//! by whitespace or the end of the line (`/usr/bin` is text). What a name means is the host's.

use switchboard_plugin_sdk::bindings::exports::switchboard::channel::commands::Command;

/// Parses a command from the user's own text; `None` for plain text.
pub fn parse_command(text: &str) -> Option<Command> {
    let text = text.trim_start();
    let (line, following) = text.split_once('\n').unwrap_or((text, ""));
    let rest = line.trim_end_matches('\r').strip_prefix('/')?;
    let name_len = rest
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')))
        .unwrap_or(rest.len());
    let (name, same_line) = rest.split_at(name_len);
    if name.is_empty() || same_line.chars().next().is_some_and(|c| !c.is_whitespace()) {
        return None;
    }
    let args = match (same_line.trim(), following.trim()) {
        (line, "") => line.to_string(),
        ("", more) => more.to_string(),
        (line, more) => format!("{line}\n{more}"),
    };
    Some(Command {
        name: name.to_ascii_lowercase(),
        args: args.replace("\r\n", "\n"),
    })
}
