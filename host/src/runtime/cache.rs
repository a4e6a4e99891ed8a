//! Compile once, then load memory-mapped: the precompiled-artifact cache.
//!
//! Artifacts are keyed by the component's sha256 and the engine's precompile-compatibility hash
//! (a wasmtime upgrade or a config change gives new keys). Deserializing is `unsafe` because
//! wasmtime trusts the bytes, so an artifact is only loaded after its own digest matches the one
//! recorded when it was written. That digest is BLAKE3 (several GB/s, so verifying a 1 MiB
//! artifact costs a fraction of a millisecond); the component key stays sha256, the digest
//! operators see in `plugins inspect`.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPath {
    /// Loaded from a verified precompiled artifact (memory-mapped).
    Cached,
    /// Compiled now (and written to the cache when there is one).
    Compiled,
}

/// The on-disk cache; `None` directory = always compile.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex BLAKE3 of a precompiled artifact (checked before every unsafe deserialize).
fn artifact_digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

impl ArtifactCache {
    /// A cache in `dir` (created on first write), or none.
    pub fn new(dir: Option<PathBuf>) -> ArtifactCache {
        ArtifactCache { dir }
    }

    /// The cache directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn engine_key(engine: &Engine) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Paths of the artifact and its digest for a component.
    pub fn artifact_paths(
        &self,
        engine: &Engine,
        component_sha256: &str,
    ) -> Option<(PathBuf, PathBuf)> {
        let dir = self.dir.as_ref()?;
        let stem = format!("{component_sha256}-{}", Self::engine_key(engine));
        Some((
            dir.join(format!("{stem}.cwasm")),
            dir.join(format!("{stem}.cwasm.blake3")),
        ))
    }

    /// Loads a verified artifact without compiling; `None` when absent or invalid.
    pub fn load_cached(&self, engine: &Engine, component_sha256: &str) -> Option<Component> {
        let (artifact, digest) = self.artifact_paths(engine, component_sha256)?;
        let expected = std::fs::read_to_string(&digest).ok()?;
        let bytes = std::fs::read(&artifact).ok()?;
        if artifact_digest(&bytes) != expected.trim() {
            tracing::warn!(artifact = %artifact.display(), "precompiled artifact does not match its digest; recompiling");
            return None;
        }
        // SAFETY: the artifact was produced by `Engine::precompile_component` for an engine with
        // the same compatibility hash (it is in the file name), and its bytes match the digest
        // written next to it at that time, so it is what wasmtime wrote.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), "cannot load precompiled artifact ({e}); recompiling");
                None
            }
        }
    }

    /// Loads a component: from the cache when possible, else compiles (and caches).
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        component_sha256: &str,
    ) -> wasmtime::Result<(Component, LoadPath)> {
        if let Some(component) = self.load_cached(engine, component_sha256) {
            return Ok((component, LoadPath::Cached));
        }
        let Some((artifact, digest)) = self.artifact_paths(engine, component_sha256) else {
            return Ok((Component::new(engine, wasm)?, LoadPath::Compiled));
        };
        let compiled = engine.precompile_component(wasm)?;
        if let Err(e) = write_atomically(&artifact, &compiled)
            .and_then(|()| write_atomically(&digest, artifact_digest(&compiled).as_bytes()))
        {
            tracing::warn!(dir = %artifact.parent().unwrap_or(Path::new(".")).display(), "cannot write the plugin cache ({e}); plugins will be compiled at every start");
            // SAFETY: `compiled` was produced just now by this engine.
            return Ok((
                unsafe { Component::deserialize(engine, &compiled)? },
                LoadPath::Compiled,
            ));
        }
        // SAFETY: as above; loading the file gives the memory-mapped path its first use.
        let component = unsafe { Component::deserialize_file(engine, &artifact)? };
        Ok((component, LoadPath::Compiled))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id()
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
