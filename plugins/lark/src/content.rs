//! Message content → readable text, for every `message_type` of lark-protocol §3.4
//! (the mapping table is in the plugin README).
//!
//! `message.content` is a JSON document encoded as a string. Rendering is lenient: missing or
//! oddly typed fields degrade to shorter text, never to an error. Mention placeholders
//! (`@_user_N`) are left in place for [`crate::mentions::resolve_mentions`]; `at` elements that
//! refer to a known mention are rendered as that mention's placeholder so the bot's own mention
//! is removed the same way in text, post and card content.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::json::{
    JsonStr, Key, List, Millis, Obj, ObjectFields, Scalar, Skip, json_object, visit_rest_as,
};
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
    render(message_type, content, mentions).into_owned()
}

/// [`render`] and [`attachments`] in one pass over a post (the other types' attachments are read
/// from their small content objects).
pub(crate) fn render_with_attachments<'c>(
    message_type: &str,
    content: &'c str,
    mentions: &[Mention],
) -> (Cow<'c, str>, Vec<Attachment>) {
    if message_type != "post" {
        return (
            render(message_type, content, mentions),
            attachments(message_type, content),
        );
    }
    let renderer = Renderer::new(mentions);
    let rendered = renderer
        .post_json(content)
        .map(Cow::Owned)
        .unwrap_or_default();
    (rendered, renderer.found.into_inner())
}

/// [`render_content`], borrowing from `content` where the body is one of its strings (`text`).
///
/// The content is parsed once, into the typed fields its `message_type` uses; only the open
/// schemas (`interactive` cards and `system` templates) are read into a [`Value`].
pub(crate) fn render<'c>(
    message_type: &str,
    content: &'c str,
    mentions: &[Mention],
) -> Cow<'c, str> {
    if message_type == "merge_forward" {
        return Cow::Borrowed(FORWARDED);
    }
    let renderer = Renderer::new(mentions);
    let rendered = match message_type {
        "text" => fields::<TextContent<'_>>(content).map(|text| text.text.0.unwrap_or_default()),
        "post" => renderer.post_json(content).map(Cow::Owned),
        "image" => valid(content).map(|()| Cow::Borrowed(IMAGE)),
        "file" => fields::<FileContent<'_>>(content)
            .map(|file| labelled("[File]", file.file_name.as_str()).into()),
        "folder" => fields::<FileContent<'_>>(content)
            .map(|folder| labelled("[Folder]", folder.file_name.as_str()).into()),
        "audio" => fields::<AudioContent>(content)
            .map(|audio| labelled("[Audio]", &format_duration(audio.duration)).into()),
        "media" | "video" => fields::<VideoContent<'_>>(content).map(|video| {
            let name = video.file_name.as_str();
            let name = if name.is_empty() {
                video.name.as_str()
            } else {
                name
            };
            let duration = format_duration(video.duration);
            match (name.is_empty(), duration.is_empty()) {
                (false, false) => format!("{VIDEO} {name} ({duration})"),
                _ => labelled(VIDEO, if name.is_empty() { &duration } else { name }),
            }
            .into()
        }),
        "sticker" => valid(content).map(|()| Cow::Borrowed("[Sticker]")),
        "interactive" => value(content).map(|card| renderer.card(&card).into()),
        "share_chat" => fields::<ShareChatContent<'_>>(content)
            .map(|share| labelled("[Shared chat]", share.chat_id.as_str()).into()),
        "share_user" => fields::<ShareUserContent<'_>>(content)
            .map(|share| labelled("[Shared user]", share.user_id.as_str()).into()),
        "location" => fields::<LocationContent<'_>>(content).map(|location| {
            let (latitude, longitude) = (&location.latitude.0, &location.longitude.0);
            let coordinates = if latitude.is_empty() || longitude.is_empty() {
                String::new()
            } else {
                format!("({latitude}, {longitude})")
            };
            labelled(
                "[Location]",
                &join_non_empty(&[location.name.as_str(), &coordinates], " "),
            )
            .into()
        }),
        "todo" => renderer.todo_json(content).map(|(summary, due)| {
            let due = due
                .map(|ms| format!("(due {})", format_utc(ms)))
                .unwrap_or_default();
            labelled("[Todo]", &join_non_empty(&[summary.as_str(), &due], " ")).into()
        }),
        "vote" => fields::<VoteContent<'_>>(content).map(|vote| {
            let mut out = labelled("[Vote]", vote.topic.as_str());
            for option in &vote.options.0 {
                if !option.0.is_empty() {
                    out.push_str("\n- ");
                    out.push_str(&option.0);
                }
            }
            out.into()
        }),
        "hongbao" => valid(content).map(|()| Cow::Borrowed("[Red packet]")),
        "share_calendar_event" => fields::<CalendarContent<'_>>(content)
            .map(|event| calendar("[Calendar event]", &event).into()),
        "calendar" => fields::<CalendarContent<'_>>(content)
            .map(|event| calendar("[Calendar invitation]", &event).into()),
        "general_calendar" => fields::<CalendarContent<'_>>(content)
            .map(|event| calendar("[Calendar]", &event).into()),
        "video_chat" => fields::<VideoChatContent<'_>>(content).map(|call| {
            let start = call
                .start_time
                .0
                .map(|ms| format!("(started {})", format_utc(ms)))
                .unwrap_or_default();
            labelled(
                "[Video call]",
                &join_non_empty(&[call.topic.as_str(), &start], " "),
            )
            .into()
        }),
        "system" => value(content)
            .map(|system| labelled("[System]", &system_text(system.as_object())).into()),
        other => fields::<TextContent<'_>>(content).map(|content| match content.text.0 {
            Some(text) if !text.is_empty() => text,
            _ => Cow::Owned(format!("[{other}]")),
        }),
    };
    rendered.unwrap_or_default()
}

