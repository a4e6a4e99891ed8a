"""The installation's config values and secrets, read per call from the host.

The host hands them over for the installation the call runs for (``installation`` import);
secrets arrive decrypted and must never be logged or put into errors. Nothing is cached: an
operator's change takes effect on the next call.
"""

from typing import Optional

from wit_world.imports import installation

from .errors import fatal


def installation_id() -> str:
    """The host's id of the installation this call runs for (empty outside an installation)."""
    return installation.id()


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """A config value, or ``default`` when it is not set."""
    value = installation.config(key)
    return default if value is None or value == "" else value


def require_config(key: str) -> str:
    """A config value the plugin cannot work without; a ``fatal`` error naming the key (and
    how to set it) when it is missing."""
    value = config(key)
    if value is None:
        raise fatal(
            f"the installation has no `{key}` config value; set it with "
            f"`switchboard installations add --config-value {key}=...`"
        )
    return value


def secret(key: str) -> Optional[str]:
    """A decrypted secret, or None when it is not set. Never log it."""
    value = installation.secret(key)
    return None if value is None or value == "" else value


def remaining_ms() -> int:
    """Milliseconds left before this call's deadline."""
    return installation.remaining_ms()
