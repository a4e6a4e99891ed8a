//! The `crypto` capability: SHA-256 and AES-256-CBC decryption in native code (RustCrypto, which
//! uses the CPU's AES-NI and SHA extensions when present).
//!
//! Pure functions of their arguments: no state, no I/O, nothing that identifies the plugin or
//! the installation, so they are linked for every plugin without a grant. Must not grow anything
//! that reaches outside the call (keys, randomness, clocks belong to other capabilities).

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use sha2::{Digest, Sha256};

use super::call::CallState;
use crate::bindings::switchboard::channel::crypto::Host;

type Aes256CbcDecryptor = cbc::Decryptor<aes::Aes256Dec>;

/// SHA-256 of `parts` concatenated.
pub fn sha256(parts: &[impl AsRef<[u8]>]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_ref());
    }
    hasher.finalize().into()
}

/// AES-256-CBC decryption with PKCS#7 unpadding, in place; `None` for a wrong key or IV size, a
/// ciphertext that is empty or not a multiple of the block size, or invalid padding.
pub fn aes256_cbc_decrypt(key: &[u8], iv: &[u8], mut ciphertext: Vec<u8>) -> Option<Vec<u8>> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return None;
    }
    let decryptor = Aes256CbcDecryptor::new_from_slices(key, iv).ok()?;
    let plaintext_len = decryptor
        .decrypt_padded_mut::<Pkcs7>(&mut ciphertext)
        .ok()?
        .len();
    ciphertext.truncate(plaintext_len);
    Some(ciphertext)
}

impl Host for CallState {
    fn sha256(&mut self, parts: Vec<Vec<u8>>) -> Vec<u8> {
        sha256(&parts).to_vec()
    }

    fn aes256_cbc_decrypt(
        &mut self,
        key: Vec<u8>,
        iv: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Option<Vec<u8>> {
        aes256_cbc_decrypt(&key, &iv, ciphertext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::BlockEncryptMut;

    type Aes256CbcEncryptor = cbc::Encryptor<aes::Aes256Enc>;

    #[test]
    fn sha256_of_parts_equals_sha256_of_their_concatenation() {
        let whole = sha256(&[b"1700000000nonceencrypt-key{\"a\":1}".as_slice()]);
        let parts = sha256(&[
            b"1700000000".as_slice(),
            b"nonce",
            b"encrypt-key",
            b"{\"a\":1}",
        ]);
        assert_eq!(whole, parts);
        assert_eq!(
            hex::encode(sha256(&[b"abc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn decrypts_what_was_encrypted_and_refuses_bad_input() {
        let key = sha256(&[b"test key"]);
        let iv = [7u8; 16];
        let plaintext = b"{\"challenge\":\"abc\"} and some more than one block".to_vec();
        let ciphertext = Aes256CbcEncryptor::new_from_slices(&key, &iv)
            .unwrap()
            .encrypt_padded_vec_mut::<Pkcs7>(&plaintext);
        assert_eq!(
            aes256_cbc_decrypt(&key, &iv, ciphertext.clone()).as_deref(),
            Some(plaintext.as_slice())
        );
        let wrong_key = sha256(&[b"wrong key"]);
        assert_eq!(
            aes256_cbc_decrypt(&wrong_key, &iv, ciphertext.clone()),
            None
        );
        assert_eq!(
            aes256_cbc_decrypt(&key[..16], &iv, ciphertext.clone()),
            None
        );
        assert_eq!(aes256_cbc_decrypt(&key, &iv[..8], ciphertext.clone()), None);
        assert_eq!(
            aes256_cbc_decrypt(&key, &iv, ciphertext[..15].to_vec()),
            None
        );
        assert_eq!(aes256_cbc_decrypt(&key, &iv, Vec::new()), None);
    }
}