/// A file, image or other binary part of a message (the WIT `attachment`, without the MIME
/// type and size Lark does not put in events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `image`, `file`, `audio` or `video`.
    pub kind: &'static str,
    /// The file name, when the content gives one.
    pub name: Option<String>,
    /// The `image_key` (images) or `file_key` (everything else): what the message resource API
    /// downloads.
    pub key: String,
}

/// The attachments of a message of `message_type`: the resource of an `image`, `file`,
/// `audio` or `media`/`video` message, and the `img` and `media` elements of a `post` (in
/// order, repeated keys once). Every other type has none, and so has content without a key.
pub fn attachments(message_type: &str, content: &str) -> Vec<Attachment> {
    let single = |kind: &'static str, key: JsonStr<'_>, name: Option<JsonStr<'_>>| match key
        .0
        .filter(|key| !key.is_empty())
    {
        Some(key) => vec![Attachment {
            kind,
            name: name
                .and_then(|name| name.0)
                .filter(|name| !name.is_empty())
                .map(Cow::into_owned),
            key: key.into_owned(),
        }],
        None => Vec::new(),
    };
    match message_type {
        "image" => fields::<ImageKey<'_>>(content)
            .map(|image| single("image", image.image_key, None))
            .unwrap_or_default(),
        "file" => fields::<FileKey<'_>>(content)
            .map(|file| single("file", file.file_key, Some(file.file_name)))
            .unwrap_or_default(),
        "audio" => fields::<FileKey<'_>>(content)
            .map(|audio| single("audio", audio.file_key, None))
            .unwrap_or_default(),
        "media" | "video" => fields::<FileKey<'_>>(content)
            .map(|video| {
                let name = if video.file_name.as_str().is_empty() {
                    video.name
                } else {
                    video.file_name
                };
                single("video", video.file_key, Some(name))
            })
            .unwrap_or_default(),
        "post" => render_with_attachments("post", content, &[]).1,
        _ => Vec::new(),
    }
}

