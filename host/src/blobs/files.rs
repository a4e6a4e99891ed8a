//! The blob files: a directory of content-addressed files, `<dir>/<first two hex>/<sha256 hex>`.
//!
//! A file is written to a temporary name in its final directory and renamed into place, so a
//! reader never sees a partial file and a crash leaves at most a stray temporary. Two blobs with
//! the same bytes share one file. Owns the directory only; it must not touch the database.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A failure of the blob directory.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Creating, writing or reading failed.
    #[error("blob file {path}: {source}; check that the [blobs] dir exists and is writable")]
    Io {
        /// The file or directory.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A digest that is not 64 lower-case hex characters (never from this module).
    #[error("not a SHA-256 hex digest: {0:?}")]
    BadDigest(String),
    /// The file's bytes no longer hash to its name (disk corruption or tampering).
    #[error("blob file {path} does not match its SHA-256; it was changed on disk")]
    Corrupt {
        /// The file.
        path: String,
    },
}

/// The blob directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobFiles {
    dir: PathBuf,
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl BlobFiles {
    /// The directory `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> BlobFiles {
        BlobFiles { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the file of `sha256` lives.
    pub fn path_of(&self, sha256: &str) -> Result<PathBuf, FileError> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(FileError::BadDigest(sha256.to_owned()));
        }
        Ok(self.dir.join(&sha256[..2]).join(sha256))
    }

    /// Stores `bytes` (blocking I/O: call from `spawn_blocking`); returns their SHA-256 hex.
    pub fn put(&self, bytes: &[u8]) -> Result<String, FileError> {
        let sha256 = sha256_hex(bytes);
        let path = self.path_of(&sha256)?;
        if path.is_file() {
            return Ok(sha256); // same bytes, stored before
        }
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let temporary = parent.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(&path)(e));
        }
        Ok(sha256)
    }

    /// Deletes the file of `sha256` (blocking I/O); returns whether there was one.
    pub fn remove(&self, sha256: &str) -> Result<bool, FileError> {
        let path = self.path_of(sha256)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every file of the directory last modified before `before` (blocking I/O): the digests of
    /// content files, and the paths of temporaries a crash left behind. A missing directory
    /// has none.
    pub fn older_than(
        &self,
        before: std::time::SystemTime,
    ) -> Result<(Vec<String>, Vec<PathBuf>), FileError> {
        let mut digests = Vec::new();
        let mut temporaries = Vec::new();
        let shards = match std::fs::read_dir(&self.dir) {
            Ok(shards) => shards,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((digests, temporaries));
            }
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for shard in shards {
            let shard = shard.map_err(io(&self.dir))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&shard).map_err(io(&shard))? {
                let entry = entry.map_err(io(&shard))?;
                let path = entry.path();
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(io(&path))?;
                if modified >= before {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") {
                    temporaries.push(path);
                } else if self.path_of(&name).is_ok_and(|p| p == path) {
                    digests.push(name);
                }
            }
        }
        Ok((digests, temporaries))
    }

    /// The bytes stored under `sha256`, checked against it (blocking I/O).
    pub fn get(&self, sha256: &str) -> Result<Vec<u8>, FileError> {
        let path = self.path_of(sha256)?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if sha256_hex(&bytes) != sha256 {
            return Err(FileError::Corrupt {
                path: path.display().to_string(),
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_content_addressed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlobFiles::new(dir.path().join("blobs"));
        let sha = files.put(b"hello").unwrap();
        assert_eq!(sha, sha256_hex(b"hello"));
        assert_eq!(files.put(b"hello").unwrap(), sha, "same bytes, same file");
        assert_eq!(files.get(&sha).unwrap(), b"hello");
        let path = files.path_of(&sha).unwrap();
        assert!(path.starts_with(dir.path().join("blobs").join(&sha[..2])));
        std::fs::write(&path, b"changed").unwrap();
        assert!(matches!(files.get(&sha), Err(FileError::Corrupt { .. })));
        assert!(matches!(
            files.path_of("../../etc/passwd"),
            Err(FileError::BadDigest(_))
        ));
    }
}
