//! What the user sees: the `content` JSON of every message the plugin sends (multica-lark §6.6,
//! §J, §L) and the size limits Lark puts on it (lark-protocol §5.7).
//!
//! Pure functions of their inputs: no host calls, no wire requests (those are in `rest`), no
//! choice of where a message goes (that is `outbound`).

use serde_json::json;

use crate::markdown::contains_markdown;

/// Card header title when the installation names no agent (`agent_name` config).
pub const DEFAULT_HEADER: &str = "switchboard";
/// Notice body: no worker is online for the agent; the message is kept (§J `agent_offline`).
pub const AGENT_OFFLINE_COPY: &str =
    "Agent 当前离线，消息已记录。下次 daemon 上线后会自动继续处理。";
/// Notice body: the agent is archived (§J `agent_archived`).
pub const AGENT_ARCHIVED_COPY: &str =
    "这个 Agent 已被归档，无法继续处理消息。请联系工作区管理员恢复或重新绑定。";
/// Notice body: bare `/new` (§J `fresh_pending`).
pub const FRESH_PENDING_COPY: &str =
    "✅ 已准备开始新对话。你的下一条聊天消息将不带之前的上下文运行。";
/// Notice body: `/issue` without a title (§J `issue_usage`).
pub const ISSUE_USAGE_COPY: &str =
    "请填写任务标题，格式如下：\n\n`/issue <标题>`\n`[描述]`（可选）";
/// Binding prompt body (§J `needs_binding`, §6.6).
pub const BINDING_PROMPT_COPY: &str = "你还没有绑定账户。点击下方按钮完成绑定后即可使用此 Agent。";
/// Binding prompt button label.
pub const BINDING_BUTTON_LABEL: &str = "去绑定";
/// Title of the binding prompt card: the product name.
pub const BINDING_HEADER: &str = "switchboard";

/// Largest `content` of a `text` message Lark accepts (150 KB).
pub const TEXT_CONTENT_LIMIT: usize = 150_000;
/// Largest `content` of an `interactive` card Lark accepts (30 KB).
pub const CARD_CONTENT_LIMIT: usize = 30_000;
/// Room left in each limit for the JSON around the user's text.
const ENVELOPE_RESERVE: usize = 512;
/// Longest run-error text shown on the error card (characters); longer errors are cut.
pub const ERROR_TEXT_MAX_CHARS: usize = 4_000;

/// One message ready to send: its Lark `msg_type` and its `content` (a JSON document encoded
/// as a string, as every send and reply call wants it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `text` or `interactive`.
    pub msg_type: &'static str,
    /// The JSON-encoded content.
    pub content: String,
}

/// A plain text message: `{"text": …}` (newlines, quotes and unicode JSON-escaped).
pub fn text_message(text: &str) -> Rendered {
    Rendered {
        msg_type: "text",
        content: json!({ "text": text }).to_string(),
    }
}

/// The schema-2.0 card carrying an agent reply verbatim in one `markdown` element.
pub fn markdown_card(markdown: &str) -> Rendered {
    card(json!({
        "schema": "2.0",
        "body": { "elements": [ { "tag": "markdown", "content": markdown } ] },
    }))
}

/// The grey notice card (offline, archived, fresh-pending, issue-usage): legacy schema,
/// `wide_screen_mode`, header `header`, one `div` with a `plain_text` body.
pub fn notice_card(header: &str, body: &str) -> Rendered {
    card(json!({
        "config": { "wide_screen_mode": true },
        "header": {
            "template": "grey",
            "title": { "tag": "plain_text", "content": header },
        },
        "elements": [ { "tag": "div", "text": { "tag": "plain_text", "content": body } } ],
    }))
}

/// The error card of a failed run: `wide_screen_mode` + `update_multi`, blue header `header`,
/// body "Run failed." or "Run failed: <error>" (the error cut at [`ERROR_TEXT_MAX_CHARS`]).
pub fn error_card(header: &str, error: &str) -> Rendered {
    let error = error.trim();
    let body = if error.is_empty() {
        "Run failed.".to_string()
    } else {
        format!("Run failed: {}", cut_chars(error, ERROR_TEXT_MAX_CHARS))
    };
    card(json!({
        "config": { "wide_screen_mode": true, "update_multi": true },
        "header": {
            "template": "blue",
            "title": { "tag": "plain_text", "content": header },
        },
        "elements": [ { "tag": "div", "text": { "tag": "plain_text", "content": body } } ],
    }))
}

