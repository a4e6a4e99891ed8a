//! Notices: what the host tells a user on its own behalf, and the words it uses.
//!
//! The host decides which notice is due ([`NoticeKind`]) and fills in its text from a catalogue
//! ([`NoticeTexts`]): built-in English and Chinese defaults, overridden per locale by the
//! operator's `[notices.<locale>]` config. Plugins only render the result. Owns the catalogue;
//! must not know any channel, and no text here may name another product.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which notice is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The sender has no access yet (`bound` policy): carries their pairing code in `detail`
    /// (or, with the `pairing_full` text, says to try later).
    BindingRequired,
    /// `new` was received: the next message starts a fresh context.
    FreshContext,
    /// No worker is online for the bound agent; the message is kept.
    AgentOffline,
    /// The bound agent is archived.
    AgentArchived,
    /// A run failed (carries a reference).
    RunError,
    /// A command was used wrongly.
    CommandUsage,
    /// The answer to `help`.
    Help,
    /// The answer to `status`.
    Status,
    /// Free text (operator messages, command results).
    Info,
    /// A worker asks for a decision (the prompt in `detail`, approve/reject buttons in
    /// `actions`); once decided, the decision in `decided`.
    Approval,
}

impl NoticeKind {
    /// Every kind, for listing the catalogue.
    pub const ALL: [NoticeKind; 10] = [
        NoticeKind::BindingRequired,
        NoticeKind::FreshContext,
        NoticeKind::AgentOffline,
        NoticeKind::AgentArchived,
        NoticeKind::RunError,
        NoticeKind::CommandUsage,
        NoticeKind::Help,
        NoticeKind::Status,
        NoticeKind::Info,
        NoticeKind::Approval,
    ];

    /// The snake_case name (config keys, outbox rows).
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::BindingRequired => "binding_required",
            NoticeKind::FreshContext => "fresh_context",
            NoticeKind::AgentOffline => "agent_offline",
            NoticeKind::AgentArchived => "agent_archived",
            NoticeKind::RunError => "run_error",
            NoticeKind::CommandUsage => "command_usage",
            NoticeKind::Help => "help",
            NoticeKind::Status => "status",
            NoticeKind::Info => "info",
            NoticeKind::Approval => "approval",
        }
    }
}

/// A notice the host decided on, before its words are chosen. `detail` fills the `{detail}`
/// placeholder of the catalogue text (a status line, a usage string, an operator's text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Which notice.
    pub kind: NoticeKind,
    /// Text for the `{detail}` placeholder (the whole text for `info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A link to offer (binding links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A reference the user can quote (run errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The participant it is for, when it must be sent privately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// A catalogue key whose words replace the kind's (the pairing texts
    /// [`PAIRING_FULL`] and [`PAIRING_APPROVED`]); overridable in `[notices.<locale>]` like a
    /// kind's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_key: Option<String>,
    /// Buttons shown with the text (approval requests); their labels are chosen at render
    /// time in the installation's locale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<NoticeButton>,
    /// An approval's decision, shown under its prompt (the card after the decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<Decided>,
}

/// A button the host puts on a notice: what a press sends back (`name`, `value`) and which
/// catalogue words label it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeButton {
    /// The action name a press carries back (`ap.y`, `ap.n`).
    pub name: String,
    /// The value a press carries back (an approval id).
    pub value: String,
    /// The catalogue key of its label ([`BUTTON_APPROVE`], [`BUTTON_REJECT`]).
    pub label: String,
    /// The confirming choice (styled as primary by channels that can).
    #[serde(default)]
    pub primary: bool,
}

/// How an approval ended, as its card shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The catalogue key of the decision line ([`APPROVAL_APPROVED`], [`APPROVAL_REJECTED`],
    /// [`APPROVAL_EXPIRED`]).
    pub line: String,
    /// Who decided (a display name or participant id), for `{user}`.
    #[serde(default)]
    pub by: String,
}

impl Notice {
    /// A notice of `kind` with nothing filled in.
    pub fn new(kind: NoticeKind) -> Notice {
        Notice {
            kind,
            detail: None,
            link: None,
            reference: None,
            recipient: None,
            text_key: None,
            actions: Vec::new(),
            decided: None,
        }
    }

    /// With the words of catalogue key `key` instead of the kind's.
    pub fn with_text_key(mut self, key: &str) -> Notice {
        self.text_key = Some(key.to_string());
        self
    }

