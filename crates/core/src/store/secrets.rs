//! Encryption of installation secrets at rest (SPEC §8).
//!
//! An installation's secrets (app secret, encrypt key, verification token, …) are serialised as a
//! JSON object and sealed with XChaCha20-Poly1305 under the operator's 32-byte key. The stored
//! value is `nonce (24 bytes) || ciphertext || tag (16 bytes)`; the nonce is random per
//! encryption, which is safe with the 192-bit nonces of XChaCha. The ciphertext is bound to the
//! installation id (associated data), so a sealed value copied onto another installation's row
//! does not decrypt.
//!
//! Values sealed since key ids exist start with `SBK1` and the key's id (the first 4 bytes of the
//! SHA-256 of the key, shown as 8 hex digits): `SBK1 || key id || nonce || ciphertext || tag`. A
//! value sealed under another key is then refused naming both ids, and `switchboard secrets
//! rotate` ([`InstallationStore::reseal_all`](super::InstallationStore::reseal_all)) re-seals
//! every installation under a new key in one transaction. Values sealed before (no prefix) are
//! still opened.
//!
//! The key never appears in `Debug` output or error messages (its id does: it reveals nothing).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length of an XChaCha20-Poly1305 nonce, stored in front of the ciphertext.
const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag at the end of the ciphertext.
const TAG_LEN: usize = 16;
/// Length of the key in bytes.
const KEY_LEN: usize = 32;
/// Domain separation for the associated data, so these ciphertexts serve no other purpose.
const AAD_PREFIX: &[u8] = b"switchboard.installation-secrets.v1\0";
/// The first bytes of a value sealed with its key id.
const KEYED_MAGIC: &[u8; 4] = b"SBK1";
/// Bytes of the key id in a sealed value.
const KEY_ID_LEN: usize = 4;

/// Why a key could not be used or a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key text is not 32 bytes in hex or base64.
    #[error(
        "secret key must be 32 bytes, hex (64 digits) or base64; {problem}; generate one with \
         `switchboard keygen`"
    )]
    BadKey {
        /// What was wrong with the given text (never the text itself).
        problem: String,
    },
    /// Authentication failed: the key differs from the one the value was sealed with, or the
    /// stored bytes were altered.
    #[error(
        "cannot decrypt the secrets of installation {installation}: wrong secret key or \
         corrupted data; use the key the secrets were stored with"
    )]
    WrongKey {
        /// The installation whose secrets failed to open.
        installation: String,
    },
    /// The value was sealed under another key than the configured one.
    #[error(
        "the secrets of installation {installation} are sealed with key {sealed_with}, but the \
         configured key is {configured}; configure the key with id {sealed_with} (after \
         `switchboard secrets rotate`, the new key)"
    )]
    OtherKey {
        /// The installation whose secrets failed to open.
        installation: String,
        /// The id of the key they are sealed with.
        sealed_with: String,
        /// The id of the configured key.
        configured: String,
    },
    /// The stored value is too short to be a sealed value, or its plaintext is not a JSON
    /// object of strings.
    #[error("the stored secrets of installation {installation} are malformed: {problem}")]
    Malformed {
        /// The installation whose secrets are malformed.
        installation: String,
        /// What is wrong.
        problem: String,
    },
}

/// Seals and opens installation secrets with the operator's key.
#[derive(Clone)]
pub struct SecretCipher {
    cipher: XChaCha20Poly1305,
    /// The first bytes of the key's SHA-256.
    key_id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretCipher(***)")
    }
}

impl SecretCipher {
    /// A cipher for a raw 32-byte key.
    pub fn from_key_bytes(key: &[u8; KEY_LEN]) -> SecretCipher {
        let digest = Sha256::digest(key);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&digest[..KEY_ID_LEN]);
        SecretCipher {
            cipher: XChaCha20Poly1305::new(Key::from_slice(key)),
            key_id,
        }
    }

    /// A cipher for a key written as 64 hex digits or as base64 (standard or URL-safe alphabet,
    /// padding optional) of 32 bytes. Surrounding whitespace is ignored.
    pub fn from_key_str(text: &str) -> Result<SecretCipher, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::BadKey {
                problem: "the key is empty".into(),
            });
        }
        let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| SecretError::BadKey {
                problem: "the hex digits do not decode".into(),
            })?
        } else {
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or_else(|| SecretError::BadKey {
                    problem: "the text is neither 64 hex digits nor valid base64".into(),
                })?
        };
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::BadKey {
                problem: format!("it decodes to {} bytes", bytes.len()),
            })?;
        Ok(SecretCipher::from_key_bytes(&key))
    }

    /// The key's id: the first 8 hex digits of its SHA-256. Sealed values carry it, so a
    /// value sealed under another key is refused naming both ids.
    pub fn key_id(&self) -> String {
        hex::encode(self.key_id)
    }

    /// A fresh random key as 64 hex digits, suitable for [`SecretCipher::from_key_str`].
    pub fn generate_key_hex() -> String {
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        hex::encode(key)
    }

    /// Seals `secrets` (as a JSON object) for the installation `installation_id`.
    pub fn encrypt(&self, installation_id: &str, secrets: &BTreeMap<String, String>) -> Vec<u8> {
        // Serialising a map of strings cannot fail.
        let plaintext = serde_json::to_vec(secrets).unwrap_or_else(|_| b"{}".to_vec());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(installation_id);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            // Only fails for plaintexts beyond the cipher's ~256 GiB limit.
            .expect("XChaCha20-Poly1305 encryption of a small value");
        let mut out = Vec::with_capacity(KEYED_MAGIC.len() + KEY_ID_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(KEYED_MAGIC);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed by [`SecretCipher::encrypt`] for `installation_id`.
    ///
    /// A different key (or installation id, or altered bytes) gives [`SecretError::WrongKey`].
    pub fn decrypt(
        &self,
        installation_id: &str,
        sealed: &[u8],
    ) -> Result<BTreeMap<String, String>, SecretError> {
        let keyed = KEYED_MAGIC.len() + KEY_ID_LEN;
        if sealed.len() >= keyed + NONCE_LEN + TAG_LEN && sealed.starts_with(KEYED_MAGIC) {
            let key_id = &sealed[KEYED_MAGIC.len()..keyed];
            if key_id == self.key_id {
                return self.open(installation_id, &sealed[keyed..]);
            }
            // A value sealed before key ids whose random nonce happens to start with the
            // magic (one in 2^32) is still opened; anything else names both keys.
            return self
                .open(installation_id, sealed)
                .map_err(|_| SecretError::OtherKey {
                    installation: installation_id.to_owned(),
                    sealed_with: hex::encode(key_id),
                    configured: self.key_id(),
                });
        }
        self.open(installation_id, sealed)
    }

    /// Opens `nonce || ciphertext || tag`.
    fn open(
        &self,
        installation_id: &str,
        sealed: &[u8],
    ) -> Result<BTreeMap<String, String>, SecretError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretError::Malformed {
                installation: installation_id.to_owned(),
                problem: format!("{} bytes is too short for a sealed value", sealed.len()),
            });
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let aad = associated_data(installation_id);
        let plaintext = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::WrongKey {
                installation: installation_id.to_owned(),
            })?;
        serde_json::from_slice(&plaintext).map_err(|e| SecretError::Malformed {
            installation: installation_id.to_owned(),
            problem: format!("not a JSON object of strings: {e}"),
        })
    }
}