/// Renders content without mention context: `at` elements become `@user_name`.
pub fn flatten_content(message_type: &str, content: &str) -> String {
    render_content(message_type, content, &[])
}

/// Flattens a `post` body (flat `{title, content}` or locale-wrapped `{"zh_cn": {…}}`): the title
/// on its own first line when present, then one line per paragraph. Returns "" when malformed.
pub fn flatten_post(post: &Value, mentions: &[Mention]) -> String {
    let renderer = Renderer::new(mentions);
    PostSeed {
        renderer: &renderer,
        capacity: 0,
    }
    .deserialize(post)
    .unwrap_or_default()
}

/// The typed fields of `content` when it is valid JSON (any non-object reads as no fields).
fn fields<'c, T: ObjectFields<'c>>(content: &'c str) -> Option<T> {
    serde_json::from_str::<Obj<T>>(content)
        .ok()
        .map(|fields| fields.0)
}

/// `Some(())` when `content` is valid JSON (for types whose body ignores the content).
fn valid(content: &str) -> Option<()> {
    serde_json::from_str::<Skip>(content).ok().map(|_| ())
}

/// `content` as a [`Value`], for the open schemas only.
fn value(content: &str) -> Option<Value> {
    serde_json::from_str(content).ok()
}

json_object! {
    /// `text` content, and the `text` fallback of unknown types.
    struct TextContent<'a> {
        text: JsonStr<'a> = "text",
    }
}

json_object! {
    /// `file` and `folder` content.
    struct FileContent<'a> {
        file_name: JsonStr<'a> = "file_name",
    }
}

json_object! {
    /// The resource key of `image` content.
    struct ImageKey<'a> {
        image_key: JsonStr<'a> = "image_key",
    }
}

json_object! {
    /// The resource key and name of `file`, `audio` and `media` content.
    struct FileKey<'a> {
        file_key: JsonStr<'a> = "file_key",
        file_name: JsonStr<'a> = "file_name",
        name: JsonStr<'a> = "name",
    }
}

json_object! {
    /// `audio` content.
    struct AudioContent {
        duration: Millis = "duration",
    }
}

json_object! {
    /// `media` and `video` content.
    struct VideoContent<'a> {
        file_name: JsonStr<'a> = "file_name",
        name: JsonStr<'a> = "name",
        duration: Millis = "duration",
    }
}

json_object! {
    /// `share_chat` content.
    struct ShareChatContent<'a> {
        chat_id: JsonStr<'a> = "chat_id",
    }
}

json_object! {
    /// `share_user` content.
    struct ShareUserContent<'a> {
        user_id: JsonStr<'a> = "user_id",
    }
}

json_object! {
    /// `location` content.
    struct LocationContent<'a> {
        name: JsonStr<'a> = "name",
        latitude: Scalar<'a> = "latitude",
        longitude: Scalar<'a> = "longitude",
    }
}

json_object! {
    /// `vote` content.
    struct VoteContent<'a> {
        topic: JsonStr<'a> = "topic",
        options: List<Scalar<'a>> = "options",
    }
}

json_object! {
    /// The calendar-card family (`share_calendar_event`, `calendar`, `general_calendar`).
    struct CalendarContent<'a> {
        summary: JsonStr<'a> = "summary",
        start_time: Millis = "start_time",
        end_time: Millis = "end_time",
    }
}

json_object! {
    /// `video_chat` content.
    struct VideoChatContent<'a> {
        topic: JsonStr<'a> = "topic",
        start_time: Millis = "start_time",
    }
}

json_object! {
    /// One element of a post paragraph.
    struct PostElement<'a> {
        tag: JsonStr<'a> = "tag",
        text: JsonStr<'a> = "text",
        href: JsonStr<'a> = "href",
        user_id: JsonStr<'a> = "user_id",
        user_name: JsonStr<'a> = "user_name",
        image_key: JsonStr<'a> = "image_key",
        file_key: JsonStr<'a> = "file_key",
    }
}

