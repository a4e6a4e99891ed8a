//! Command parsing: `/<name> [args]` on the first non-empty line (the reference's fresh_command
//! cases, generalised to any name).

use switchboard_lark::commands::{Command, parse_command};

fn command(name: &str, args: &str) -> Option<Command> {
    Some(Command {
        name: name.into(),
        args: args.into(),
    })
}

#[test]
fn new_bare() {
    assert_eq!(parse_command("/new"), command("new", ""));
    assert_eq!(parse_command("/new   "), command("new", ""));
    assert_eq!(parse_command("\n/new\n\n"), command("new", ""));
}

#[test]
fn new_with_same_line_text() {
    assert_eq!(parse_command("/new hello"), command("new", "hello"));
    assert_eq!(
        parse_command("/new rebuild the plan  "),
        command("new", "rebuild the plan")
    );
}

#[test]
fn new_after_leading_blank_lines() {
    assert_eq!(
        parse_command("\n \n/new start here"),
        command("new", "start here")
    );
    assert_eq!(
        parse_command("   /new indented"),
        command("new", "indented")
    );
}

#[test]
fn args_span_the_following_lines() {
    assert_eq!(
        parse_command("/issue Title\nmore lines"),
        command("issue", "Title\nmore lines")
    );
    assert_eq!(
        parse_command("/new first line\nsecond line\n  third"),
        command("new", "first line\nsecond line\n  third")
    );
    // Blank lines between the command line and the rest are dropped; inner blank lines kept.
    assert_eq!(
        parse_command("/issue T\n\n\n  indented first\n\nsecond\n\n"),
        command("issue", "T\n  indented first\n\nsecond")
    );
    // Without text on the command line the args are the following lines, trimmed.
    assert_eq!(
        parse_command("/new\n\n  body below\n"),
        command("new", "body below")
    );
    assert_eq!(
        parse_command("/issue\nonly a description"),
        command("issue", "only a description")
    );
}

#[test]
fn any_name_is_a_command_lower_cased() {
    assert_eq!(parse_command("/status"), command("status", ""));
    assert_eq!(parse_command("/Help me"), command("help", "me"));
    assert_eq!(parse_command("/ISSUE Title"), command("issue", "Title"));
    assert_eq!(
        parse_command("/deploy_now\tprod  "),
        command("deploy_now", "prod")
    );
    assert_eq!(parse_command("/run-tests all"), command("run-tests", "all"));
    assert_eq!(
        parse_command("/issuetracker is down"),
        command("issuetracker", "is down")
    );
}

#[test]
fn windows_line_endings() {
    assert_eq!(
        parse_command("\r\n/issue Title\r\nbody\r\n"),
        command("issue", "Title\nbody")
    );
}

#[test]
fn not_commands() {
    for text in [
        "please /issue this",
        "let's /new the chat",
        "",
        "   \n\t\n",
        "hello\n/issue second line",
        "/",
        "/ new",
        "//new",
        "/usr/bin is a path",
        "/new!",
        "/新建 对话",
        "plain text",
    ] {
        assert_eq!(parse_command(text), None, "{text:?}");
    }
}
