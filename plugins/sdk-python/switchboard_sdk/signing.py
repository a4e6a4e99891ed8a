"""Shared-secret request signatures: HMAC-SHA256 computed natively by the host.

The host's ``crypto`` import computes the MAC in native code (several times faster than in the
guest) and compares in constant time. Never compare a signature, token or digest with ``==``:
it returns at the first differing byte, which leaks how much of a guess was right.
"""

from typing import List, Optional

from wit_world.imports import crypto

_HEX = b"0123456789abcdef"


def hmac_sha256(key: bytes, parts: List[bytes]) -> bytes:
    """HMAC-SHA256 of ``parts`` concatenated, under ``key`` (32 bytes)."""
    return crypto.hmac_sha256(key, parts)


def hmac_sha256_hex(key: bytes, parts: List[bytes]) -> str:
    """Lower-case hex of :func:`hmac_sha256`."""
    return hmac_sha256(key, parts).hex()


def constant_time_eq(a: bytes, b: bytes) -> bool:
    """Whether ``a == b``, in time that depends only on their lengths (host ``crypto``)."""
    return crypto.constant_time_eq(a, b)


def _normalise_hex(presented: str, length: int) -> Optional[bytes]:
    """``presented`` lower-cased into bytes when it is ``length`` hex digits, else None.

    The shape check looks only at the length and the character classes, never at how close the
    value is to the expected one.
    """
    if len(presented) != length:
        return None
    try:
        raw = presented.encode("ascii").lower()
    except UnicodeEncodeError:
        return None
    if any(c not in _HEX for c in raw):
        return None
    return raw


def verify_hmac_sha256_hex(key: bytes, parts: List[bytes], presented: str) -> bool:
    """Whether ``presented`` (64 hex digits, any case) is the HMAC-SHA256 of ``parts`` under
    ``key``. The comparison is constant time."""
    expected = hmac_sha256_hex(key, parts).encode("ascii")
    candidate = _normalise_hex(presented, len(expected))
    if candidate is None:
        return False
    return constant_time_eq(expected, candidate)
