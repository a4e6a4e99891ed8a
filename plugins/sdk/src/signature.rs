//! Shared-secret request signatures: HMAC-SHA256 through the host's native `crypto`, checked in
//! constant time.
//!
//! In a wasm build the digest is computed by the host (`crypto.hmac-sha256`, several times
//! faster than in the guest); in a native build (a plugin's `cargo test`) by RustCrypto, with the
//! same result. A presented signature is compared with [`crate::secret::eq`], never with `==`.
//!
//! ```
//! use switchboard_plugin_sdk::signature;
//! let key = b"signing-secret";
//! let parts: [&[u8]; 3] = [b"1700000000", b".", b"{\"text\":\"hi\"}"];
//! let hex = signature::hmac_sha256_hex(key, &parts);
//! assert!(signature::verify_hmac_sha256_hex(key, &parts, &hex));
//! assert!(signature::verify_hmac_sha256_hex(key, &parts, &hex.to_uppercase()));
//! assert!(!signature::verify_hmac_sha256_hex(b"other", &parts, &hex));
//! ```

/// HMAC-SHA256 of `parts` concatenated, under `key`.
#[must_use]
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    #[cfg(target_family = "wasm")]
    {
        let owned: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let digest = crate::crypto::hmac_sha256(key, &owned);
        let mut out = [0u8; 32];
        // The host always answers 32 bytes; anything else leaves zeros, which verify nothing.
        if digest.len() == out.len() {
            out.copy_from_slice(&digest);
        }
        out
    }
    #[cfg(not(target_family = "wasm"))]
    {
        use hmac::{Hmac, Mac};
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// [`hmac_sha256`] as 64 lowercase hex digits (what most channels put in a header).
#[must_use]
pub fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    hex_lower(&hmac_sha256(key, parts))
}

/// Whether `presented` (hex, either case, no prefix) is the HMAC-SHA256 of `parts` under `key`.
///
/// The presented value is lowercased into a fixed 64-byte buffer and compared with the expected
/// hex in constant time; a value of another length is refused at once (the length of a SHA-256
/// hex digest is no secret).
#[must_use]
pub fn verify_hmac_sha256_hex(key: &[u8], parts: &[&[u8]], presented: &str) -> bool {
    let presented = presented.as_bytes();
    if presented.len() != 64 {
        return false;
    }
    let mut lowered = [0u8; 64];
    for (out, byte) in lowered.iter_mut().zip(presented) {
        *out = byte.to_ascii_lowercase();
    }
    let expected = hmac_sha256_hex(key, parts);
    crate::secret::eq(&lowered, expected.as_bytes())
}

/// Lowercase hex of `bytes`.
#[must_use]
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2.
    #[test]
    fn matches_the_rfc_4231_vector() {
        let parts: [&[u8]; 2] = [b"what do ya want ", b"for nothing?"];
        assert_eq!(
            hmac_sha256_hex(b"Jefe", &parts),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_changed_body_key_or_digit_fails() {
        let parts: [&[u8]; 1] = [b"body"];
        let good = hmac_sha256_hex(b"k", &parts);
        assert!(verify_hmac_sha256_hex(b"k", &parts, &good));
        assert!(!verify_hmac_sha256_hex(b"k", &[b"Body"], &good));
        assert!(!verify_hmac_sha256_hex(b"K", &parts, &good));
        let mut flipped = good.clone().into_bytes();
        flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
        assert!(!verify_hmac_sha256_hex(
            b"k",
            &parts,
            &String::from_utf8(flipped).unwrap()
        ));
        assert!(!verify_hmac_sha256_hex(b"k", &parts, &good[..63]));
        assert!(!verify_hmac_sha256_hex(b"k", &parts, ""));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex_lower(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(
            hex_lower(&[0x00, 0xab, 0xff]),
            hex::encode([0x00, 0xab, 0xff])
        );
    }
}
