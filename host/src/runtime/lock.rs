//! `plugins.lock`: the sha256 of every plugin an operator approved, so a strict host refuses a
//! plugin file that nobody pinned or that changed on disk.
//!
//! Owns the lock file's format (TOML, one `[plugins.<name>]` table per plugin with its
//! `sha256` and the `file` it was read from) and the pin check. It does not load plugins: the
//! loader asks [`PluginLock::check`] before registering one. Bundled plugins are part of the
//! binary and are not pinned here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lock file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLock {
    /// Pinned plugins by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, LockEntry>,
}

/// One pinned plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// Lower-case hex sha256 of the `.wasm` file.
    pub sha256: String,
    /// The file it was pinned from (informational).
    pub file: String,
}

/// Why the lock file could not be used, or a plugin is refused by it.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file could not be read or written.
    #[error("cannot {action} the plugin lock file {path}: {source}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid lock file.
    #[error(
        "the plugin lock file {path} is not valid: {message}; regenerate it with `switchboard plugins lock`"
    )]
    Invalid {
        /// The lock file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Strict mode: the plugin is not in the lock file.
    #[error(
        "plugin `{name}` ({file}, sha256 {sha256}) is not pinned in {lock}; review it and run `switchboard plugins lock` to pin it"
    )]
    Unpinned {
        /// The plugin's name.
        name: String,
        /// Its file.
        file: String,
        /// Its digest.
        sha256: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// Strict mode: the plugin's file is not the pinned one.
    #[error(
        "plugin `{name}` ({file}) changed: its sha256 is {found} but {lock} pins {pinned}; review the new file and run `switchboard plugins lock` to pin it"
    )]
    Changed {
        /// The plugin's name.
        name: String,
        /// Its file.
        file: String,
        /// The digest found.
        found: String,
        /// The digest pinned.
        pinned: String,
        /// The lock file.
        lock: PathBuf,
    },
}

impl PluginLock {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<PluginLock, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| LockError::Invalid {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })
    }

    /// Writes the lock to `path` (replacing it).
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let body = toml::to_string_pretty(self).map_err(|e| LockError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let text = format!(
            "# Written by `switchboard plugins lock`: the sha256 of every plugin file this host may load\n\
             # when [plugins] strict = true. Review a plugin before pinning it.\n\n{body}"
        );
        std::fs::write(path, text).map_err(|source| LockError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Pins `name` at `sha256` (read from `file`).
    pub fn pin(&mut self, name: &str, sha256: &str, file: &Path) {
        self.plugins.insert(
            name.to_string(),
            LockEntry {
                sha256: sha256.to_string(),
                file: file.display().to_string(),
            },
        );
    }

    /// Whether plugin `name` read from `file` with digest `sha256` is the pinned one (`lock` is
    /// the lock file's path, for the error).
    pub fn check(
        &self,
        name: &str,
        sha256: &str,
        file: &Path,
        lock: &Path,
    ) -> Result<(), LockError> {
        match self.plugins.get(name) {
            None => Err(LockError::Unpinned {
                name: name.to_string(),
                file: file.display().to_string(),
                sha256: sha256.to_string(),
                lock: lock.to_path_buf(),
            }),
            // Digests are public, so an ordinary comparison is fine here.
            Some(entry) if entry.sha256.eq_ignore_ascii_case(sha256) => Ok(()),
            Some(entry) => Err(LockError::Changed {
                name: name.to_string(),
                file: file.display().to_string(),
                found: sha256.to_string(),
                pinned: entry.sha256.clone(),
                lock: lock.to_path_buf(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_refuse_unpinned_or_changed_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.lock");
        let mut lock = PluginLock::default();
        lock.pin("chat", "ab12", Path::new("plugins.d/chat.wasm"));
        lock.write(&path).unwrap();
        let read = PluginLock::read(&path).unwrap();
        assert_eq!(read, lock);
        let file = Path::new("plugins.d/chat.wasm");
        assert!(read.check("chat", "AB12", file, &path).is_ok());
        let changed = read.check("chat", "cd34", file, &path).unwrap_err();
        assert!(matches!(changed, LockError::Changed { .. }), "{changed}");
        assert!(changed.to_string().contains("cd34") && changed.to_string().contains("ab12"));
        let unpinned = read.check("other", "cd34", file, &path).unwrap_err();
        assert!(matches!(unpinned, LockError::Unpinned { .. }), "{unpinned}");
        std::fs::write(&path, "[plugins.chat]\nsha = 1\n").unwrap();
        assert!(matches!(
            PluginLock::read(&path).unwrap_err(),
            LockError::Invalid { .. }
        ));
    }
}
