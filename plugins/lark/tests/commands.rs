//! `/new` and `/issue` parsing (the reference's fresh_command and issue_command tests).

use switchboard_lark::commands::{Command, parse_command};

fn issue(title: &str, description: Option<&str>) -> Option<Command> {
    Some(Command::Issue {
        title: title.into(),
        description: description.map(str::to_string),
    })
}

fn fresh(body: Option<&str>) -> Option<Command> {
    Some(Command::NewContext(body.map(str::to_string)))
}

#[test]
fn issue_title_only() {
    assert_eq!(
        parse_command("/issue Login page crashes"),
        issue("Login page crashes", None)
    );
}

#[test]
fn issue_title_and_description() {
    assert_eq!(
        parse_command("/issue Login page crashes\nSteps:\n  1. open /login\n  2. submit"),
        issue(
            "Login page crashes",
            Some("Steps:\n  1. open /login\n  2. submit")
        )
    );
    // Blank lines between title and description are dropped; inner blank lines kept.
    assert_eq!(
        parse_command("/issue T\n\n\n  indented first\n\nsecond\n\n"),
        issue("T", Some("  indented first\n\nsecond"))
    );
}

#[test]
fn bare_issue_is_usage() {
    assert_eq!(parse_command("/issue"), Some(Command::IssueUsage));
    assert_eq!(parse_command("/issue   \t "), Some(Command::IssueUsage));
    // Description lines without a title still need a title.
    assert_eq!(
        parse_command("/issue\nonly a description"),
        Some(Command::IssueUsage)
    );
}

#[test]
fn issue_after_leading_blank_lines() {
    assert_eq!(parse_command("\n\n  \n/issue Title"), issue("Title", None));
    assert_eq!(parse_command("   /issue Indented"), issue("Indented", None));
}

#[test]
fn issue_tab_separator() {
    assert_eq!(
        parse_command("/issue\tTabbed title"),
        issue("Tabbed title", None)
    );
}

#[test]
fn not_commands() {
    for text in [
        "/issuetracker is down",
        "please /issue this",
        "/Issue Title",
        "/ISSUE Title",
        "",
        "   \n\t\n",
        "hello\n/issue second line",
        "/newness",
        "/New start over",
        "let's /new the chat",
        "plain text",
    ] {
        assert_eq!(parse_command(text), None, "{text:?}");
    }
}

#[test]
fn new_bare() {
    assert_eq!(parse_command("/new"), fresh(None));
    assert_eq!(parse_command("/new   "), fresh(None));
    assert_eq!(parse_command("\n/new\n\n"), fresh(None));
}

#[test]
fn new_with_same_line_body() {
    assert_eq!(
        parse_command("/new rebuild the plan"),
        fresh(Some("rebuild the plan"))
    );
}

#[test]
fn new_after_leading_blank_lines() {
    assert_eq!(
        parse_command("\n \n/new start here"),
        fresh(Some("start here"))
    );
}

#[test]
fn new_keeps_multi_line_body() {
    assert_eq!(
        parse_command("/new first line\nsecond line\n  third"),
        fresh(Some("first line\nsecond line\n  third"))
    );
    assert_eq!(
        parse_command("/new\n\nbody below"),
        fresh(Some("body below"))
    );
}