struct Renderer<'m> {
    mentions: &'m [Mention],
    /// The `img` and `media` elements met while rendering a post (read in the same pass, so
    /// attachments cost no second parse).
    found: std::cell::RefCell<Vec<Attachment>>,
}

impl<'m> Renderer<'m> {
    fn new(mentions: &'m [Mention]) -> Renderer<'m> {
        Renderer {
            mentions,
            found: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Records a post's image or video once.
    fn found(&self, kind: &'static str, key: &str) {
        if key.is_empty() {
            return;
        }
        let mut found = self.found.borrow_mut();
        if !found
            .iter()
            .any(|seen| seen.kind == kind && seen.key == key)
        {
            found.push(Attachment {
                kind,
                name: None,
                key: key.to_string(),
            });
        }
    }
}

impl Renderer<'_> {
    /// A post given as JSON text; `None` when it is not valid JSON.
    fn post_json(&self, content: &str) -> Option<String> {
        let mut deserializer = serde_json::Deserializer::from_str(content);
        let post = PostSeed {
            renderer: self,
            capacity: content.len(),
        }
        .deserialize(&mut deserializer)
        .ok()?;
        deserializer.end().ok()?;
        Some(post)
    }

    /// `todo` content given as JSON text: the rendered `summary` post and `due_time`.
    fn todo_json(&self, content: &str) -> Option<(String, Option<i64>)> {
        let mut deserializer = serde_json::Deserializer::from_str(content);
        let todo = TodoSeed { renderer: self }
            .deserialize(&mut deserializer)
            .ok()?;
        deserializer.end().ok()?;
        Some(todo)
    }

    /// One post element (`tag` and its string fields); `None` when it renders to nothing.
    fn post_piece<'e>(
        &self,
        tag: &str,
        text: &'e str,
        href: &'e str,
        user_id: &'e str,
        user_name: &'e str,
    ) -> Option<Cow<'e, str>> {
        let piece = match tag {
            "text" | "code_block" | "md" => Cow::Borrowed(text),
            "a" => match (text.is_empty(), href.is_empty()) {
                (false, false) if text != href => Cow::Owned(format!("{text} ({href})")),
                (false, _) => Cow::Borrowed(text),
                (true, _) => Cow::Borrowed(href),
            },
            "at" => self.at(user_id, user_name),
            "img" => Cow::Borrowed(IMAGE),
            "media" => Cow::Borrowed(VIDEO),
            "emotion" => return None,
            "hr" => Cow::Borrowed("---"),
            _ => Cow::Borrowed(text),
        };
        (!piece.is_empty()).then_some(piece)
    }

    /// A post element given as a [`Value`] (card content).
    fn post_element(&self, element: &Value) -> Option<String> {
        let element = element.as_object()?;
        let text = |name: &str| element.get(name).and_then(Value::as_str).unwrap_or("");
        self.post_piece(
            text("tag"),
            text("text"),
            text("href"),
            text("user_id"),
            text("user_name"),
        )
        .map(Cow::into_owned)
    }

