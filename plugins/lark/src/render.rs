//! What the user sees: the `content` JSON of every message the plugin sends (reference §6.6,
//! §J, §L) and the size limits Lark puts on it (lark-protocol §5.7).
//!
//! Pure functions of their inputs: no host calls, no wire requests (those are in `rest`), no
//! choice of where a message goes (that is `outbound`).

use serde_json::{Value, json};

use crate::markdown::contains_markdown;

/// Label of a notice's link button in Chinese locales (`zh`, `zh-CN`, …).
pub const LINK_LABEL_ZH: &str = "打开链接";
/// Label of a notice's link button in every other locale.
pub const LINK_LABEL_EN: &str = "Open link";
/// Label of the binding card's button in Chinese locales.
pub const BINDING_LABEL_ZH: &str = "去绑定";
/// Label of the binding card's button in every other locale.
pub const BINDING_LABEL_EN: &str = "Bind account";

/// Largest `content` of a `text` message Lark accepts (150 KB).
pub const TEXT_CONTENT_LIMIT: usize = 150_000;
/// Largest `content` of an `interactive` card Lark accepts (30 KB).
pub const CARD_CONTENT_LIMIT: usize = 30_000;
/// Room left in each limit for the JSON around the user's text.
const ENVELOPE_RESERVE: usize = 512;
/// Longest notice text shown on a card (characters); longer texts are cut.
pub const NOTICE_TEXT_MAX_CHARS: usize = 4_000;

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

/// How a notice card looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardStyle {
    /// The grey notice card (offline, archived, fresh context, usage, …): `wide_screen_mode`,
    /// `plain_text` body.
    Notice,
    /// The blue error card of a failed run: `wide_screen_mode` + `update_multi`, `plain_text`
    /// body.
    Error,
    /// The blue binding prompt: `wide_screen_mode`, `lark_md` body.
    Binding,
}

/// A link button on a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Button<'a> {
    /// What the button says.
    pub label: &'a str,
    /// The URL it opens.
    pub url: &'a str,
}

/// A notice card (legacy schema): a `header` title when one is given (grey or blue by
/// `style`); the text (trimmed, cut at [`NOTICE_TEXT_MAX_CHARS`]) in one `div` unless it is
/// blank; the `reference` small, in a `note`; the `button` last, as a primary button. The text
/// is the host's: the card adds no words of its own.
pub fn notice_card(
    style: CardStyle,
    header: &str,
    text: &str,
    reference: Option<&str>,
    button: Option<Button<'_>>,
) -> Rendered {
    let (template, text_tag) = match style {
        CardStyle::Notice => ("grey", "plain_text"),
        CardStyle::Error => ("blue", "plain_text"),
        CardStyle::Binding => ("blue", "lark_md"),
    };
    let mut document = serde_json::Map::new();
    document.insert(
        "config".into(),
        if style == CardStyle::Error {
            json!({ "wide_screen_mode": true, "update_multi": true })
        } else {
            json!({ "wide_screen_mode": true })
        },
    );
    let header = header.trim();
    if !header.is_empty() {
        document.insert(
            "header".into(),
            json!({
                "template": template,
                "title": { "tag": "plain_text", "content": header },
            }),
        );
    }
    let mut elements = Vec::new();
    let text = text.trim();
    if !text.is_empty() {
        elements.push(json!({
            "tag": "div",
            "text": { "tag": text_tag, "content": cut_chars(text, NOTICE_TEXT_MAX_CHARS) },
        }));
    }
    if let Some(reference) = reference.map(str::trim).filter(|r| !r.is_empty()) {
        elements.push(json!({
            "tag": "note",
            "elements": [ { "tag": "plain_text", "content": reference } ],
        }));
    }
    if let Some(button) = button {
        elements.push(json!({
            "tag": "action",
            "actions": [ {
                "tag": "button",
                "text": { "tag": "plain_text", "content": button.label },
                "type": "primary",
                "url": button.url,
            } ],
        }));
    }
    document.insert("elements".into(), elements.into());
    card(document.into())
}

/// A button the host put on a notice (the WIT `notice-action`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionButton {
    /// The action name a press carries back.
    pub name: String,
    /// What the button says (the host's words).
    pub label: String,
    /// The value a press carries back.
    pub value: String,
    /// The confirming choice: a primary button.
    pub primary: bool,
}

/// The key of a button's callback value that carries the host's value back, next to `action`
/// (the action name). Lark wants callback values to be objects.
pub const HOST_VALUE_KEY: &str = "host_value";