    /// With `{detail}` text.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Notice {
        self.detail = Some(detail.into());
        self
    }
}

/// The catalogue key of the words that end a streamed reply whose run stopped before it
/// finished (interrupted, or the host shutting down): shown after the text streamed so far.
/// Not a notice of its own; overridden like one, in `[notices.<locale>]`.
pub const STREAM_INTERRUPTED: &str = "stream_interrupted";

/// The catalogue key of the words an unbound sender gets when the installation already has as
/// many pending pairing codes as it may: try again later (kind `binding_required`, no code).
pub const PAIRING_FULL: &str = "pairing_full";

/// The catalogue key of the words a sender gets when the operator approved their pairing code
/// (kind `info`).
pub const PAIRING_APPROVED: &str = "pairing_approved";

/// The catalogue keys beyond the notice kinds' own.
const EXTRA_KEYS: [&str; 3] = [STREAM_INTERRUPTED, PAIRING_FULL, PAIRING_APPROVED];

/// The locale used when an installation names none.
pub const DEFAULT_LOCALE: &str = "en";

/// Catalogue key: the toast answering a pressed control the host has no other answer for.
pub const TOAST_RECEIVED: &str = "toast_received";
/// Catalogue key: the toast answering an approving press.
pub const TOAST_APPROVED: &str = "toast_approved";
/// Catalogue key: the toast answering a rejecting press.
pub const TOAST_REJECTED: &str = "toast_rejected";
/// Catalogue key: the toast answering a press on an approval that expired.
pub const TOAST_EXPIRED: &str = "toast_expired";
/// Catalogue key: the toast refusing a press by someone who may not decide.
pub const TOAST_NOT_APPROVER: &str = "toast_not_approver";
/// Catalogue key: the approve button's label.
pub const BUTTON_APPROVE: &str = "button_approve";
/// Catalogue key: the reject button's label.
pub const BUTTON_REJECT: &str = "button_reject";
/// Catalogue key: the line an approved card shows (`{user}`: who approved).
pub const APPROVAL_APPROVED: &str = "approval_approved";
/// Catalogue key: the line a rejected card shows (`{user}`: who rejected).
pub const APPROVAL_REJECTED: &str = "approval_rejected";
/// Catalogue key: the line an expired card shows.
pub const APPROVAL_EXPIRED: &str = "approval_expired";

/// Catalogue keys that are words, not notices (toasts, buttons, decision lines), with their
/// built-in English and Chinese texts. Overridden like notices, in `[notices.<locale>]`.
const WORDS: [(&str, &str, &str); 10] = [
    (TOAST_RECEIVED, "Received", "已收到"),
    (TOAST_APPROVED, "Approved", "已批准"),
    (TOAST_REJECTED, "Rejected", "已拒绝"),
    (TOAST_EXPIRED, "This request has expired", "该请求已过期"),
    (
        TOAST_NOT_APPROVER,
        "You can't approve this",
        "你无权审批此请求",
    ),
    (BUTTON_APPROVE, "Approve", "批准"),
    (BUTTON_REJECT, "Reject", "拒绝"),
    (APPROVAL_APPROVED, "Approved by {user}", "已由 {user} 批准"),
    (APPROVAL_REJECTED, "Rejected by {user}", "已由 {user} 拒绝"),
    (
        APPROVAL_EXPIRED,
        "Expired without a decision",
        "已过期，未作决定",
    ),
];

/// What `{product}` says when the operator names no product.
pub const DEFAULT_PRODUCT_NAME: &str = "switchboard";

/// The notice words, per locale.
#[derive(Debug, Clone, Default)]
pub struct NoticeTexts {
    /// Operator overrides: locale → notice kind name → text.
    overrides: BTreeMap<String, BTreeMap<String, String>>,
    /// The product's name for `{product}` (config `product_name`); `None`: the default.
    product: Option<String>,
}

impl NoticeTexts {
    /// The catalogue with the operator's `[notices.<locale>]` overrides (kind name → text).
    pub fn new(overrides: BTreeMap<String, BTreeMap<String, String>>) -> NoticeTexts {
        NoticeTexts {
            overrides,
            product: None,
        }
    }

