//! Comparing secrets: the one constant-time equality of the host and its plugins.
//!
//! Tokens, signatures and digests must never be compared with `==`: a comparison that stops at
//! the first differing byte answers sooner the fewer leading bytes an attacker got right, and
//! that timing can be measured over a network and used to guess a secret byte by byte. [`eq`]
//! is built on the [`subtle`] crate's `ConstantTimeEq` (its optimisation barrier keeps the
//! compiler from turning the comparison back into an early exit) and compiles both natively and
//! for `wasm32-wasip2`.

use subtle::ConstantTimeEq;

/// Whether `a` and `b` hold the same bytes, in time that does not depend on their contents.
///
/// Every byte of equal-length inputs is examined whatever the outcome, so neither the result's
/// timing nor anything else reveals the position of the first difference.
///
/// Inputs of unequal lengths are unequal: that answer comes at once, without looking at the
/// bytes, so the *length* of the expected value is not hidden (it is no secret for fixed-size
/// values such as SHA-256 digests or fixed-length hex signatures). Where the length of a secret
/// matters, compare digests of both sides instead: hash the presented value and compare the two
/// 32-byte digests.
///
/// ```
/// use switchboard_plugin_sdk::secret;
/// assert!(secret::eq(b"same token", b"same token"));
/// assert!(!secret::eq(b"same token", b"Same token"));
/// assert!(!secret::eq(b"short", b"longer"));
/// ```
#[must_use]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::eq;

    #[test]
    fn equal_inputs_are_equal() {
        assert!(eq(b"", b""));
        assert!(eq(b"x", b"x"));
        let digest = [0xa5u8; 32];
        assert!(eq(&digest, &digest.clone()));
    }

    #[test]
    fn a_difference_anywhere_makes_them_unequal() {
        let base = *b"0123456789abcdef0123456789abcdef";
        for position in 0..base.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut other = base;
                other[position] ^= flip;
                assert!(!eq(&base, &other), "byte {position} ^ {flip:#x}");
                assert!(!eq(&other, &base), "byte {position} ^ {flip:#x}, swapped");
            }
        }
    }

    #[test]
    fn unequal_lengths_are_unequal_even_as_prefixes() {
        assert!(!eq(b"secret", b"secret-and-more"));
        assert!(!eq(b"secret-and-more", b"secret"));
        assert!(!eq(b"", b"x"));
        assert!(!eq(b"x", b""));
    }

    #[test]
    fn case_matters() {
        assert!(!eq(b"ABCDEF", b"abcdef"));
    }
}
