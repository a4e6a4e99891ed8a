"""The `http` channel: a generic HTTP/JSON channel for an operator's own frontend or system.

Inbound: the operator's system POSTs one signed JSON message per request to
``/hooks/http/{installation}``::

    X-Switchboard-Timestamp: <unix seconds>
    X-Switchboard-Signature: sha256=<hex HMAC-SHA256(signing_secret, timestamp + "." + body)>

    {"message_id": "m-1", "chat_id": "c-1", "chat_type": "direct" | "group" | "channel",
     "user": {"id": "u-1", "name": "Ada"}, "text": "hello",
     "thread_id": "t-1"?, "addressed_to_bot": true?, "sent_at_ms": 1700000000000?}

A missing or wrong signature is refused (401, nothing stored); the host refuses a timestamp
outside its replay window (``[ingest] webhook_max_skew_s``, 5 minutes by default); an
authenticated body that is not such a message is 400.

Outbound: replies and notices are POSTed as JSON to the installation's ``callback_url``, signed
the same way with ``callback_secret`` (or ``signing_secret`` when no callback secret is set), the
delivery's idempotency key in the body and the ``Idempotency-Key`` header.

This module maps the wire format to the contract's neutral records; it owns no state between
calls (the "already delivered" records live in ``kv``).
"""

from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from switchboard_sdk import defaults, jsonutil, kvcache, settings, signing
from switchboard_sdk.errors import delivery_error, invalid_input
from wit_world.exports import commands, decoder, outbound, transport
from wit_world.imports import clock, http, log, types

#: Header names (compared case-insensitively).
TIMESTAMP_HEADER = "x-switchboard-timestamp"
SIGNATURE_HEADER = "x-switchboard-signature"
SIGNATURE_PREFIX = "sha256="
#: How long a delivered idempotency key is remembered (a retry after an unknown outcome comes
#: within the host's backoff budget, far less than this).
DELIVERED_TTL_MS = 7 * 24 * 3600 * 1000
#: The callback request's own timeout (the host clamps it to the call's deadline).
CALLBACK_TIMEOUT_MS = 10_000

CHAT_KINDS = {
    "direct": types.ChatKind.DIRECT,
    "group": types.ChatKind.GROUP,
    "channel": types.ChatKind.CHANNEL,
}
KIND_NAMES = {v: k for k, v in CHAT_KINDS.items()}