    /// The catalogue naming the product `name` in `{product}` (blank or `None`:
    /// [`DEFAULT_PRODUCT_NAME`]).
    pub fn with_product_name(mut self, name: Option<&str>) -> NoticeTexts {
        self.product = name
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned);
        self
    }

    /// The name `{product}` renders as.
    pub fn product_name(&self) -> &str {
        self.product.as_deref().unwrap_or(DEFAULT_PRODUCT_NAME)
    }

    /// Override keys that name no notice kind (for config validation).
    pub fn unknown_keys(&self) -> Vec<String> {
        let known: Vec<&str> = NoticeKind::ALL
            .iter()
            .map(|k| k.as_str())
            .chain(EXTRA_KEYS)
            .chain(WORDS.iter().map(|(key, _, _)| *key))
            .collect();
        self.overrides
            .iter()
            .flat_map(|(locale, texts)| {
                texts
                    .keys()
                    .filter(|k| !known.contains(&k.as_str()))
                    .map(move |k| format!("notices.{locale}.{k}"))
            })
            .collect()
    }

    /// The text of `notice` in `locale`: the operator's override for the locale (or its
    /// language), else the built-in text for the language, else English; `{detail}` and
    /// `{reference}` filled in, `{bot}` with the generic name ("the assistant"), `{product}`
    /// with the product's name ([`NoticeTexts::with_product_name`]).
    pub fn render(&self, notice: &Notice, locale: &str) -> String {
        self.render_for(notice, locale, None)
    }

    /// [`NoticeTexts::render`] with the bot's name for `{bot}` (an installation's `bot_name`
    /// config; none or blank: the generic name in the locale's language).
    pub fn render_for(&self, notice: &Notice, locale: &str, bot: Option<&str>) -> String {
        let language = locale.split(['-', '_']).next().unwrap_or(locale);
        let template = match notice.text_key.as_deref() {
            Some(key) => self
                .override_of(key, locale)
                .unwrap_or_else(|| builtin_extra(key, language)),
            // A binding link queued before pairing replaced it (no code, a link): its old words.
            None if notice.kind == NoticeKind::BindingRequired
                && notice.detail.is_none()
                && notice.link.is_some() =>
            {
                legacy_binding_link(language)
            }
            None => self
                .override_of(notice.kind.as_str(), locale)
                .unwrap_or_else(|| builtin(notice.kind, language)),
        };
        let detail = notice.detail.as_deref().unwrap_or("");
        let bot = bot
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .unwrap_or(if language == "zh" {
                "助手"
            } else {
                "The assistant"
            });
        let mut text = template
            .replace("{detail}", detail)
            .replace("{reference}", notice.reference.as_deref().unwrap_or(""))
            .replace("{bot}", bot)
            .replace("{product}", self.product_name())
            .trim()
            .to_string();
        if let Some(decided) = &notice.decided {
            let line = self
                .word(&decided.line, locale)
                .replace("{user}", &decided.by);
            text = format!("{text}\n\n{line}");
        }
        text
    }

    /// The words of catalogue key `key` (a toast, a button label, a decision line; see
    /// [`TOAST_RECEIVED`] and its siblings) in `locale`: the operator's override, else the
    /// built-in text for the language (Chinese for `zh*`, else English). An unknown key is
    /// returned as is.
    pub fn word(&self, key: &str, locale: &str) -> String {
        if let Some(text) = self.override_of(key, locale) {
            return text.trim().to_string();
        }
        let language = locale.split(['-', '_']).next().unwrap_or(locale);
        WORDS
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, en, zh)| if language == "zh" { *zh } else { *en })
            .unwrap_or(key)
            .to_string()
    }

    /// The words that end a streamed reply whose run stopped before it finished
    /// ([`STREAM_INTERRUPTED`]) in `locale`: the operator's override, else the built-in text.
    pub fn stream_interrupted(&self, locale: &str) -> String {
        let language = locale.split(['-', '_']).next().unwrap_or(locale);
        let text = self
            .override_of(STREAM_INTERRUPTED, locale)
            .unwrap_or(if language == "zh" {
                "（回答已中断）"
            } else {
                "(The answer was interrupted.)"
            });
        text.trim().to_string()
    }

    /// The operator's text for catalogue key `key` in `locale` (or its language).
    fn override_of(&self, key: &str, locale: &str) -> Option<&str> {
        let language = locale.split(['-', '_']).next().unwrap_or(locale);
        [locale, language]
            .iter()
            .find_map(|l| self.overrides.get(*l).and_then(|t| t.get(key)))
            .map(String::as_str)
    }
}

