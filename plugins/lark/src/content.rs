//! Message content → readable text, for every `message_type` of lark-protocol §3.4
//! (the mapping table is in the plugin README).
//!
//! `message.content` is a JSON document encoded as a string. Rendering is lenient: missing or
//! oddly typed fields degrade to shorter text, never to an error. Mention placeholders
//! (`@_user_N`) are left in place for [`crate::mentions::resolve_mentions`]; `at` elements that
//! refer to a known mention are rendered as that mention's placeholder so the bot's own mention
//! is removed the same way in text, post and card content.

use serde_json::{Map, Value};

use crate::mentions::{MENTION_ALL_KEY, Mention};

/// Placeholder for an image (message or post element).
pub const IMAGE: &str = "[Image]";
/// Placeholder for a video (message or post element).
pub const VIDEO: &str = "[Video]";
/// Body of a `merge_forward` message before the enricher expands it.
pub const FORWARDED: &str = "[Forwarded messages]";

/// Renders `content` (the raw JSON string) of a message of `message_type`.
///
/// `mentions` are the message's mentions; pass `&[]` when there are none (e.g. for content
/// fetched over REST, whose `at` elements then render as `@user_name`). An unparseable content
/// yields an empty string, except for `merge_forward`, whose content is a meaningless sentinel
/// that REST sometimes returns as plain text.
pub fn render_content(message_type: &str, content: &str, mentions: &[Mention]) -> String {
    if message_type == "merge_forward" {
        return FORWARDED.to_string();
    }
    let Ok(value) = serde_json::from_str::<Value>(content) else {
        return String::new();
    };
    let renderer = Renderer { mentions };
    let fields = value.as_object();
    let field = |name: &str| fields.and_then(|fields| fields.get(name));
    let text_of = |name: &str| field(name).and_then(Value::as_str).unwrap_or("");
    match message_type {
        "text" => text_of("text").to_string(),
        "post" => renderer.post(&value),
        "image" => IMAGE.to_string(),
        "file" => labelled("[File]", text_of("file_name")),
        "folder" => labelled("[Folder]", text_of("file_name")),
        "audio" => labelled(
            "[Audio]",
            &field("duration").map(format_duration).unwrap_or_default(),
        ),
        "media" | "video" => {
            let name = text_of("file_name");
            let name = if name.is_empty() {
                text_of("name")
            } else {
                name
            };
            let duration = field("duration").map(format_duration).unwrap_or_default();
            match (name.is_empty(), duration.is_empty()) {
                (false, false) => format!("{VIDEO} {name} ({duration})"),
                _ => labelled(VIDEO, if name.is_empty() { &duration } else { name }),
            }
        }
        "sticker" => "[Sticker]".to_string(),
        "interactive" => renderer.card(&value),
        "share_chat" => labelled("[Shared chat]", text_of("chat_id")),
        "share_user" => labelled("[Shared user]", text_of("user_id")),
        "location" => {
            let name = text_of("name");
            let latitude = scalar_text(field("latitude"));
            let longitude = scalar_text(field("longitude"));
            let coordinates = if latitude.is_empty() || longitude.is_empty() {
                String::new()
            } else {
                format!("({latitude}, {longitude})")
            };
            labelled("[Location]", &join_non_empty(&[name, &coordinates], " "))
        }
        "todo" => {
            let summary = field("summary")
                .map(|summary| renderer.post(summary))
                .unwrap_or_default();
            let due = field("due_time")
                .and_then(timestamp_ms)
                .map(|ms| format!("(due {})", format_utc(ms)))
                .unwrap_or_default();
            labelled("[Todo]", &join_non_empty(&[summary.as_str(), &due], " "))
        }
        "vote" => {
            let mut out = labelled("[Vote]", text_of("topic"));
            for option in field("options")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let option = scalar_text(Some(option));
                if !option.is_empty() {
                    out.push_str("\n- ");
                    out.push_str(&option);
                }
            }
            out
        }
        "hongbao" => "[Red packet]".to_string(),
        "share_calendar_event" => calendar("[Calendar event]", fields),
        "calendar" => calendar("[Calendar invitation]", fields),
        "general_calendar" => calendar("[Calendar]", fields),
        "video_chat" => {
            let start = field("start_time")
                .and_then(timestamp_ms)
                .map(|ms| format!("(started {})", format_utc(ms)))
                .unwrap_or_default();
            labelled(
                "[Video call]",
                &join_non_empty(&[text_of("topic"), &start], " "),
            )
        }
        "system" => labelled("[System]", &system_text(fields)),
        other => {
            let text = text_of("text");
            if text.is_empty() {
                format!("[{other}]")
            } else {
                text.to_string()
            }
        }
    }
}