    /// An `at` element: a known mention keeps its placeholder (resolved later), `all` is @all,
    /// otherwise the user name, otherwise the raw id.
    fn at<'e>(&self, user_id: &'e str, user_name: &str) -> Cow<'e, str> {
        if !user_id.is_empty() {
            if let Some(mention) = self.mentions.iter().find(|mention| {
                !mention.key.is_empty()
                    && (mention.key == user_id || mention.open_id.as_deref() == Some(user_id))
            }) {
                return Cow::Owned(mention.key.clone());
            }
            if user_id == "all" || user_id == MENTION_ALL_KEY {
                return Cow::Borrowed("@all");
            }
        }
        if !user_name.is_empty() {
            Cow::Owned(format!("@{user_name}"))
        } else {
            Cow::Borrowed(user_id)
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

/// Renders a post (any JSON value; only objects render to text) while it is being parsed.
///
/// A post is a flat body `{title, content}` or a locale wrapper. As with a parsed map: an object
/// with a `content` or `title` key is the body itself; otherwise the `zh_cn`, `en_us` or `ja_jp`
/// object (in that order) is; otherwise the first other object with a `content` key, in key
/// order. A later duplicate key replaces an earlier one.
struct PostSeed<'r> {
    renderer: &'r Renderer<'r>,
    /// Bytes to reserve for the rendered paragraphs (the size of the post's JSON, when known).
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for PostSeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PostSeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a post")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        const LOCALES: [&str; 3] = ["zh_cn", "en_us", "ja_jp"];
        let mut own = PostBody::default();
        let mut locales: [Option<PostBody>; 3] = Default::default();
        // Other keys whose value is an object with `content`, rendered (`None`: it is not).
        let mut wrapped: Vec<(Cow<'de, str>, Option<PostBody>)> = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            if own.read_field(&key, &mut map, self.renderer, self.capacity)? {
                continue;
            }
            let body = map.next_value_seed(BodySeed {
                renderer: self.renderer,
                capacity: self.capacity,
            })?;
            if let Some(index) = LOCALES.iter().position(|locale| *locale == key) {
                locales[index] = body;
            } else {
                let body = body.filter(|body| body.has_content);
                match wrapped.iter_mut().find(|(seen, _)| *seen == key) {
                    Some((_, seen)) => *seen = body,
                    None => wrapped.push((key, body)),
                }
            }
        }
        let body = if own.has_content || own.has_title {
            Some(own)
        } else {
            locales.into_iter().flatten().next().or_else(|| {
                wrapped
                    .into_iter()
                    .filter_map(|(key, body)| Some((key, body?)))
                    .min_by(|(a, _), (b, _)| a.cmp(b))
                    .map(|(_, body)| body)
            })
        };
        Ok(body.map(PostBody::into_text).unwrap_or_default())
    }

    visit_rest_as!(Skip => String::new(); bool, i64, u64, f64, str, unit, seq);
}

/// A post body (`{title, content}`) being rendered.
#[derive(Default)]
struct PostBody {
    has_title: bool,
    has_content: bool,
    /// `title` when it is a string.
    title: Option<String>,
    /// The rendered paragraph lines, joined by `\n`.
    paragraphs: Paragraphs,
}

impl PostBody {
    /// Reads `key` into the body if it is `title` or `content`; `false` for other keys (their
    /// value is left unread).
    fn read_field<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        renderer: &Renderer<'_>,
        capacity: usize,
    ) -> Result<bool, A::Error> {
        match key {
            "title" => {
                self.has_title = true;
                self.title = map.next_value::<JsonStr<'de>>()?.0.map(Cow::into_owned);
            }
            "content" => {
                self.has_content = true;
                self.paragraphs = map.next_value_seed(ParagraphsSeed { renderer, capacity })?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The title on its own first line when non-empty, then the paragraph lines; trailing
    /// newlines removed.
    fn into_text(self) -> String {
        let mut out = match self.title.filter(|title| !title.is_empty()) {
            Some(mut title) => {
                if self.paragraphs.count > 0 {
                    title.reserve(1 + self.paragraphs.text.len());
                    title.push('\n');
                    title.push_str(&self.paragraphs.text);
                }
                title
            }
            None => self.paragraphs.text,
        };
        out.truncate(out.trim_end_matches('\n').len());
        out
    }
}

/// A post body inside a locale wrapper: `Some` for an object, `None` for anything else.
struct BodySeed<'r> {
    renderer: &'r Renderer<'r>,
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Option<PostBody>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Option<PostBody>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a post body")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut body = PostBody::default();
        while let Some(Key(key)) = map.next_key()? {
            if !body.read_field(&key, &mut map, self.renderer, self.capacity)? {
                map.next_value::<Skip>()?;
            }
        }
        Ok(Some(body))
    }

    visit_rest_as!(Skip => None; bool, i64, u64, f64, str, unit, seq);
}