/// The binding prompt sent as a DM to an unbound sender: blue "switchboard" header, the prompt as
/// `lark_md`, and a primary button opening `bind_url`.
pub fn binding_card(bind_url: &str) -> Rendered {
    card(json!({
        "config": { "wide_screen_mode": true },
        "header": {
            "template": "blue",
            "title": { "tag": "plain_text", "content": BINDING_HEADER },
        },
        "elements": [
            { "tag": "div", "text": { "tag": "lark_md", "content": BINDING_PROMPT_COPY } },
            { "tag": "action", "actions": [ {
                "tag": "button",
                "text": { "tag": "plain_text", "content": BINDING_BUTTON_LABEL },
                "type": "primary",
                "url": bind_url,
            } ] },
        ],
    }))
}

/// The `/issue` confirmation: `Created <id> — <title>`, followed by the link on its own line
/// when the host's reference is a URL (its last path segment is then the id).
pub fn issue_created_text(title: &str, reference: &str) -> String {
    let title = title.trim();
    let reference = reference.trim();
    let is_url = reference.starts_with("https://") || reference.starts_with("http://");
    let identifier = if is_url {
        // The last non-empty path segment after the host.
        let without_scheme = reference.split_once("://").map_or("", |(_, rest)| rest);
        let path = without_scheme.split(['?', '#']).next().unwrap_or("");
        path.split('/')
            .skip(1)
            .filter(|segment| !segment.is_empty())
            .last()
            .unwrap_or("issue")
    } else if reference.is_empty() {
        "issue"
    } else {
        reference
    };
    let mut text = if title.is_empty() {
        format!("Created {identifier}")
    } else {
        format!("Created {identifier} — {title}")
    };
    if is_url {
        text.push('\n');
        text.push_str(reference);
    }
    text
}

/// The messages for a reply text: nothing when it is blank; markdown (see
/// [`contains_markdown`]) as schema-2.0 cards, anything else as text messages; text longer than
/// the type's limit is split at line boundaries into several messages (markdown keeps code
/// fences balanced: a fence cut in two is closed and reopened).
pub fn reply_messages(text: &str) -> Vec<Rendered> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    if contains_markdown(text) {
        split_chunks(text, CARD_CONTENT_LIMIT - ENVELOPE_RESERVE, true)
            .iter()
            .map(|chunk| markdown_card(chunk))
            .collect()
    } else {
        split_chunks(text, TEXT_CONTENT_LIMIT - ENVELOPE_RESERVE, false)
            .iter()
            .map(|chunk| text_message(chunk))
            .collect()
    }
}

