//! Errors of loading plugins and of calling them. A call error names the plugin, the export, the
//! cause and who is to blame, and carries the guest's own panic message when there is one.

use std::fmt;
use std::time::Duration;

/// Who caused a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The plugin: it trapped, looped, panicked or used too much memory.
    Guest,
    /// The host: an import failed or hung, or instances ran out.
    Host,
}

impl fmt::Display for Blame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Blame::Guest => "guest",
            Blame::Host => "host",
        })
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The call ran past its deadline; `phase` says where it was (guest code or a host import).
    Timeout {
        /// The budget that was exceeded.
        budget: Duration,
        /// `guest code` or `host import kv.get`, …
        phase: String,
    },
    /// The guest tried to grow memory past its cap.
    MemoryLimit {
        /// The cap in bytes.
        cap_bytes: u64,
        /// What it asked for.
        requested_bytes: u64,
    },
    /// The guest panicked or aborted.
    Panic,
    /// Any other trap (out-of-bounds access, stack overflow, …), in plain words.
    Trap(String),
    /// Instantiating the plugin failed.
    Instantiate(String),
    /// The host's side failed (an import returned an internal error).
    Host(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Timeout { budget, phase } => {
                write!(
                    f,
                    "deadline of {} ms exceeded in {phase}",
                    budget.as_millis()
                )
            }
            Cause::MemoryLimit {
                cap_bytes,
                requested_bytes,
            } => write!(
                f,
                "memory limit: asked for {} MiB, the cap is {} MiB (raise budgets.memory_mib if this is legitimate)",
                requested_bytes >> 20,
                cap_bytes >> 20
            ),
            Cause::Panic => f.write_str("guest panicked or aborted"),
            Cause::Trap(what) => write!(f, "trap: {what}"),
            Cause::Instantiate(what) => write!(f, "instantiation failed: {what}"),
            Cause::Host(what) => write!(f, "host failure: {what}"),
        }
    }
}

/// A failed plugin call. The instance it ran on has been discarded.
#[derive(Debug, Clone, thiserror::Error)]
pub struct CallError {
    /// Plugin name.
    pub plugin: String,
    /// Export called, e.g. `decoder.decode`.
    pub export: &'static str,
    /// Why.
    pub cause: Cause,
    /// Who is to blame.
    pub blame: Blame,
    /// The guest's panic message or stderr output, when it left one.
    pub guest_message: Option<String>,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin `{}` {} failed ({} at fault): {}",
            self.plugin, self.export, self.blame, self.cause
        )?;
        if let Some(message) = &self.guest_message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the file failed.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is missing or invalid.
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
    /// The component implements a contract version this host does not support.
    #[error(
        "plugin {origin} implements switchboard:channel@{found}, but this host supports \
         switchboard:channel@{supported}: rebuild the plugin with a switchboard-plugin-sdk for \
         contract {supported}, or run a host that supports {found}"
    )]
    UnsupportedContract {
        /// The component.
        origin: String,
        /// The version it was built against.
        found: semver::Version,
        /// What this host implements.
        supported: semver::Version,
    },
    /// The manifest and the component disagree.
    #[error("plugin {origin}: {problem}")]
    Mismatch {
        /// The component.
        origin: String,
        /// What disagrees, and how to fix it.
        problem: String,
    },
    /// Compiling, caching or linking failed.
    #[error("plugin {origin}: {stage} failed: {message}")]
    Wasm {
        /// The component.
        origin: String,
        /// `compile`, `link`, `cache`, ….
        stage: &'static str,
        /// Wasmtime's message.
        message: String,
    },
    /// Two plugins have the same name.
    #[error(
        "plugin name `{name}` is already loaded (from {existing}); plugin names must be unique"
    )]
    Duplicate {
        /// The name.
        name: String,
        /// Where the loaded one came from.
        existing: String,
    },
}