/// Rendered paragraphs: one line per paragraph array, joined by `\n`.
#[derive(Default)]
struct Paragraphs {
    text: String,
    /// Number of lines (a paragraph that renders to nothing still counts).
    count: usize,
}

/// The `content` of a post body: an array of paragraph arrays (anything else: no lines).
struct ParagraphsSeed<'r> {
    renderer: &'r Renderer<'r>,
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for ParagraphsSeed<'_> {
    type Value = Paragraphs;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Paragraphs, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParagraphsSeed<'_> {
    type Value = Paragraphs;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("post paragraphs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Paragraphs, A::Error> {
        let mut paragraphs = Paragraphs {
            text: String::with_capacity(self.capacity),
            count: 0,
        };
        while seq
            .next_element_seed(LineSeed {
                renderer: self.renderer,
                paragraphs: &mut paragraphs,
            })?
            .is_some()
        {}
        Ok(paragraphs)
    }

    visit_rest_as!(Skip => Paragraphs::default(); bool, i64, u64, f64, str, unit, map);
}

/// One paragraph: an array of elements rendered as one line; anything else adds no line.
struct LineSeed<'r, 'p> {
    renderer: &'r Renderer<'r>,
    paragraphs: &'p mut Paragraphs,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a post paragraph")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let paragraphs = self.paragraphs;
        if paragraphs.count > 0 {
            paragraphs.text.push('\n');
        }
        paragraphs.count += 1;
        let line_start = paragraphs.text.len();
        while let Some(Obj(element)) = seq.next_element::<Obj<PostElement<'de>>>()? {
            match element.tag.as_str() {
                "img" => self.renderer.found("image", element.image_key.as_str()),
                "media" => self.renderer.found("video", element.file_key.as_str()),
                _ => {}
            }
            let piece = self.renderer.post_piece(
                element.tag.as_str(),
                element.text.as_str(),
                element.href.as_str(),
                element.user_id.as_str(),
                element.user_name.as_str(),
            );
            if let Some(piece) = piece {
                push_piece_from(&mut paragraphs.text, line_start, &piece);
            }
        }
        Ok(())
    }

    visit_rest_as!(Skip => (); bool, i64, u64, f64, str, unit, map);
}

/// `todo` content: the `summary` post rendered and `due_time`.
struct TodoSeed<'r> {
    renderer: &'r Renderer<'r>,
}

impl<'de> DeserializeSeed<'de> for TodoSeed<'_> {
    type Value = (String, Option<i64>);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TodoSeed<'_> {
    type Value = (String, Option<i64>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("todo content")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut summary, mut due) = (String::new(), None);
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "summary" => {
                    summary = map.next_value_seed(PostSeed {
                        renderer: self.renderer,
                        capacity: 0,
                    })?;
                }
                "due_time" => due = map.next_value::<Millis>()?.0,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok((summary, due))
    }

    visit_rest_as!(Skip => (String::new(), None); bool, i64, u64, f64, str, unit, seq);
}

/// Appends `piece` to `line`, separated by one space unless either side already has whitespace
/// at the boundary (post elements usually carry their own spacing).
fn push_piece(line: &mut String, piece: &str) {
    push_piece_from(line, 0, piece);
}

