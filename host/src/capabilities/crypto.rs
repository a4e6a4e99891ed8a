//! The `crypto` capability: SHA-256, HMAC-SHA256, AES-256-CBC decryption, Ed25519 verification
//! and a constant-time compare in native code (RustCrypto and dalek; RustCrypto
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

/// HMAC-SHA256 of `parts` concatenated under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[impl AsRef<[u8]>]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part.as_ref());
    }
    mac.finalize().into_bytes().into()
}

/// Whether `signature` is `public_key`'s Ed25519 signature of `message` (strict verification:
/// no malleable or small-order signatures). False for wrongly sized keys or signatures.
pub fn ed25519_verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = <[u8; 32]>::try_from(public_key) else {
        return false;
    };
    let Ok(signature) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
        return false;
    };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature))
        .is_ok()
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

    fn hmac_sha256(&mut self, key: Vec<u8>, parts: Vec<Vec<u8>>) -> Vec<u8> {
        hmac_sha256(&key, &parts).to_vec()
    }

    fn ed25519_verify(
        &mut self,
        public_key: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        ed25519_verify(&public_key, &message, &signature)
    }

    fn constant_time_eq(&mut self, a: Vec<u8>, b: Vec<u8>) -> bool {
        switchboard_plugin_sdk::secret::eq(&a, &b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::BlockEncryptMut;

    type Aes256CbcEncryptor = cbc::Encryptor<aes::Aes256Enc>;

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ".as_slice(), b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn ed25519_verifies_rfc_8032_test_1_and_refuses_tampering() {
        let key = hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
            .unwrap();
        let sig = hex::decode(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        )
        .unwrap();
        assert!(ed25519_verify(&key, b"", &sig));
        assert!(!ed25519_verify(&key, b"x", &sig));
        let mut bad = sig.clone();
        bad[0] ^= 1;
        assert!(!ed25519_verify(&key, b"", &bad));
        assert!(!ed25519_verify(&key[..31], b"", &sig));
        assert!(!ed25519_verify(&key, b"", &sig[..63]));
    }

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