/// Renders content without mention context: `at` elements become `@user_name`.
pub fn flatten_content(message_type: &str, content: &str) -> String {
    render_content(message_type, content, &[])
}

/// Flattens a `post` body (flat `{title, content}` or locale-wrapped `{"zh_cn": {…}}`): the title
/// on its own first line when present, then one line per paragraph. Returns "" when malformed.
pub fn flatten_post(post: &Value, mentions: &[Mention]) -> String {
    Renderer { mentions }.post(post)
}

struct Renderer<'m> {
    mentions: &'m [Mention],
}

impl Renderer<'_> {
    fn post(&self, post: &Value) -> String {
        let Some(body) = post_body(post) else {
            return String::new();
        };
        let mut lines: Vec<String> = Vec::new();
        if let Some(title) = body.get("title").and_then(Value::as_str)
            && !title.is_empty()
        {
            lines.push(title.to_string());
        }
        for paragraph in body
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(elements) = paragraph.as_array() else {
                continue;
            };
            let mut line = String::new();
            for element in elements {
                if let Some(piece) = self.post_element(element) {
                    push_piece(&mut line, &piece);
                }
            }
            lines.push(line);
        }
        let mut out = lines.join("\n");
        out.truncate(out.trim_end_matches('\n').len());
        out
    }

    /// One post element; `None` when it renders to nothing.
    fn post_element(&self, element: &Value) -> Option<String> {
        let element = element.as_object()?;
        let text = |name: &str| element.get(name).and_then(Value::as_str).unwrap_or("");
        let piece = match text("tag") {
            "text" | "code_block" | "md" => text("text").to_string(),
            "a" => {
                let (label, href) = (text("text"), text("href"));
                match (label.is_empty(), href.is_empty()) {
                    (false, false) if label != href => format!("{label} ({href})"),
                    (false, _) => label.to_string(),
                    (true, _) => href.to_string(),
                }
            }
            "at" => self.at(text("user_id"), text("user_name")),
            "img" => IMAGE.to_string(),
            "media" => VIDEO.to_string(),
            "emotion" => String::new(),
            "hr" => "---".to_string(),
            _ => text("text").to_string(),
        };
        (!piece.is_empty()).then_some(piece)
    }

    /// An `at` element: a known mention keeps its placeholder (resolved later), `all` is @all,
    /// otherwise the user name, otherwise the raw id.
    fn at(&self, user_id: &str, user_name: &str) -> String {
        if !user_id.is_empty() {
            if let Some(mention) = self.mentions.iter().find(|mention| {
                !mention.key.is_empty()
                    && (mention.key == user_id || mention.open_id.as_deref() == Some(user_id))
            }) {
                return mention.key.clone();
            }
            if user_id == "all" || user_id == MENTION_ALL_KEY {
                return "@all".to_string();
            }
        }
        if !user_name.is_empty() {
            format!("@{user_name}")
        } else {
            user_id.to_string()
        }
    }

    /// An interactive card. Received cards are a degraded projection
    /// `{title, elements: [[element…]…]}`; sent cards (`{header, elements}` or schema 2.0
    /// `{header, body: {elements}}`) are accepted too.
    fn card(&self, card: &Value) -> String {
        let title = card
            .get("title")
            .and_then(Value::as_str)
            .filter(|title| !title.is_empty())
            .or_else(|| {
                card.pointer("/header/title/content")
                    .and_then(Value::as_str)
            })
            .unwrap_or("");
        let elements = card
            .get("elements")
            .or_else(|| card.pointer("/body/elements"))
            .and_then(Value::as_array);
        let mut lines = vec![labelled("[Card]", title)];
        for row in elements.into_iter().flatten() {
            let mut line = String::new();
            match row {
                Value::Array(row) => {
                    for element in row {
                        self.card_element(element, &mut line);
                    }
                }
                element => self.card_element(element, &mut line),
            }
            if !line.is_empty() {
                lines.push(line);
            }
        }
        lines.join("\n")
    }

    fn card_element(&self, element: &Value, line: &mut String) {
        let Some(fields) = element.as_object() else {
            return;
        };
        let tag = fields.get("tag").and_then(Value::as_str).unwrap_or("");
        match tag {
            "text" | "a" | "at" | "img" | "hr" | "emotion" | "media" | "code_block" => {
                if let Some(piece) = self.post_element(element) {
                    push_piece(line, &piece);
                }
            }
            "button" => {
                let label = text_or_content(fields.get("text"));
                if !label.is_empty() {
                    push_piece(line, &format!("[{label}]"));
                }
            }
            "select_static"
            | "multi_select_static"
            | "overflow"
            | "select_person"
            | "multi_select_person" => {
                let options: Vec<String> = fields
                    .get("options")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|option| {
                        let text = scalar_text(Some(option));
                        if text.is_empty() {
                            text_or_content(option.get("text"))
                        } else {
                            text
                        }
                    })
                    .filter(|option| !option.is_empty())
                    .collect();
                let placeholder = text_or_content(fields.get("placeholder"));
                let label = if placeholder.is_empty() {
                    "Select".to_string()
                } else {
                    placeholder
                };
                if options.is_empty() {
                    push_piece(line, &format!("[{label}]"));
                } else {
                    push_piece(line, &format!("[{label}: {}]", options.join(" / ")));
                }
            }
            "date_picker" | "picker_time" | "picker_datetime" => {
                let value = text_or_content(fields.get("initial_date"));
                let value = if value.is_empty() {
                    text_or_content(fields.get("placeholder"))
                } else {
                    value
                };
                push_piece(line, &labelled("[Date]", &value));
            }
            _ => {
                // note, div, markdown, column_set, unknown tags: collect their text in order.
                let mut texts = Vec::new();
                collect_texts(fields, self, &mut texts);
                for text in texts {
                    push_piece(line, &text);
                }
            }
        }
    }
}

