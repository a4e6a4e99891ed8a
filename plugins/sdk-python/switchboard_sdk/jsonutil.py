"""JSON parsing for event payloads, with failures that say what is wrong.

Every failure is raised as an ``invalid-input`` plugin error (``errors.invalid_input``) whose
message names the field and what was expected, so the host's audit and the webhook's 400 answer
tell the sender what to fix. Values are never echoed back (they may hold user data).
"""

import json
from typing import Any, Dict, Optional

from .errors import invalid_input

#: Largest payload parsed (bytes); the host also caps request bodies.
MAX_PAYLOAD_BYTES = 1 << 20


def parse_object(payload: bytes, what: str = "payload") -> Dict[str, Any]:
    """Parses ``payload`` (UTF-8 JSON) into a JSON object, or raises ``invalid-input``."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise invalid_input(f"{what} is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES} are read")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid_input(f"{what} is not UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise invalid_input(
            f"{what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(value, dict):
        raise invalid_input(f"{what} must be a JSON object, not {_kind(value)}")
    return value


def require_str(obj: Dict[str, Any], key: str, path: str = "") -> str:
    """The non-empty string at ``obj[key]``, or ``invalid-input`` naming ``path + key``."""
    value = obj.get(key)
    if not isinstance(value, str) or value == "":
        found = "missing" if key not in obj else f"{_kind(value)}"
        raise invalid_input(f"field `{path}{key}` must be a non-empty string ({found})")
    return value


def optional_str(obj: Dict[str, Any], key: str, path: str = "") -> Optional[str]:
    """The string at ``obj[key]``, None when absent, null or empty; ``invalid-input`` for
    another type."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid_input(f"field `{path}{key}` must be a string, not {_kind(value)}")
    return value


def optional_bool(obj: Dict[str, Any], key: str, default: bool, path: str = "") -> bool:
    """The boolean at ``obj[key]``, ``default`` when absent or null."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid_input(f"field `{path}{key}` must be true or false, not {_kind(value)}")
    return value


def optional_int(obj: Dict[str, Any], key: str, path: str = "") -> Optional[int]:
    """The integer at ``obj[key]``, None when absent or null."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_input(f"field `{path}{key}` must be an integer, not {_kind(value)}")
    return value


def require_object(obj: Dict[str, Any], key: str, path: str = "") -> Dict[str, Any]:
    """The JSON object at ``obj[key]``, or ``invalid-input``."""
    value = obj.get(key)
    if not isinstance(value, dict):
        found = "missing" if key not in obj else _kind(value)
        raise invalid_input(f"field `{path}{key}` must be an object ({found})")
    return value


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