/// Bytes `text` takes inside a JSON string (serde_json's escaping).
pub fn escaped_len(text: &str) -> usize {
    text.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// Splits `text` into pieces whose [`escaped_len`] is at most `budget`, at line boundaries
/// (a single line longer than half the budget is cut between characters). With `fences`, a
/// ```` ``` ```` block cut in two is closed at the end of one piece and reopened (with its
/// opening line) at the start of the next. Text within the budget comes back as one piece.
pub fn split_chunks(text: &str, budget: usize, fences: bool) -> Vec<String> {
    if escaped_len(text) <= budget {
        return vec![text.to_string()];
    }
    let piece_budget = (budget / 2).max(1);
    let mut pieces: Vec<&str> = Vec::new();
    for line in text.split_inclusive('\n') {
        if escaped_len(line) <= piece_budget {
            pieces.push(line);
        } else {
            pieces.extend(cut_by_escaped_len(line, piece_budget));
        }
    }

    const CLOSE: &str = "\n```\n";
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut current_len = 0;
    // The opening line of the fence the current chunk is inside, if any.
    let mut open_fence: Option<String> = None;
    for piece in pieces {
        let piece_len = escaped_len(piece);
        let reserve = if open_fence.is_some() || (fences && is_fence_line(piece)) {
            escaped_len(CLOSE)
        } else {
            0
        };
        if current_len > 0 && current_len + piece_len + reserve > budget {
            if open_fence.is_some() {
                current.push_str(if current.ends_with('\n') {
                    "```\n"
                } else {
                    CLOSE
                });
            }
            chunks.push(std::mem::take(&mut current));
            current_len = 0;
            if let Some(open) = &open_fence {
                current.push_str(open);
                current.push('\n');
                current_len = escaped_len(&current);
            }
        }
        current.push_str(piece);
        current_len += piece_len;
        if fences && is_fence_line(piece) {
            open_fence = match open_fence {
                Some(_) => None,
                None => Some(reopen_line(piece)),
            };
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Whether a line opens or closes a fenced code block.
fn is_fence_line(line: &str) -> bool {
    line.trim_start_matches([' ', '\t']).starts_with("```")
}

/// The line that reopens a fence in the next chunk: the original opening line (language
/// included) unless it is unreasonably long.
fn reopen_line(line: &str) -> String {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.len() <= 200 {
        line.to_string()
    } else {
        "```".to_string()
    }
}

/// Cuts `line` between characters into pieces of at most `budget` escaped bytes.
fn cut_by_escaped_len(line: &str, budget: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (at, c) in line.char_indices() {
        let len = escaped_len(c.encode_utf8(&mut [0; 4]));
        if used + len > budget && at > start {
            pieces.push(&line[start..at]);
            start = at;
            used = 0;
        }
        used += len;
    }
    if start < line.len() {
        pieces.push(&line[start..]);
    }
    pieces
}

/// The first `max` characters of `text`, with "…" when something was cut.
fn cut_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn card(document: serde_json::Value) -> Rendered {
    Rendered {
        msg_type: "interactive",
        content: document.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parsed(rendered: &Rendered) -> Value {
        serde_json::from_str(&rendered.content).expect("content is JSON")
    }

    #[test]
    fn text_content_is_inner_json_and_round_trips_special_characters() {
        let text = "line 1\nline \"2\"\t\\ 中文 🚀 {\"json\":\"look-alike\"}";
        let message = text_message(text);
        assert_eq!(message.msg_type, "text");
        assert_eq!(parsed(&message), json!({ "text": text }));
        assert!(message.content.contains("\\n"), "newlines are escaped");
    }

    #[test]
    fn markdown_card_is_schema_2_with_one_verbatim_element() {
        let reply = "# Title\n- a\n```rs\nfn x() {}\n```";
        let card = markdown_card(reply);
        assert_eq!(card.msg_type, "interactive");
        assert_eq!(
            parsed(&card),
            json!({
                "schema": "2.0",
                "body": { "elements": [ { "tag": "markdown", "content": reply } ] },
            })
        );
    }

    #[test]
    fn notice_card_shape() {
        let card = notice_card("Helper", AGENT_OFFLINE_COPY);
        let value = parsed(&card);
        assert_eq!(value["config"], json!({ "wide_screen_mode": true }));
        assert_eq!(value["header"]["template"], "grey");
        assert_eq!(
            value["header"]["title"],
            json!({ "tag": "plain_text", "content": "Helper" })
        );
        assert_eq!(
            value["elements"],
            json!([ { "tag": "div", "text": { "tag": "plain_text", "content": AGENT_OFFLINE_COPY } } ])
        );
    }

    #[test]
    fn error_card_shape_and_text() {
        let value = parsed(&error_card("switchboard", "  model timed out "));
        assert_eq!(
            value["config"],
            json!({ "wide_screen_mode": true, "update_multi": true })
        );
        assert_eq!(value["header"]["template"], "blue");
        assert_eq!(value["header"]["title"]["content"], "switchboard");
        assert_eq!(
            value["elements"][0]["text"],
            json!({ "tag": "plain_text", "content": "Run failed: model timed out" })
        );
        let value = parsed(&error_card("switchboard", " "));
        assert_eq!(value["elements"][0]["text"]["content"], "Run failed.");
        let long = "e".repeat(ERROR_TEXT_MAX_CHARS + 10);
        let value = parsed(&error_card("switchboard", &long));
        let body = value["elements"][0]["text"]["content"].as_str().unwrap();
        assert!(body.ends_with('…'));
        assert_eq!(
            body.chars().count(),
            "Run failed: ".len() + ERROR_TEXT_MAX_CHARS + 1
        );
    }

    #[test]
    fn binding_card_shape() {
        let url = "https://app.example/lark/bind?token=token+with+space";
        let value = parsed(&binding_card(url));
        assert_eq!(value["config"]["wide_screen_mode"], true);
        assert_eq!(value["header"]["template"], "blue");
        assert_eq!(value["header"]["title"]["content"], "switchboard");
        let elements = value["elements"].as_array().unwrap();
        assert!(elements.len() >= 2);
        assert_eq!(
            elements[0]["text"],
            json!({ "tag": "lark_md", "content": BINDING_PROMPT_COPY })
        );
        let last = elements.last().unwrap();
        assert_eq!(last["tag"], "action");
        assert_eq!(
            last["actions"][0],
            json!({
                "tag": "button",
                "text": { "tag": "plain_text", "content": "去绑定" },
                "type": "primary",
                "url": url,
            })
        );
    }

    #[test]
    fn notice_copies_match_the_reference() {
        assert_eq!(
            AGENT_OFFLINE_COPY,
            "Agent 当前离线，消息已记录。下次 daemon 上线后会自动继续处理。"
        );
        assert!(AGENT_ARCHIVED_COPY.starts_with("这个 Agent 已被归档"));
        assert!(FRESH_PENDING_COPY.starts_with("✅ 已准备开始新对话。"));
        assert!(ISSUE_USAGE_COPY.contains("`/issue <标题>`\n`[描述]`（可选）"));
    }

    #[test]
    fn issue_confirmation_text() {
        assert_eq!(
            issue_created_text("Fix login", "MUL-42"),
            "Created MUL-42 — Fix login"
        );
        assert_eq!(issue_created_text("", "#7"), "Created #7");
        assert_eq!(
            issue_created_text("Fix login", "https://app.example/issues/MUL-42"),
            "Created MUL-42 — Fix login\nhttps://app.example/issues/MUL-42"
        );
        assert_eq!(
            issue_created_text("Fix login", "https://app.example/"),
            "Created issue — Fix login\nhttps://app.example/"
        );
        assert_eq!(issue_created_text("T", ""), "Created issue — T");
    }

    #[test]
    fn replies_pick_text_or_card_and_blank_sends_nothing() {
        assert!(reply_messages("  \n ").is_empty());
        let plain = reply_messages("the build is green");
        assert_eq!(plain, vec![text_message("the build is green")]);
        let rich = reply_messages("**done**");
        assert_eq!(rich, vec![markdown_card("**done**")]);
    }

    #[test]
    fn escaped_len_matches_serde_json() {
        for text in ["plain", "a\"b\\c\nd\re\tf\u{1}g\u{8}", "中文🚀", ""] {
            assert_eq!(
                escaped_len(text),
                serde_json::to_string(text).unwrap().len() - 2,
                "{text:?}"
            );
        }
    }

    #[test]
    fn long_text_is_split_at_lines_within_the_limit() {
        let line = format!("{}\n", "word ".repeat(20)); // 101 bytes
        let text = line.repeat(3_000); // ~303 KB
        let messages = reply_messages(&text);
        assert!(messages.len() >= 3, "{} messages", messages.len());
        let mut joined = String::new();
        for message in &messages {
            assert_eq!(message.msg_type, "text");
            assert!(message.content.len() <= TEXT_CONTENT_LIMIT);
            let value = parsed(message);
            let part = value["text"].as_str().unwrap();
            assert!(part.ends_with('\n'), "cut at a line boundary");
            joined.push_str(part);
        }
        assert_eq!(joined, text, "nothing lost or duplicated");
    }

    #[test]
    fn long_markdown_keeps_fences_balanced_across_cards() {
        let mut text = String::from("# Report\n```rust\n");
        for i in 0..3_000 {
            text.push_str(&format!("let value_{i} = compute({i});\n"));
        }
        text.push_str("```\nThe end.\n");
        let messages = reply_messages(&text);
        assert!(messages.len() >= 2);
        for (index, message) in messages.iter().enumerate() {
            assert_eq!(message.msg_type, "interactive");
            assert!(message.content.len() <= CARD_CONTENT_LIMIT, "card {index}");
            let value = parsed(message);
            let part = value["body"]["elements"][0]["content"].as_str().unwrap();
            let fences = part.lines().filter(|line| line.starts_with("```")).count();
            assert_eq!(fences % 2, 0, "card {index} has balanced fences");
            if index > 0 {
                assert!(
                    part.starts_with("```rust\n"),
                    "card {index} reopens the fence"
                );
            }
        }
        assert!(
            parsed(messages.last().unwrap())["body"]["elements"][0]["content"]
                .as_str()
                .unwrap()
                .ends_with("The end.\n")
        );
    }

    #[test]
    fn an_overlong_single_line_is_cut_between_characters() {
        let text = "中".repeat(60_000); // 180 KB on one line
        let chunks = split_chunks(&text, 50_000, false);
        assert!(chunks.len() >= 4);
        assert!(chunks.iter().all(|chunk| escaped_len(chunk) <= 50_000));
        assert_eq!(chunks.concat(), text);
    }
}
