//! A plugin's installation schema: the config and secret keys an installation of its channel
//! takes, from the manifest's `[installation]` table. The CLI, the admin API and the console
//! check `installations add` against it and `--help` prints it.
//!
//! Owns the key descriptions and the check; must not know any channel's keys (they come from
//! the manifest) and must not touch storage.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// Longest accepted config or secret value (bytes).
pub const MAX_VALUE_BYTES: usize = 4096;

/// One key of the schema.
#[derive(Debug, Clone)]
pub struct SchemaKey {
    /// What the value is and where to find it.
    pub description: String,
    /// Whether an installation must have it.
    pub required: bool,
    /// The pattern a value must match (anchored by the manifest author).
    pub pattern: Option<regex::Regex>,
}

/// The keys an installation of a channel takes.
#[derive(Debug, Clone, Default)]
pub struct InstallationSchema {
    /// The config key whose value is the installation's routing key, when the channel's payloads
    /// carry one.
    pub routing_key: Option<String>,
    /// Non-secret config keys.
    pub config: BTreeMap<String, SchemaKey>,
    /// Secret keys (stored encrypted).
    pub secrets: BTreeMap<String, SchemaKey>,
}

/// The manifest's `[installation]` table as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSchema {
    routing_key: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, RawKey>,
    #[serde(default)]
    secrets: BTreeMap<String, RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    #[serde(default)]
    description: String,
    #[serde(default)]
    required: bool,
    pattern: Option<String>,
}

/// One way a set of values breaks the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A required key has no value.
    Missing {
        /// `config` or `secret`.
        section: &'static str,
        /// The key.
        key: String,
        /// Its description.
        description: String,
    },
    /// The schema does not know the key.
    Unknown {
        /// `config` or `secret`.
        section: &'static str,
        /// The key.
        key: String,
        /// The keys the schema knows in that section.
        known: Vec<String>,
    },
    /// The value does not match the key's pattern, or is too long.
    BadValue {
        /// `config` or `secret`.
        section: &'static str,
        /// The key.
        key: String,
        /// What is expected (secret values are never repeated).
        expected: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Missing {
                section,
                key,
                description,
            } => write!(
                f,
                "{section} `{key}` is required ({description}); pass --{} {key}=VALUE",
                flag(section)
            ),
            Violation::Unknown {
                section,
                key,
                known,
            } => write!(
                f,
                "{section} `{key}` is not a key of this channel; it takes: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
            Violation::BadValue {
                section,
                key,
                expected,
            } => write!(f, "{section} `{key}` {expected}"),
        }
    }
}

/// A manifest `[installation]` table that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("installation.{section}.{key}.pattern: {message}")]
pub struct SchemaError {
    /// `config` or `secrets`.
    pub section: &'static str,
    /// The key.
    pub key: String,
    /// The regex compiler's message.
    pub message: String,
}

impl InstallationSchema {
    /// Compiles the manifest's table.
    pub fn from_raw(raw: RawSchema) -> Result<InstallationSchema, SchemaError> {
        let compile = |section: &'static str, keys: BTreeMap<String, RawKey>| {
            keys.into_iter()
                .map(|(key, raw)| {
                    let pattern = raw
                        .pattern
                        .map(|p| regex::Regex::new(&p))
                        .transpose()
                        .map_err(|e| SchemaError {
                            section,
                            key: key.clone(),
                            message: e.to_string(),
                        })?;
                    Ok((
                        key,
                        SchemaKey {
                            description: raw.description,
                            required: raw.required,
                            pattern,
                        },
                    ))
                })
                .collect::<Result<BTreeMap<_, _>, SchemaError>>()
        };
        Ok(InstallationSchema {
            routing_key: raw.routing_key,
            config: compile("config", raw.config)?,
            secrets: compile("secrets", raw.secrets)?,
        })
    }

    /// Every way `config` and `secrets` break the schema (empty: they fit). Keys the host adds
    /// itself (see [`HOST_CONFIG_KEYS`]) are always accepted.
    pub fn check(
        &self,
        config: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) -> Vec<Violation> {
        let mut violations = Vec::new();
        check_section(
            "config",
            &self.config,
            config,
            true,
            HOST_CONFIG_KEYS,
            &mut violations,
        );
        check_section(
            "secret",
            &self.secrets,
            secrets,
            false,
            &[],
            &mut violations,
        );
        violations
    }

    /// The routing key an installation with `config` gets when none is given explicitly.
    pub fn routing_key_of<'a>(&self, config: &'a BTreeMap<String, String>) -> Option<&'a str> {
        self.routing_key
            .as_ref()
            .and_then(|key| config.get(key))
            .map(String::as_str)
    }

    /// Human-readable lines for `--help` and error messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (section, keys) in [("config", &self.config), ("secret", &self.secrets)] {
            for (key, spec) in keys {
                out.push_str(&format!(
                    "  --{} {key}=…{}  {}{}\n",
                    flag(section),
                    if spec.required { " (required)" } else { "" },
                    spec.description,
                    spec.pattern
                        .as_ref()
                        .map(|p| format!(" [matches {}]", p.as_str()))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(key) = &self.routing_key {
            out.push_str(&format!("  routing key: the value of config `{key}`\n"));
        }
        out
    }
}

/// The CLI flag that sets a key of `section`.
fn flag(section: &str) -> &'static str {
    if section == "config" {
        "config-value"
    } else {
        "secret"
    }
}