/// Collects the readable strings of an unknown card element: `text`/`content` strings (or
/// `{content}` objects), nested `elements`, `fields` and `columns`.
fn collect_texts(fields: &Map<String, Value>, renderer: &Renderer<'_>, out: &mut Vec<String>) {
    for key in ["text", "content"] {
        let text = text_or_content(fields.get(key));
        if !text.is_empty() {
            out.push(text);
        }
    }
    for key in ["elements", "fields", "columns"] {
        for child in fields
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut line = String::new();
            match child {
                Value::Array(row) => row
                    .iter()
                    .for_each(|el| renderer.card_element(el, &mut line)),
                element => renderer.card_element(element, &mut line),
            }
            if !line.is_empty() {
                out.push(line);
            }
        }
    }
}

/// The `{title, content}` object of a post, unwrapping a locale wrapper if needed.
fn post_body(post: &Value) -> Option<&Map<String, Value>> {
    let fields = post.as_object()?;
    if fields.contains_key("content") || fields.contains_key("title") {
        return Some(fields);
    }
    ["zh_cn", "en_us", "ja_jp"]
        .iter()
        .find_map(|locale| fields.get(*locale).and_then(Value::as_object))
        .or_else(|| {
            fields
                .values()
                .filter_map(Value::as_object)
                .find(|inner| inner.contains_key("content"))
        })
}

/// Appends `piece` to `line`, separated by one space unless either side already has whitespace
/// at the boundary (post elements usually carry their own spacing).
fn push_piece(line: &mut String, piece: &str) {
    if piece.is_empty() {
        return;
    }
    let needs_space = !line.is_empty()
        && !line.ends_with(char::is_whitespace)
        && !piece.starts_with(char::is_whitespace);
    if needs_space {
        line.push(' ');
    }
    line.push_str(piece);
}

/// `label` alone, or `label detail` when `detail` is non-empty.
fn labelled(label: &str, detail: &str) -> String {
    if detail.is_empty() {
        label.to_string()
    } else {
        format!("{label} {detail}")
    }
}

fn join_non_empty(parts: &[&str], separator: &str) -> String {
    parts
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(separator)
}

/// A string or number as text; anything else is "".
fn scalar_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    }
}