/// The card of an approval (schema 2.0, `update_multi` so the answer to a press and a later
/// update replace it for everyone): a `header` title when one is given, the text (cut at
/// [`NOTICE_TEXT_MAX_CHARS`]) as plain text, and one `button` per action, side by side, each
/// with a `callback` behaviour whose value is `{"action": name, "host_value": value}`. Without
/// actions (a decided approval) the card shows the text only.
pub fn approval_card_json(header: &str, text: &str, actions: &[ActionButton]) -> Value {
    let mut elements = vec![json!({
        "tag": "div",
        "text": { "tag": "plain_text", "content": cut_chars(text.trim(), NOTICE_TEXT_MAX_CHARS) },
    })];
    if !actions.is_empty() {
        let columns: Vec<Value> = actions
            .iter()
            .map(|button| {
                json!({
                    "tag": "column",
                    "width": "auto",
                    "elements": [ {
                        "tag": "button",
                        "text": { "tag": "plain_text", "content": button.label },
                        "type": if button.primary { "primary" } else { "default" },
                        "behaviors": [ {
                            "type": "callback",
                            "value": { "action": button.name, HOST_VALUE_KEY: button.value },
                        } ],
                    } ],
                })
            })
            .collect();
        elements.push(json!({ "tag": "column_set", "columns": columns }));
    }
    let mut document = json!({
        "schema": "2.0",
        "config": { "update_multi": true },
        "body": { "elements": elements },
    });
    let header = header.trim();
    if !header.is_empty() {
        document["header"] = json!({
            "template": if actions.is_empty() { "grey" } else { "blue" },
            "title": { "tag": "plain_text", "content": header },
        });
    }
    document
}

/// The approval card as a message ([`approval_card_json`]).
pub fn approval_card(header: &str, text: &str, actions: &[ActionButton]) -> Rendered {
    card(approval_card_json(header, text, actions))
}

/// The label of a notice's link button for `locale` (a BCP 47 tag): Chinese for `zh…`,
/// English otherwise; the binding prompt's button has its own.
pub fn link_label(locale: &str, binding: bool) -> &'static str {
    let language = locale.trim().split(['-', '_']).next().unwrap_or("");
    let chinese = language.eq_ignore_ascii_case("zh");
    match (chinese, binding) {
        (true, true) => BINDING_LABEL_ZH,
        (true, false) => LINK_LABEL_ZH,
        (false, true) => BINDING_LABEL_EN,
        (false, false) => LINK_LABEL_EN,
    }
}

/// The messages for a reply text: nothing when it is blank; markdown (see
/// [`contains_markdown`]) as schema-2.0 cards, anything else as text messages; text longer than
/// the type's limit is split at line boundaries into several messages (markdown keeps code
/// fences balanced: a fence cut in two is closed and reopened). Sizes are measured as the text
/// travels in the send request ([`wire_len`]), so no part's request outgrows Lark's limit.
pub fn reply_messages(text: &str) -> Vec<Rendered> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    if contains_markdown(text) {
        split_chunks(text, CARD_TEXT_BUDGET, true)
            .iter()
            .map(|chunk| markdown_card(chunk))
            .collect()
    } else {
        split_chunks(text, TEXT_TEXT_BUDGET, false)
            .iter()
            .map(|chunk| text_message(chunk))
            .collect()
    }
}

/// Largest [`wire_len`] of the user's text in one `text` message.
pub const TEXT_TEXT_BUDGET: usize = TEXT_CONTENT_LIMIT - ENVELOPE_RESERVE;
/// Largest [`wire_len`] of the user's text in one card (a markdown card, or one CardKit card of
/// a streamed reply).
pub const CARD_TEXT_BUDGET: usize = CARD_CONTENT_LIMIT - ENVELOPE_RESERVE;

/// Bytes `text` takes inside a JSON string (serde_json's escaping).
pub fn escaped_len(text: &str) -> usize {
    text.chars().map(escaped_char_len).sum()
}

fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Bytes `text` takes in a send request: a message's `content` is a JSON document carried as a
/// JSON string, so the text is escaped twice (`"` becomes `\\\"`, a newline `\\n`). Lark's
/// size limits are on the request, so parts are measured this way.
pub fn wire_len(text: &str) -> usize {
    text.chars().map(wire_char_len).sum()
}

fn wire_char_len(c: char) -> usize {
    match c {
        // `\"` and `\\` escaped again: a backslash pair, then the escaped character.
        '"' | '\\' => 4,
        // `\n` and friends: the backslash escaped, the letter as is.
        '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 3,
        // `\u00XX`: the backslash escaped.
        c if (c as u32) < 0x20 => 7,
        c => c.len_utf8(),
    }
}

/// One part of a split text: `range` of the original text, shown after `reopen` (the opening
/// line of a code fence the previous part closed) and followed by `close` (the fence closed
/// because the part ends inside a code block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes of the original text this part carries (always on character boundaries).
    pub range: std::ops::Range<usize>,
    /// A fence opening line to put first (without its newline).
    pub reopen: Option<String>,
    /// Text that closes a fence left open at the end.
    pub close: Option<&'static str>,
}