/// The built-in words of an extra catalogue key ([`PAIRING_FULL`], [`PAIRING_APPROVED`]);
/// `{detail}` for a key this binary does not know.
fn builtin_extra(key: &str, language: &str) -> &'static str {
    let zh = language == "zh";
    match key {
        PAIRING_FULL if zh => "现在等待审批的访问请求太多了，请稍后再试。",
        PAIRING_FULL => "Too many access requests are waiting right now. Please try again later.",
        PAIRING_APPROVED if zh => "你的访问已获批准，现在可以和我对话了。",
        PAIRING_APPROVED => "You now have access. Go ahead and chat with me.",
        _ => "{detail}",
    }
}

/// The words of a binding-link notice stored before pairing replaced links (still delivered).
fn legacy_binding_link(language: &str) -> &'static str {
    if language == "zh" {
        "请先绑定你的账号，再和我对话。链接 15 分钟内有效，只能使用一次。"
    } else {
        "Please link your account before chatting with me. The link works once, for 15 minutes."
    }
}

fn builtin(kind: NoticeKind, language: &str) -> &'static str {
    if language == "zh" {
        return match kind {
            NoticeKind::BindingRequired => {
                "你还没有和我对话的权限。请把这个代码交给你的管理员：{detail}（1 小时内有效）。获批后我会通知你。"
            }
            NoticeKind::FreshContext => "好的，下一条消息将开始新的对话。",
            NoticeKind::AgentOffline => "{bot}暂时不在线。你的消息已保存，上线后会回复。",
            NoticeKind::AgentArchived => "{bot}已停用，不会再回复。请联系管理员。",
            NoticeKind::RunError => {
                "抱歉，处理时出错了。请稍后再试；如需帮助，请提供参考号 {reference}。"
            }
            NoticeKind::CommandUsage => "用法：{detail}",
            NoticeKind::Help => "可用命令：\n{detail}",
            NoticeKind::Status => "{detail}",
            NoticeKind::Info => "{detail}",
            NoticeKind::Approval => "需要你的批准：\n{detail}",
        };
    }
    match kind {
        NoticeKind::BindingRequired => {
            "You do not have access to me yet. Give this code to your administrator: {detail} (valid for one hour). I will tell you once you are approved."
        }
        NoticeKind::FreshContext => "OK: your next message starts a fresh conversation.",
        NoticeKind::AgentOffline => {
            "{bot} is offline right now. Your message is kept and will be answered when it is back."
        }
        NoticeKind::AgentArchived => {
            "{bot} has been retired and will not answer. Please contact your administrator."
        }
        NoticeKind::RunError => {
            "Sorry, something went wrong while answering. Please try again; if it keeps happening, give your administrator the reference {reference}."
        }
        NoticeKind::CommandUsage => "Usage: {detail}",
        NoticeKind::Help => "Commands:\n{detail}",
        NoticeKind::Status => "{detail}",
        NoticeKind::Info => "{detail}",
        NoticeKind::Approval => "Your approval is needed:\n{detail}",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_by_locale_then_language_and_fill_placeholders() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "en".to_string(),
            BTreeMap::from([("agent_offline".to_string(), "Back soon.".to_string())]),
        );
        let texts = NoticeTexts::new(overrides);
        let offline = Notice::new(NoticeKind::AgentOffline);
        assert_eq!(texts.render(&offline, "en-GB"), "Back soon.");
        assert!(texts.render(&offline, "zh-CN").contains("不在线"));
        let mut error = Notice::new(NoticeKind::RunError);
        error.reference = Some("ab12cd34".into());
        assert!(texts.render(&error, "fr").contains("ab12cd34"));
        assert_eq!(
            texts.render(&Notice::new(NoticeKind::Info).with_detail("hi"), "en"),
            "hi"
        );
        assert!(texts.unknown_keys().is_empty());
    }

    #[test]
    fn the_pairing_words_carry_the_code_have_both_languages_and_overrides() {
        let texts = NoticeTexts::default();
        let code = Notice::new(NoticeKind::BindingRequired).with_detail("ABCD2345");
        for locale in ["en", "zh-CN"] {
            assert!(texts.render(&code, locale).contains("ABCD2345"), "{locale}");
        }
        assert!(texts.render(&code, "en").contains("administrator"));
        assert!(!texts.render(&code, "en").contains("/bind"));
        let full = Notice::new(NoticeKind::BindingRequired).with_text_key(PAIRING_FULL);
        assert!(texts.render(&full, "en").contains("try again later"));
        assert!(texts.render(&full, "zh").contains("稍后再试"));
        let granted = Notice::new(NoticeKind::Info).with_text_key(PAIRING_APPROVED);
        assert!(texts.render(&granted, "en").contains("You now have access"));
        assert!(texts.render(&granted, "zh-TW").contains("获批准"));
        let texts = NoticeTexts::new(BTreeMap::from([(
            "en".to_string(),
            BTreeMap::from([
                (PAIRING_APPROVED.to_string(), "Welcome aboard.".to_string()),
                ("binding_required".to_string(), "Code: {detail}".to_string()),
            ]),
        )]));
        assert_eq!(texts.render(&granted, "en"), "Welcome aboard.");
        assert_eq!(texts.render(&code, "en-US"), "Code: ABCD2345");
        assert!(texts.unknown_keys().is_empty(), "the keys are known");
    }

    #[test]
    fn the_bot_is_named_from_config_or_generically_and_words_have_both_languages() {
        let texts = NoticeTexts::default();
        let offline = Notice::new(NoticeKind::AgentOffline);
        assert!(
            texts
                .render_for(&offline, "en_us", Some("Helper"))
                .starts_with("Helper is offline")
        );
        assert!(
            texts
                .render(&offline, "en")
                .starts_with("The assistant is offline")
        );
        assert!(
            texts
                .render_for(&offline, "zh_cn", Some("小助"))
                .starts_with("小助暂时不在线")
        );
        assert!(
            texts
                .render_for(&offline, "zh_cn", Some(" "))
                .starts_with("助手")
        );
        assert_eq!(texts.word(TOAST_APPROVED, "zh_cn"), "已批准");
        assert_eq!(texts.word(TOAST_APPROVED, "en_us"), "Approved");
        let overridden = NoticeTexts::new(BTreeMap::from([(
            "en".to_string(),
            BTreeMap::from([(BUTTON_APPROVE.to_string(), "Go".to_string())]),
        )]));
        assert_eq!(overridden.word(BUTTON_APPROVE, "en_us"), "Go");
        assert!(overridden.unknown_keys().is_empty(), "words are known keys");
        let mut decided = Notice::new(NoticeKind::Approval).with_detail("Ship?");
        decided.decided = Some(Decided {
            line: APPROVAL_APPROVED.into(),
            by: "Alice".into(),
        });
        assert_eq!(
            texts.render(&decided, "en"),
            "Your approval is needed:\nShip?\n\nApproved by Alice"
        );
    }

    #[test]
    fn the_product_is_named_from_config_in_both_languages() {
        let overrides = BTreeMap::from([
            (
                "en".to_string(),
                BTreeMap::from([(
                    "agent_offline".to_string(),
                    "{bot} of {product} is away.".to_string(),
                )]),
            ),
            (
                "zh".to_string(),
                BTreeMap::from([(
                    "agent_offline".to_string(),
                    "{product}的{bot}暂时不在线。".to_string(),
                )]),
            ),
        ]);
        let offline = Notice::new(NoticeKind::AgentOffline);
        let named = NoticeTexts::new(overrides.clone()).with_product_name(Some(" Acme Desk "));
        assert_eq!(
            named.render_for(&offline, "en_us", Some("Helper")),
            "Helper of Acme Desk is away."
        );
        assert_eq!(
            named.render_for(&offline, "zh_cn", Some("小助")),
            "Acme Desk的小助暂时不在线。"
        );
        let unnamed = NoticeTexts::new(overrides).with_product_name(Some("  "));
        assert_eq!(
            unnamed.render(&offline, "en"),
            "The assistant of switchboard is away."
        );
        assert_eq!(unnamed.product_name(), DEFAULT_PRODUCT_NAME);
    }

    #[test]
    fn the_interrupted_words_have_both_languages_and_an_override() {
        let texts = NoticeTexts::default();
        assert!(texts.stream_interrupted("en").contains("interrupted"));
        assert!(texts.stream_interrupted("zh-CN").contains("中断"));
        let texts = NoticeTexts::new(BTreeMap::from([(
            "en".to_string(),
            BTreeMap::from([(STREAM_INTERRUPTED.to_string(), " [stopped] ".to_string())]),
        )]));
        assert_eq!(texts.stream_interrupted("en-US"), "[stopped]");
        assert!(texts.unknown_keys().is_empty(), "the key is known");
    }
}
