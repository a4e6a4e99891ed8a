//! The installation a plugin call runs for: its id, config values and decrypted secrets.

use std::collections::BTreeMap;
use std::fmt;

/// A secret value; never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a decrypted secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The plaintext, for handing to the plugin.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The installation a plugin call runs for: id, config values and decrypted secrets.
#[derive(Debug, Clone, Default)]
pub struct InstallationContext {
    /// Host id of the installation; warm instances are never shared between installations.
    pub id: String,
    /// Non-secret config (the plugin's schema: routing key, bot ids, `base_url`, …).
    pub config: BTreeMap<String, String>,
    /// Decrypted secrets (`app_secret`, `encrypt_key`, `verification_token`, …).
    pub secrets: BTreeMap<String, Secret>,
}

impl InstallationContext {
    /// A context with only an id.
    pub fn new(id: impl Into<String>) -> InstallationContext {
        InstallationContext {
            id: id.into(),
            ..Default::default()
        }
    }
    /// Adds a config value.
    pub fn with_config(mut self, key: &str, value: impl Into<String>) -> Self {
        self.config.insert(key.to_string(), value.into());
        self
    }
    /// Adds a secret.
    pub fn with_secret(mut self, key: &str, value: impl Into<String>) -> Self {
        self.secrets.insert(key.to_string(), Secret::new(value));
        self
    }
}