/// A string, or the `content` (else `text`) string of an object like `{"tag":"plain_text",…}`.
fn text_or_content(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Object(fields)) => fields
            .get("content")
            .or_else(|| fields.get("text"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

/// A duration in milliseconds (number or numeric string) as `4.2s` or `2m05s`.
fn format_duration(value: &Value) -> String {
    let Some(ms) = timestamp_ms(value).filter(|ms| *ms > 0) else {
        return String::new();
    };
    let total_seconds = ms / 1000;
    if total_seconds >= 60 {
        format!("{}m{:02}s", total_seconds / 60, total_seconds % 60)
    } else if ms % 1000 == 0 {
        format!("{total_seconds}s")
    } else {
        format!("{total_seconds}.{}s", (ms % 1000) / 100)
    }
}

/// A millisecond value given as a JSON number or a numeric string.
fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number
            .as_i64()
            .or_else(|| number.as_f64().map(|float| float as i64)),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// `[label] summary (start–end)` for the calendar-card family.
fn calendar(label: &str, fields: Option<&Map<String, Value>>) -> String {
    let field = |name: &str| fields.and_then(|fields| fields.get(name));
    let summary = field("summary").and_then(Value::as_str).unwrap_or("");
    let start = field("start_time").and_then(timestamp_ms);
    let end = field("end_time").and_then(timestamp_ms);
    let when = match (start, end) {
        (Some(start), Some(end)) => format!("({})", format_utc_range(start, end)),
        (Some(start), None) => format!("({})", format_utc(start)),
        _ => String::new(),
    };
    labelled(label, &join_non_empty(&[summary, &when], " "))
}

/// Substitutes `{name}` placeholders of a system message template: lists are joined with ", ",
/// strings used as is, `{text}` objects by their text; unknown placeholders are kept.
fn system_text(fields: Option<&Map<String, Value>>) -> String {
    let Some(fields) = fields else {
        return String::new();
    };
    let template = fields.get("template").and_then(Value::as_str).unwrap_or("");
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            rest = &rest[open..];
            break;
        };
        let name = &after[..close];
        match fields.get(name).and_then(substitution) {
            Some(value) => out.push_str(&value),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

fn substitution(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Value::Object(fields) => fields
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM UTC`.
pub fn format_utc(ms: i64) -> String {
    let (date, time) = utc_parts(ms);
    format!("{date} {time} UTC")
}

/// A start/end pair; the end date is omitted when both fall on the same UTC day.
fn format_utc_range(start_ms: i64, end_ms: i64) -> String {
    let (start_date, start_time) = utc_parts(start_ms);
    let (end_date, end_time) = utc_parts(end_ms);
    if start_date == end_date {
        format!("{start_date} {start_time}–{end_time} UTC")
    } else {
        format!("{start_date} {start_time} – {end_date} {end_time} UTC")
    }
}

/// (`YYYY-MM-DD`, `HH:MM`) of epoch milliseconds in UTC (proleptic Gregorian calendar).
fn utc_parts(ms: i64) -> (String, String) {
    let seconds = ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!(
            "{:02}:{:02}",
            second_of_day / 3600,
            (second_of_day % 3600) / 60
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(1_731_398_400_000), "2024-11-12 08:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(
            format_utc_range(1_731_380_400_000, 1_731_384_000_000),
            "2024-11-12 03:00–04:00 UTC"
        );
        assert_eq!(
            format_utc_range(1_731_380_400_000, 1_731_484_000_000),
            "2024-11-12 03:00 – 2024-11-13 07:46 UTC"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(&Value::from(4200)), "4.2s");
        assert_eq!(format_duration(&Value::from(2000)), "2s");
        assert_eq!(format_duration(&Value::from("125000")), "2m05s");
        assert_eq!(format_duration(&Value::from(0)), "");
        assert_eq!(format_duration(&Value::Null), "");
    }

    #[test]
    fn system_template_keeps_unknown_placeholders() {
        let content =
            r#"{"template":"{divider_text} by {nobody} {x","divider_text":{"text":"New"}}"#;
        assert_eq!(
            flatten_content("system", content),
            "[System] New by {nobody} {x"
        );
    }

    #[test]
    fn locale_wrapped_post_is_unwrapped() {
        let content = r#"{"en_us":{"title":"T","content":[[{"tag":"md","text":"**x**"}]]}}"#;
        assert_eq!(flatten_content("post", content), "T\n**x**");
    }

    #[test]
    fn unknown_type_uses_text_or_type_placeholder() {
        assert_eq!(flatten_content("future_kind", r#"{"text":"hi"}"#), "hi");
        assert_eq!(
            flatten_content("future_kind", r#"{"x":1}"#),
            "[future_kind]"
        );
        assert_eq!(flatten_content("text", "not json"), "");
        assert_eq!(
            flatten_content("merge_forward", "Merged and Forwarded Message"),
            FORWARDED
        );
    }
}