impl Chunk {
    /// The part as shown: `reopen`, the text, `close`.
    pub fn render(&self, text: &str) -> String {
        let body = &text[self.range.clone()];
        let mut out = String::with_capacity(body.len() + 16);
        if let Some(open) = &self.reopen {
            out.push_str(open);
            out.push('\n');
        }
        out.push_str(body);
        if let Some(close) = self.close {
            out.push_str(close);
        }
        out
    }
}

/// Splits `text` into pieces whose [`wire_len`] is at most `budget`, at line boundaries
/// (a single line longer than half the budget is cut between characters, never inside one).
/// With `fences`, a ```` ``` ```` block cut in two is closed at the end of one piece and
/// reopened (with its opening line) at the start of the next. Text within the budget comes back
/// as one piece.
pub fn split_chunks(text: &str, budget: usize, fences: bool) -> Vec<String> {
    plan_chunks(text, budget, fences)
        .iter()
        .map(|chunk| chunk.render(text))
        .collect()
}

/// [`split_chunks`] as ranges of `text` (what a streamed reply needs to know how much of the
/// text one card holds). The pieces cover `text` in order, without gaps or overlaps.
pub fn plan_chunks(text: &str, budget: usize, fences: bool) -> Vec<Chunk> {
    if wire_len(text) <= budget {
        return vec![Chunk {
            range: 0..text.len(),
            reopen: None,
            close: None,
        }];
    }
    let piece_budget = (budget / 2).max(1);
    // Piece ranges: lines, and long lines cut between characters.
    let mut pieces: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        if wire_len(line) <= piece_budget {
            pieces.push(start..at);
        } else {
            pieces.extend(cut_by_wire_len(line, piece_budget, start));
        }
    }

    const CLOSE: &str = "\n```\n";
    const CLOSE_AT_LINE_START: &str = "```\n";
    let mut chunks = Vec::new();
    let mut current = Chunk {
        range: 0..0,
        reopen: None,
        close: None,
    };
    let mut current_len = 0;
    // The opening line of the fence the current chunk is inside, if any.
    let mut open_fence: Option<String> = None;
    for piece in pieces {
        let piece_text = &text[piece.clone()];
        let piece_len = wire_len(piece_text);
        let fence_line = fences && is_fence_line(piece_text);
        let reserve = if open_fence.is_some() || fence_line {
            wire_len(CLOSE)
        } else {
            0
        };
        if current_len > 0 && current_len + piece_len + reserve > budget {
            if open_fence.is_some() {
                current.close = Some(if text[..current.range.end].ends_with('\n') {
                    CLOSE_AT_LINE_START
                } else {
                    CLOSE
                });
            }
            let next_start = current.range.end;
            chunks.push(std::mem::replace(
                &mut current,
                Chunk {
                    range: next_start..next_start,
                    reopen: open_fence.clone(),
                    close: None,
                },
            ));
            current_len = open_fence.as_ref().map_or(0, |open| wire_len(open) + 3);
        }
        current.range.end = piece.end;
        current_len += piece_len;
        if fence_line {
            open_fence = match open_fence {
                Some(_) => None,
                None => Some(reopen_line(piece_text)),
            };
        }
    }
    if !current.range.is_empty() || current.reopen.is_some() {
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

/// Cuts `line` (which starts at byte `offset` of its text) between characters into ranges of
/// at most `budget` wire bytes.
fn cut_by_wire_len(
    line: &str,
    budget: usize,
    offset: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (at, c) in line.char_indices() {
        let len = wire_char_len(c);
        if used + len > budget && at > start {
            pieces.push(offset + start..offset + at);
            start = at;
            used = 0;
        }
        used += len;
    }
    if start < line.len() {
        pieces.push(offset + start..offset + line.len());
    }
    pieces.into_iter()
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
        let card = notice_card(CardStyle::Notice, "Helper", " Agent offline. ", None, None);
        assert_eq!(card.msg_type, "interactive");
        assert_eq!(
            parsed(&card),
            json!({
                "config": { "wide_screen_mode": true },
                "header": {
                    "template": "grey",
                    "title": { "tag": "plain_text", "content": "Helper" },
                },
                "elements": [
                    { "tag": "div", "text": { "tag": "plain_text", "content": "Agent offline." } },
                ],
            })
        );
        // No agent name: no header at all (the card adds no title of its own).
        let value = parsed(&notice_card(CardStyle::Notice, " ", "x", None, None));
        assert!(value.get("header").is_none(), "{value}");
    }

    #[test]
    fn error_card_shape_with_reference_and_link() {
        let value = parsed(&notice_card(
            CardStyle::Error,
            "Helper",
            "Run failed: model timed out",
            Some(" run-42 "),
            Some(Button {
                label: LINK_LABEL_EN,
                url: "https://ops.example/runs/42",
            }),
        ));
        assert_eq!(
            value,
            json!({
                "config": { "wide_screen_mode": true, "update_multi": true },
                "header": {
                    "template": "blue",
                    "title": { "tag": "plain_text", "content": "Helper" },
                },
                "elements": [
                    { "tag": "div", "text": { "tag": "plain_text", "content": "Run failed: model timed out" } },
                    { "tag": "note", "elements": [ { "tag": "plain_text", "content": "run-42" } ] },
                    { "tag": "action", "actions": [ {
                        "tag": "button",
                        "text": { "tag": "plain_text", "content": "Open link" },
                        "type": "primary",
                        "url": "https://ops.example/runs/42",
                    } ] },
                ],
            })
        );
        let long = "e".repeat(NOTICE_TEXT_MAX_CHARS + 10);
        let value = parsed(&notice_card(CardStyle::Error, "", &long, None, None));
        let body = value["elements"][0]["text"]["content"].as_str().unwrap();
        assert!(body.ends_with('…'));
        assert_eq!(body.chars().count(), NOTICE_TEXT_MAX_CHARS + 1);
        // A blank text leaves only the reference.
        let value = parsed(&notice_card(CardStyle::Error, "", " ", Some("r-1"), None));
        assert_eq!(value["elements"].as_array().unwrap().len(), 1);
        assert_eq!(value["elements"][0]["tag"], "note");
    }

    #[test]
    fn binding_card_shape() {
        let url = "https://app.example/lark/bind?token=token+with+space";
        let value = parsed(&notice_card(
            CardStyle::Binding,
            "Helper",
            "Bind your account first.",
            None,
            Some(Button {
                label: link_label("zh-CN", true),
                url,
            }),
        ));
        assert_eq!(value["config"], json!({ "wide_screen_mode": true }));
        assert_eq!(value["header"]["template"], "blue");
        let elements = value["elements"].as_array().unwrap();
        assert_eq!(
            elements[0]["text"],
            json!({ "tag": "lark_md", "content": "Bind your account first." })
        );
        assert_eq!(
            elements[1],
            json!({ "tag": "action", "actions": [ {
                "tag": "button",
                "text": { "tag": "plain_text", "content": "去绑定" },
                "type": "primary",
                "url": url,
            } ] })
        );
    }

    #[test]
    fn button_labels_follow_the_locale() {
        for (locale, binding, label) in [
            ("zh", false, "打开链接"),
            ("zh-CN", false, "打开链接"),
            ("ZH_tw", true, "去绑定"),
            ("en", false, "Open link"),
            ("en-US", true, "Bind account"),
            ("", false, "Open link"),
            ("zhx", false, "Open link"),
        ] {
            assert_eq!(link_label(locale, binding), label, "{locale}");
        }
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
    fn wire_len_is_the_size_inside_a_send_request() {
        for text in ["plain", "a\"b\\c\nd\re\tf\u{1}g\u{8}", "中文🚀", ""] {
            let content = json!({ "text": text }).to_string();
            let body = serde_json::to_string(&content).unwrap();
            let envelope = serde_json::to_string(&json!({ "text": "" }).to_string()).unwrap();
            assert_eq!(wire_len(text), body.len() - envelope.len(), "{text:?}");
        }
    }

    #[test]
    fn quote_heavy_text_keeps_every_send_request_within_the_limit() {
        // Quotes double twice: sized by the content alone, these parts would be too big.
        let text = "\"quoted\" \\ path\n".repeat(20_000);
        let messages = reply_messages(&text);
        assert!(messages.len() >= 3);
        let mut joined = String::new();
        for message in &messages {
            let request =
                json!({"receive_id": "oc_1", "msg_type": "text", "content": message.content});
            assert!(request.to_string().len() <= TEXT_CONTENT_LIMIT);
            joined.push_str(parsed(message)["text"].as_str().unwrap());
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn planned_chunks_cover_the_text_in_order() {
        let mut text = String::from("intro 中文\n```py\n");
        for i in 0..2_000 {
            text.push_str(&format!("print('é{i}')\n"));
        }
        text.push_str("```\ntail\n");
        let chunks = plan_chunks(&text, 5_000, true);
        assert!(chunks.len() > 3);
        let mut at = 0;
        for (index, chunk) in chunks.iter().enumerate() {
            assert_eq!(
                chunk.range.start, at,
                "chunk {index} follows the previous one"
            );
            at = chunk.range.end;
            let shown = chunk.render(&text);
            assert!(wire_len(&shown) <= 5_000, "chunk {index}");
            assert_eq!(
                shown.lines().filter(|l| l.starts_with("```")).count() % 2,
                0
            );
        }
        assert_eq!(at, text.len());
        assert_eq!(chunks[1].reopen.as_deref(), Some("```py"));
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
