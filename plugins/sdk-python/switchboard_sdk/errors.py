"""The deliberate failures a plugin reports to the host.

componentize-py maps a WIT ``result`` error to a raised ``componentize_py_types.Err`` whose
value is the error variant. These helpers build them so plugin code reads as intent
(``raise invalid_input("...")``). They do not decide HTTP statuses or retries: the host does,
from the variant.
"""

from typing import Optional

from componentize_py_types import Err
from wit_world.exports.outbound import DeliveryError
from wit_world.imports.types import (
    PluginError_Fatal,
    PluginError_InvalidInput,
    PluginError_Retryable,
    PluginError_Unauthorized,
)


def invalid_input(message: str) -> Err:
    """The input cannot be understood (malformed JSON, a missing field). Not retried."""
    return Err(PluginError_InvalidInput(message))


def unauthorized(message: str) -> Err:
    """Credentials or signatures are wrong."""
    return Err(PluginError_Unauthorized(message))


def retryable(message: str) -> Err:
    """A transient failure the host may retry."""
    return Err(PluginError_Retryable(message))


def fatal(message: str) -> Err:
    """A permanent failure."""
    return Err(PluginError_Fatal(message))


def delivery_error(
    message: str,
    *,
    retryable: bool,
    code: Optional[int] = None,
    retry_after_ms: Optional[int] = None,
) -> Err:
    """A failed delivery. ``retryable`` only when a later attempt may succeed (rate limits,
    5xx, transport failures); ``retry_after_ms`` when the channel said how long to wait."""
    return Err(
        DeliveryError(
            code=code,
            message=message,
            retryable=retryable,
            retry_after_ms=retry_after_ms,
        )
    )