fn associated_data(installation_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + installation_id.len());
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(installation_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app_secret".to_owned(), "s3cr3t".to_owned()),
            ("encrypt_key".to_owned(), "k".to_owned()),
        ])
    }

    #[test]
    fn round_trip_and_wrong_key() {
        let key = SecretCipher::generate_key_hex();
        assert_eq!(key.len(), 64);
        let cipher = SecretCipher::from_key_str(&key).unwrap();
        let sealed = cipher.encrypt("inst-1", &sample());
        assert!(!sealed.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(cipher.decrypt("inst-1", &sealed).unwrap(), sample());
        // Bound to the installation.
        assert!(matches!(
            cipher.decrypt("inst-2", &sealed),
            Err(SecretError::WrongKey { .. })
        ));
        let other = SecretCipher::from_key_str(&SecretCipher::generate_key_hex()).unwrap();
        let err = other.decrypt("inst-1", &sealed).unwrap_err();
        assert!(
            matches!(&err, SecretError::OtherKey { sealed_with, configured, .. }
                if *sealed_with == cipher.key_id() && *configured == other.key_id()),
            "{err}"
        );
        assert!(err.to_string().contains(&cipher.key_id()), "{err}");
        // A keyed value whose body was altered is still a wrong key / corrupt value.
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(matches!(
            cipher.decrypt("inst-1", &altered),
            Err(SecretError::WrongKey { .. })
        ));
        assert!(matches!(
            cipher.decrypt("inst-1", &sealed[..10]),
            Err(SecretError::Malformed { .. })
        ));
    }

    #[test]
    fn sealed_values_carry_the_key_id_and_old_values_still_open() {
        let cipher = SecretCipher::from_key_bytes(&[9u8; 32]);
        let id = cipher.key_id();
        assert_eq!(id.len(), 8);
        assert_eq!(id, hex::encode(&Sha256::digest([9u8; 32])[..4]));
        assert_ne!(id, SecretCipher::from_key_bytes(&[8u8; 32]).key_id());
        let sealed = cipher.encrypt("inst-1", &sample());
        assert_eq!(&sealed[..4], b"SBK1");
        assert_eq!(hex::encode(&sealed[4..8]), id);
        // A value sealed before key ids: nonce || ciphertext || tag, no prefix.
        let legacy = &sealed[8..];
        assert_eq!(cipher.decrypt("inst-1", legacy).unwrap(), sample());
        assert!(matches!(
            SecretCipher::from_key_bytes(&[8u8; 32]).decrypt("inst-1", legacy),
            Err(SecretError::WrongKey { .. })
        ));
    }

    #[test]
    fn key_formats() {
        let raw = [7u8; 32];
        let hex_key = hex::encode(raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let sealed = SecretCipher::from_key_bytes(&raw).encrypt("i", &sample());
        for text in [hex_key.as_str(), &b64, &b64url, &format!("  {hex_key}\n")] {
            let cipher = SecretCipher::from_key_str(text).unwrap();
            assert_eq!(cipher.decrypt("i", &sealed).unwrap(), sample(), "{text}");
        }
        for bad in ["", "abc", &hex::encode([1u8; 16]), "not base64 !!"] {
            let err = SecretCipher::from_key_str(bad).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("32 bytes") && text.contains("switchboard keygen"),
                "{text}"
            );
        }
        assert!(
            !format!("{:?}", SecretCipher::from_key_bytes(&raw)).contains(&hex_key[..8]),
            "Debug must not show the key"
        );
    }
}