/// [`push_piece`] for the line of `out` that starts at byte `line_start`.
fn push_piece_from(out: &mut String, line_start: usize, piece: &str) {
    if piece.is_empty() {
        return;
    }
    let line = &out[line_start..];
    let needs_space = !line.is_empty()
        && !line.ends_with(char::is_whitespace)
        && !piece.starts_with(char::is_whitespace);
    if needs_space {
        out.push(' ');
    }
    out.push_str(piece);
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
fn format_duration(duration: Millis) -> String {
    let Some(ms) = duration.0.filter(|ms| *ms > 0) else {
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

/// `[label] summary (start–end)` for the calendar-card family.
fn calendar(label: &str, event: &CalendarContent<'_>) -> String {
    let when = match (event.start_time.0, event.end_time.0) {
        (Some(start), Some(end)) => format!("({})", format_utc_range(start, end)),
        (Some(start), None) => format!("({})", format_utc(start)),
        _ => String::new(),
    };
    labelled(
        label,
        &join_non_empty(&[event.summary.as_str(), &when], " "),
    )
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
        let duration = |json: &str| format_duration(serde_json::from_str(json).unwrap());
        assert_eq!(duration("4200"), "4.2s");
        assert_eq!(duration("2000"), "2s");
        assert_eq!(duration("\"125000\""), "2m05s");
        assert_eq!(duration("0"), "");
        assert_eq!(duration("null"), "");
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
    fn content_reads_like_a_parsed_map() {
        // No locale key: the first object with `content`, in key order.
        let wrapped = r#"{"zz":{"content":[[{"tag":"text","text":"z"}]]},"aa":{"content":[[{"tag":"text","text":"a"}]]}}"#;
        assert_eq!(flatten_content("post", wrapped), "a");
        // A later duplicate key replaces an earlier one.
        let duplicated = r#"{"title":"T","content":[[{"tag":"text","text":"x"}]],"title":"U"}"#;
        assert_eq!(flatten_content("post", duplicated), "U\nx");
        // Valid JSON that is not an object has no fields; invalid JSON renders nothing.
        assert_eq!(flatten_content("text", r#"["hi"]"#), "");
        assert_eq!(flatten_content("image", "[]"), IMAGE);
        assert_eq!(flatten_content("image", "{"), "");
        assert_eq!(
            flatten_content("location", r#"{"latitude":31.23,"longitude":"121.50"}"#),
            "[Location] (31.23, 121.50)"
        );
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

    #[test]
    fn attachments_of_posts_are_read_anywhere_and_once() {
        let post = r#"{"zh_cn":{"title":"T","content":[[{"tag":"img","image_key":"img_1"},{"tag":"text","text":"image_key"}],[{"tag":"media","file_key":"file_1","image_key":"img_cover"},{"tag":"img","image_key":"img_1"}],[{"tag":"img","image_key":""}]]}}"#;
        let found = attachments("post", post);
        assert_eq!(
            found,
            [
                Attachment {
                    kind: "image",
                    name: None,
                    key: "img_1".into()
                },
                Attachment {
                    kind: "video",
                    name: None,
                    key: "file_1".into()
                },
            ]
        );
        assert!(
            attachments(
                "post",
                r#"{"title":"T","content":[[{"tag":"text","text":"x"}]]}"#
            )
            .is_empty()
        );
        assert!(
            attachments("post", "{\"image_key\"").is_empty(),
            "malformed"
        );
    }

    #[test]
    fn attachments_of_single_resources() {
        assert!(attachments("text", r#"{"text":"img_1"}"#).is_empty());
        assert!(attachments("image", r#"{"image_key":""}"#).is_empty());
        assert!(attachments("image", "not json").is_empty());
        assert!(attachments("sticker", r#"{"file_key":"f"}"#).is_empty());
        assert_eq!(
            attachments("file", r#"{"file_key":"f","file_name":""}"#),
            [Attachment {
                kind: "file",
                name: None,
                key: "f".into()
            }]
        );
        assert_eq!(
            attachments("video", r#"{"file_key":"v","name":"clip.mp4"}"#),
            [Attachment {
                kind: "video",
                name: Some("clip.mp4".into()),
                key: "v".into()
            }]
        );
    }
}
