//! SHA-256 and AES-256-CBC for webhook signatures and decryption.
//!
//! Inside the host (wasm) both go through the host's `crypto` import, which runs them natively
//! with the CPU's AES and SHA instructions — in the guest the same work took about three
//! quarters of an encrypted webhook's time. Natively (unit tests, the host's native benchmark
//! path) they are RustCrypto's, which is also what the host's import uses, so both builds agree
//! byte for byte.

/// SHA-256 of `parts` concatenated.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    imp::sha256(parts)
}

/// AES-256-CBC decryption with PKCS#7 unpadding; `None` when a size is wrong or the padding is
/// invalid (usually a wrong key).
pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    imp::aes256_cbc_decrypt(key, iv, ciphertext)
}

#[cfg(target_family = "wasm")]
mod imp {
    use switchboard_plugin_sdk::crypto;

    pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
        // The import takes owned lists; the copies are small next to a host call.
        let parts: Vec<Vec<u8>> = parts.iter().map(|part| part.to_vec()).collect();
        crypto::sha256(&parts)
            .try_into()
            .expect("the host's sha256 returns 32 bytes")
    }

    pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        crypto::aes256_cbc_decrypt(key, iv, ciphertext)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
    use sha2::{Digest, Sha256};

    type Aes256CbcDecryptor = cbc::Decryptor<aes::Aes256Dec>;

    pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
            return None;
        }
        Aes256CbcDecryptor::new_from_slices(key, iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .ok()
    }
}
