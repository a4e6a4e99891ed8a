//! Commands typed by users: `/<name> [args]`, read as the Lark plugin reads them (a name of
//! ASCII letters, digits, `_` and `-` on the first non-empty line, then whitespace or the end).
//! The decoder has already stripped this bot's `@username` suffix from the command body, so a
//! name still followed by `@…` is another bot's command and not a command for us.

use switchboard_plugin_sdk::bindings::exports::switchboard::channel::commands::Command;

/// Parses a command from the user's own text; none for plain text.
pub fn parse(text: &str) -> Option<Command> {
    let text = text.trim_start();
    let rest = text.strip_prefix('/')?;
    let name_len = rest
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        .unwrap_or(rest.len());
    let (name, after) = rest.split_at(name_len);
    if name.is_empty() || after.chars().next().is_some_and(|c| !c.is_whitespace()) {
        return None;
    }
    Some(Command {
        name: name.to_ascii_lowercase(),
        args: after.trim().replace("\r\n", "\n"),
    })
}
