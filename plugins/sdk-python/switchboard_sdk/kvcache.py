"""Values cached in the host's ``kv`` with a time-to-live.

Instance memory does not survive between calls (the host recycles instances), so anything
worth keeping - an access token, a name lookup, a "this delivery was sent" record - goes to
``kv``, scoped by the host to (plugin, installation). Needs the manifest's ``kv`` capability.

A ``kv`` failure never fails the caller's work here: a cache that cannot be read is a miss, a
value that cannot be stored is recomputed next time.
"""

import json
from typing import Any, Callable, Optional

from wit_world.imports import kv


def get_json(key: str) -> Optional[Any]:
    """The JSON value stored at ``key``, None when absent, expired, unreadable or kv fails."""
    try:
        raw = kv.get(key)
    except Exception:  # kv.error: the store is unavailable; treat as a miss
        return None
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def set_json(key: str, value: Any, ttl_ms: Optional[int]) -> bool:
    """Stores ``value`` as JSON at ``key`` for ``ttl_ms`` (None: no expiry). Whether it was
    stored (False on a kv error such as a full quota)."""
    try:
        kv.set(key, json.dumps(value, separators=(",", ":")).encode("utf-8"), ttl_ms)
        return True
    except Exception:
        return False


def delete(key: str) -> None:
    """Deletes ``key``, ignoring kv failures."""
    try:
        kv.delete(key)
    except Exception:
        pass


def cached(key: str, ttl_ms: int, compute: Callable[[], Any]) -> Any:
    """The value at ``key`` if cached, else ``compute()`` stored for ``ttl_ms`` and returned.
    ``compute`` may raise; nothing is stored then."""
    hit = get_json(key)
    if hit is not None:
        return hit
    value = compute()
    set_json(key, value, ttl_ms)
    return value