def _header(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _json_response(status: int, body: Dict[str, Any]) -> transport.WebhookResponse:
    return transport.WebhookResponse(
        status=status, content_type="application/json", body=jsonutil.dumps(body)
    )


def read_message(payload: bytes) -> types.InboundMessage:
    """The wire message → the neutral record; ``invalid-input`` naming the field otherwise."""
    obj = jsonutil.parse_object(payload, "the message")
    message_id = jsonutil.require_str(obj, "message_id")
    chat_id = jsonutil.require_str(obj, "chat_id")
    chat_type = jsonutil.require_str(obj, "chat_type")
    kind = CHAT_KINDS.get(chat_type)
    if kind is None:
        raise invalid_input("field `chat_type` must be \"direct\", \"group\" or \"channel\"")
    user = jsonutil.require_object(obj, "user")
    user_id = jsonutil.require_str(user, "id", "user.")
    user_name = jsonutil.optional_str(user, "name", "user.")
    text = obj.get("text")
    if not isinstance(text, str):
        raise invalid_input("field `text` must be a string")
    thread_id = jsonutil.optional_str(obj, "thread_id")
    # Direct chats always address the bot; elsewhere the sender's system says so (default:
    # it posts only what is meant for the bot).
    addressed = kind == types.ChatKind.DIRECT or jsonutil.optional_bool(
        obj, "addressed_to_bot", True
    )
    sent_at = jsonutil.optional_int(obj, "sent_at_ms")
    return types.InboundMessage(
        event_id=message_id,
        message_id=message_id,
        chat=types.Chat(id=chat_id, kind=kind, title=jsonutil.optional_str(obj, "chat_title")),
        sender=types.Participant(id=user_id, display_name=user_name, is_bot=False, alt_ids=[]),
        message_type="text",
        body=text,
        command_body=text,
        addressed_to_bot=addressed,
        parent_id=jsonutil.optional_str(obj, "reply_to"),
        root_id=None,
        thread_id=thread_id,
        create_time_ms=sent_at if sent_at is not None else clock.now_ms(),
        mentions=[],
        attachments=[],
    )


def parse_command(text: str) -> Optional[commands.Command]:
    """``/name args`` → ``{name, args}`` (name lower-cased, ``@suffix`` dropped); None for
    plain text."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    head, _, rest = stripped[1:].partition(" ")
    first_line, newline, more = head.partition("\n")
    if newline:
        rest = more + (" " + rest if rest else "")
    name = first_line.split("@", 1)[0].lower()
    if not name:
        return None
    return commands.Command(name=name, args=rest.strip())


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Switchboard-Signature`` value of ``body`` at ``timestamp``."""
    return SIGNATURE_PREFIX + signing.hmac_sha256_hex(
        secret.encode("utf-8"), [timestamp.encode("ascii"), b".", body]
    )


class Transport(defaults.Transport):
    """Webhooks only: ``verify_webhook``; the URL's installation is authoritative, so no
    routing key (the shared ``/hooks/http`` URL is answered 400 naming the installation URL)."""

    def verify_webhook(self, request: transport.WebhookRequest) -> transport.WebhookVerdict:
        secret = settings.secret("signing_secret")
        if secret is None:
            raise Err(
                transport.WebhookRejection_BadToken(
                    "the installation has no signing_secret; add one to accept messages"
                )
            )
        if request.method != "POST" or request.path != "":
            raise Err(
                transport.WebhookRejection_Malformed(
                    "POST the message to /hooks/http/{installation} itself"
                )
            )
        timestamp = _header(request.headers, TIMESTAMP_HEADER)
        presented = _header(request.headers, SIGNATURE_HEADER)
        if timestamp is None or presented is None:
            raise Err(
                transport.WebhookRejection_BadSignature(
                    "X-Switchboard-Timestamp and X-Switchboard-Signature are required"
                )
            )
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            raise Err(
                transport.WebhookRejection_BadSignature(
                    "X-Switchboard-Timestamp must be Unix seconds"
                )
            )
        if not presented.startswith(SIGNATURE_PREFIX) or not signing.verify_hmac_sha256_hex(
            secret.encode("utf-8"),
            [timestamp.encode("ascii"), b".", request.body],
            presented[len(SIGNATURE_PREFIX) :],
        ):
            raise Err(
                transport.WebhookRejection_BadSignature(
                    "the signature does not match; sign timestamp + \".\" + body with the "
                    "installation's signing_secret (HMAC-SHA256, hex, prefixed sha256=)"
                )
            )
        # Authenticated from here on: a body that is not a message is the sender's bug (400).
        try:
            message = read_message(request.body)
        except Err as e:
            raise Err(transport.WebhookRejection_Malformed(e.value.value)) from None
        reading = transport.EventReading(
            routing_key=None,
            decoded=Ok(decoder.Decoded_Message(message)),
            command=parse_command(message.command_body),
        )
        return transport.WebhookVerdict_Events(
            transport.WebhookEvents(
                payloads=[request.body],
                readings=[reading],
                signed_at_ms=int(timestamp) * 1000,
                response=_json_response(200, {"ok": True}),
            )
        )


class Decoder(defaults.Decoder):
    def decode(self, payload: bytes) -> decoder.Decoded:
        return decoder.Decoded_Message(read_message(payload))


class Enricher(defaults.Enricher):
    """Nothing to enrich: the sender's system sends the whole text."""


class Commands(defaults.Commands):
    def parse(self, text: str) -> Optional[commands.Command]:
        return parse_command(text)


def _callback_body(delivery: outbound.Delivery) -> Dict[str, Any]:
    target = delivery.target
    body: Dict[str, Any] = {
        "idempotency_key": delivery.idempotency_key,
        "session_id": target.session_id,
        "chat_id": target.chat_id,
        "chat_type": KIND_NAMES.get(target.chat_kind, "direct"),
        "thread_id": target.thread_id,
        "reply_to": target.reply_to,
    }
    content = delivery.content
    if isinstance(content, outbound.Content_Reply):
        body["type"] = "reply"
        body["text"] = content.value
    else:
        notice = content.value
        body["type"] = "notice"
        body["text"] = notice.text
        body["notice"] = {
            "kind": notice.kind.name.lower().replace("_", "-"),
            "locale": notice.locale,
            "link": notice.link,
            "reference": notice.reference,
            "recipient": notice.recipient,
        }
    return body


def _retry_after_ms(headers: List[Tuple[str, str]]) -> Optional[int]:
    value = _header(headers, "retry-after")
    if value is not None and value.strip().isdigit():
        return min(int(value.strip()), 3600) * 1000
    return None


class Outbound(defaults.Outbound):
    """Replies and notices as signed JSON POSTs to ``callback_url``; no typing, streaming or
    attachments."""

    def deliver(self, delivery: outbound.Delivery) -> outbound.Receipt:
        url = settings.config("callback_url")
        if url is None:
            raise delivery_error(
                "the installation has no callback_url; set it to where replies are POSTed",
                retryable=False,
            )
        secret = settings.secret("callback_secret") or settings.secret("signing_secret")
        if secret is None:
            raise delivery_error(
                "the installation has neither callback_secret nor signing_secret to sign "
                "callbacks with",
                retryable=False,
            )
        key = delivery.idempotency_key
        record = f"delivered:{key}" if key else None
        if record is not None:
            seen = kvcache.get_json(record)
            if isinstance(seen, dict):
                # Sent before (a retry after an unknown outcome): do not post twice.
                return outbound.Receipt(message_id=seen.get("message_id"))
        body = jsonutil.dumps(_callback_body(delivery))
        timestamp = str(clock.now_ms() // 1000)
        headers = [
            ("content-type", "application/json"),
            ("x-switchboard-timestamp", timestamp),
            ("x-switchboard-signature", sign(secret, timestamp, body)),
        ]
        if key:
            headers.append(("idempotency-key", key))
        try:
            response = http.send(
                http.Request(
                    method="POST", url=url, headers=headers, body=body, timeout_ms=CALLBACK_TIMEOUT_MS
                )
            )
        except Err as e:
            raise _http_failure(e.value, url) from None
        status = response.status
        if 200 <= status < 300:
            message_id = _message_id(response.body)
            if record is not None:
                kvcache.set_json(record, {"message_id": message_id}, DELIVERED_TTL_MS)
            return outbound.Receipt(message_id=message_id)
        retry = status == 429 or status == 408 or status >= 500
        raise delivery_error(
            f"the callback answered HTTP {status}",
            retryable=retry,
            code=status,
            retry_after_ms=_retry_after_ms(response.headers) if retry else None,
        )


def _message_id(body: bytes) -> Optional[str]:
    """The receiver's id of the message, when it answered ``{"message_id": "..."}``."""
    if not body:
        return None
    try:
        obj = jsonutil.parse_object(body, "the callback's answer")
    except Err:
        return None
    value = obj.get("message_id")
    return value if isinstance(value, str) and value else None


def _http_failure(error: http.Error, url: str) -> Err:
    if isinstance(error, http.Error_NotAllowed):
        parts = urlsplit(url)
        return delivery_error(
            f"callback_url's origin {parts.scheme}://{parts.netloc} is not reachable by this "
            f"plugin ({error.value}); add it to capabilities.http in http.toml, or map "
            "https://callback.switchboard.invalid to it in [plugins.base_urls]",
            retryable=False,
        )
    if isinstance(error, http.Error_Timeout):
        return delivery_error("the callback timed out", retryable=True)
    if isinstance(error, http.Error_TooLarge):
        return delivery_error(f"the callback body is over the host's cap of {error.value} bytes", retryable=False)
    if isinstance(error, http.Error_InvalidRequest):
        return delivery_error(f"callback_url cannot be requested: {error.value}", retryable=False)
    return delivery_error(f"the callback could not be reached: {error.value}", retryable=True)


class Lifecycle(defaults.Lifecycle):
    """Checks that the installation can sign; registers nothing (the operator gives the
    installation's URL to their system)."""

    def on_install(self, webhook_url: str) -> List[Tuple[str, str]]:
        if settings.secret("signing_secret") is None:
            raise invalid_input("an http installation needs the signing_secret secret")
        settings.require_config("callback_url")
        log.write(
            log.Level.INFO,
            "http installation ready",
            [("installation", settings.installation_id()), ("webhook_url", webhook_url)],
        )
        return []
