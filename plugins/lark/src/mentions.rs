//! Mentions (reference §E, lark-protocol §3.2): recognising the bot's own mention and
//! rewriting `@_user_N` placeholders into readable text.
//!
//! The bot is identified by `union_id` first: in multi-bot groups `open_id`s are per-app, so an
//! `open_id` comparison is only used when the installation has no `union_id` on record.

/// A user mention found in a message (`mentions[]` of the event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mention {
    /// Placeholder in the raw text, e.g. `@_user_1`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// The mentioned user's `open_id`, if given.
    pub open_id: Option<String>,
    /// The mentioned user's `union_id`, if given.
    pub union_id: Option<String>,
}

/// Who the bot is, from the installation config. Empty strings mean "unknown".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BotIdentity<'a> {
    /// The bot's `open_id` (per app).
    pub open_id: &'a str,
    /// The bot's `union_id` (stable across the developer's apps); preferred when known.
    pub union_id: &'a str,
}

impl BotIdentity<'_> {
    /// Whether `mention` refers to the bot: by `union_id` when the bot's is known, otherwise by
    /// `open_id`; never when both are unknown.
    pub fn is_mentioned_by(&self, mention: &Mention) -> bool {
        if !self.union_id.is_empty() {
            return mention.union_id.as_deref() == Some(self.union_id);
        }
        if !self.open_id.is_empty() {
            return mention.open_id.as_deref() == Some(self.open_id);
        }
        false
    }

    /// Whether any of `mentions` refers to the bot.
    pub fn is_addressed(&self, mentions: &[Mention]) -> bool {
        mentions.iter().any(|mention| self.is_mentioned_by(mention))
    }
}

/// Placeholder Lark uses for @all; often absent from `mentions[]`.
pub const MENTION_ALL_KEY: &str = "@_all";

/// Rewrites mention placeholders in `text` in one left-to-right scan.
///
/// Keys are tried longest first (`@_user_10` before `@_user_1`); empty keys are ignored. The
/// bot's own mention is removed together with exactly one adjacent space (the one after it, or
/// else one already emitted before it); other mentions become `@Name` (a nameless mention keeps
/// its placeholder); `@_all` becomes `@all`. All other whitespace is preserved.
pub fn resolve_mentions(text: &str, mentions: &[Mention], bot: &BotIdentity<'_>) -> String {
    enum Rewrite<'m> {
        RemoveBot,
        Name(&'m str),
        Keep,
    }
    let mut keys: Vec<(&str, Rewrite<'_>)> = Vec::with_capacity(mentions.len() + 1);
    keys.extend(
        mentions
            .iter()
            .filter(|mention| !mention.key.is_empty())
            .map(|mention| {
                let rewrite = if bot.is_mentioned_by(mention) {
                    Rewrite::RemoveBot
                } else if mention.name.is_empty() {
                    Rewrite::Keep
                } else {
                    Rewrite::Name(&mention.name)
                };
                (mention.key.as_str(), rewrite)
            }),
    );
    if !keys.iter().any(|(key, _)| *key == MENTION_ALL_KEY) {
        keys.push((MENTION_ALL_KEY, Rewrite::Name("all")));
    }
    // Stable sort: for duplicate keys the first mention wins.
    keys.sort_by_key(|(key, _)| std::cmp::Reverse(key.len()));

    // Keys are non-empty, so a key can only start where `text` has one of their first bytes
    // (a UTF-8 leading byte, hence a char boundary): copy everything up to such a byte at once.
    let mut starts = [false; 256];
    for (key, _) in &keys {
        starts[usize::from(key.as_bytes()[0])] = true;
    }

    // Room for each name once (a rewrite may be longer than its placeholder).
    let growth: usize = keys
        .iter()
        .map(|(_, rewrite)| match rewrite {
            Rewrite::Name(name) => name.len() + 1,
            _ => 0,
        })
        .sum();
    let mut out = String::with_capacity(text.len() + growth);
    let mut rest = text;
    'scan: while !rest.is_empty() {
        let Some(at) = rest.bytes().position(|byte| starts[usize::from(byte)]) else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        for (key, rewrite) in &keys {
            if let Some(after) = rest.strip_prefix(key) {
                match rewrite {
                    Rewrite::RemoveBot => {
                        if let Some(after_space) = after.strip_prefix(' ') {
                            rest = after_space;
                        } else {
                            if out.ends_with(' ') {
                                out.pop();
                            }
                            rest = after;
                        }
                    }
                    Rewrite::Name(name) => {
                        out.push('@');
                        out.push_str(name);
                        rest = after;
                    }
                    Rewrite::Keep => {
                        out.push_str(key);
                        rest = after;
                    }
                }
                continue 'scan;
            }
        }
        // No key matches here: keep this character and scan on.
        let ch_len = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..ch_len]);
        rest = &rest[ch_len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mention(key: &str, name: &str, open_id: &str, union_id: &str) -> Mention {
        let some = |value: &str| (!value.is_empty()).then(|| value.to_string());
        Mention {
            key: key.into(),
            name: name.into(),
            open_id: some(open_id),
            union_id: some(union_id),
        }
    }

    #[test]
    fn nameless_mention_keeps_placeholder_and_empty_keys_are_ignored() {
        let mentions = [
            mention("@_user_1", "", "ou_x", ""),
            mention("", "Ghost", "", ""),
        ];
        let bot = BotIdentity::default();
        assert_eq!(
            resolve_mentions("hi @_user_1!", &mentions, &bot),
            "hi @_user_1!"
        );
    }

    #[test]
    fn mention_all_is_rendered() {
        let bot = BotIdentity::default();
        assert_eq!(
            resolve_mentions("@_all stand-up", &[], &bot),
            "@all stand-up"
        );
    }

    #[test]
    fn trailing_bot_mention_takes_the_space_before_it() {
        let mentions = [mention("@_user_1", "Bot", "ou_bot", "")];
        let bot = BotIdentity {
            open_id: "ou_bot",
            union_id: "",
        };
        assert_eq!(
            resolve_mentions("thanks @_user_1", &mentions, &bot),
            "thanks"
        );
        assert_eq!(resolve_mentions("a @_user_1\tb", &mentions, &bot), "a\tb");
    }

    #[test]
    fn unknown_identity_never_matches() {
        let bot = BotIdentity::default();
        assert!(!bot.is_mentioned_by(&mention("@_user_1", "Bot", "", "")));
        assert!(!bot.is_mentioned_by(&mention("@_user_1", "Bot", "ou_bot", "on_bot")));
    }
}