/// Config keys every installation may carry whatever its channel: the host reads them itself
/// (`locale` for notices, `connection` to pick a transport the plugin declares, `reply_mode`
/// to stream replies or send them whole).
pub const HOST_CONFIG_KEYS: &[&str] = &["locale", "connection", REPLY_MODE];

/// The host config key that says how replies reach the chat: `stream` (the default: streamed
/// while the run produces them, when the plugin declares `streaming`) or `final` (one message
/// when the run ends).
pub const REPLY_MODE: &str = "reply_mode";

/// The values host config keys accept, where they are a fixed set.
const HOST_CONFIG_VALUES: &[(&str, &[&str])] = &[(REPLY_MODE, &["stream", "final"])];

fn check_section(
    section: &'static str,
    schema: &BTreeMap<String, SchemaKey>,
    values: &BTreeMap<String, String>,
    echo_values: bool,
    always_known: &[&str],
    violations: &mut Vec<Violation>,
) {
    for (key, spec) in schema {
        if spec.required && values.get(key).is_none_or(|v| v.is_empty()) {
            violations.push(Violation::Missing {
                section,
                key: key.clone(),
                description: spec.description.clone(),
            });
        }
    }
    for (key, value) in values {
        let Some(spec) = schema.get(key) else {
            if !always_known.contains(&key.as_str()) {
                violations.push(Violation::Unknown {
                    section,
                    key: key.clone(),
                    known: schema.keys().cloned().collect(),
                });
            } else if let Some((_, accepted)) = HOST_CONFIG_VALUES
                .iter()
                .find(|(name, _)| *name == key.as_str())
                && !accepted.contains(&value.as_str())
            {
                violations.push(Violation::BadValue {
                    section,
                    key: key.clone(),
                    expected: format!("is {value:?}, which is not one of {}", accepted.join(", ")),
                });
            }
            continue;
        };
        if value.len() > MAX_VALUE_BYTES {
            violations.push(Violation::BadValue {
                section,
                key: key.clone(),
                expected: format!("is longer than {MAX_VALUE_BYTES} bytes"),
            });
        } else if let Some(pattern) = &spec.pattern
            && !pattern.is_match(value)
        {
            violations.push(Violation::BadValue {
                section,
                key: key.clone(),
                expected: if echo_values {
                    format!("is {value:?}, which does not match {}", pattern.as_str())
                } else {
                    format!("does not match {}", pattern.as_str())
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> InstallationSchema {
        let raw: RawSchema = toml::from_str(
            r#"
routing_key = "app"
[config.app]
description = "the app"
required = true
pattern = "^a[0-9]+$"
[config.url]
description = "base"
[secrets.token]
description = "bot token"
required = true
pattern = "^t-"
"#,
        )
        .unwrap();
        InstallationSchema::from_raw(raw).unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepts_what_fits_and_names_every_problem_otherwise() {
        let s = schema();
        assert!(
            s.check(
                &map(&[("app", "a1"), ("locale", "en")]),
                &map(&[("token", "t-x")])
            )
            .is_empty()
        );
        assert_eq!(s.routing_key_of(&map(&[("app", "a1")])), Some("a1"));
        let v = s.check(
            &map(&[("app", "b"), ("colour", "x")]),
            &map(&[("token", "nope")]),
        );
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(v.len(), 3, "{text:?}");
        assert!(text[0].contains("\"b\""), "{text:?}");
        assert!(
            text[1].contains("colour") && text[1].contains("app, url"),
            "{text:?}"
        );
        // A secret's value is never echoed.
        assert!(
            text[2].contains("token") && !text[2].contains("nope"),
            "{text:?}"
        );
        let missing = s.check(&map(&[]), &map(&[]));
        assert_eq!(missing.len(), 2);
        assert!(missing[0].to_string().contains("--config-value app=VALUE"));
    }

    #[test]
    fn reply_mode_is_a_host_key_with_two_values() {
        let s = schema();
        for mode in ["stream", "final"] {
            assert!(
                s.check(
                    &map(&[("app", "a1"), ("reply_mode", mode)]),
                    &map(&[("token", "t-x")])
                )
                .is_empty(),
                "{mode}"
            );
        }
        let v = s.check(
            &map(&[("app", "a1"), ("reply_mode", "fast")]),
            &map(&[("token", "t-x")]),
        );
        assert_eq!(v.len(), 1);
        let text = v[0].to_string();
        assert!(
            text.contains("reply_mode") && text.contains("stream, final"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_pattern_is_a_manifest_error() {
        let raw: RawSchema = toml::from_str("[config.x]\npattern = \"(\"").unwrap();
        let err = InstallationSchema::from_raw(raw).unwrap_err();
        assert!(
            err.to_string().contains("installation.config.x.pattern"),
            "{err}"
        );
    }
}
