"""The ``{{name}}`` channel plugin: a minimal webhook channel to grow into your own.

Inbound: your system POSTs one signed JSON message per request to
``/hooks/{{name}}/{installation}``::

    X-Switchboard-Timestamp: <unix seconds>
    X-Switchboard-Signature: sha256=<hex HMAC-SHA256(signing_secret, timestamp + "." + body)>

    {"message_id": "m-1", "chat_id": "chat-1", "user_id": "user-1", "user_name": "Ada"?,
     "text": "hello", "sent_at_ms": 1767225600000?}

Outbound: a reply or notice is POSTed as ``{"chat_id", "text", "idempotency_key"}`` to the
installation's ``callback_url``, signed the same way.

componentize-py needs the six classes named as the interfaces; each subclasses the SDK's
``defaults``, which answer "not supported" for every export the manifest does not declare.
Every call is stateless: keep nothing in globals.
"""

from typing import List, Optional, Tuple

from componentize_py_types import Err, Ok
from switchboard_sdk import defaults, jsonutil, settings, signing
from switchboard_sdk.errors import delivery_error, invalid_input
from wit_world.exports import commands, decoder, outbound, transport
from wit_world.imports import clock, http, log, types

TIMESTAMP_HEADER = "x-switchboard-timestamp"
SIGNATURE_HEADER = "x-switchboard-signature"
SIGNATURE_PREFIX = "sha256="


def _header(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def read_message(payload: bytes) -> types.InboundMessage:
    """The wire message -> the host's neutral record; ``invalid-input`` naming the field."""
    obj = jsonutil.parse_object(payload, "the message")
    message_id = jsonutil.require_str(obj, "message_id")
    text = obj.get("text")
    if not isinstance(text, str):
        raise invalid_input("field `text` must be a string")
    sent_at = jsonutil.optional_int(obj, "sent_at_ms")
    return types.InboundMessage(
        event_id=message_id,
        message_id=message_id,
        chat=types.Chat(id=jsonutil.require_str(obj, "chat_id"), kind=types.ChatKind.DIRECT, title=None),
        sender=types.Participant(
            id=jsonutil.require_str(obj, "user_id"),
            display_name=jsonutil.optional_str(obj, "user_name"),
            is_bot=False,
            alt_ids=[],
        ),
        message_type="text",
        body=text,
        command_body=text,
        # A direct chat always addresses the bot.
        addressed_to_bot=True,
        parent_id=None,
        root_id=None,
        thread_id=None,
        create_time_ms=sent_at if sent_at is not None else clock.now_ms(),
        mentions=[],
        attachments=[],
    )


def parse_command(text: str) -> Optional[commands.Command]:
    """``/name args`` -> ``{name, args}`` (name lower-cased, ``@suffix`` dropped)."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    head, _, rest = stripped[1:].partition(" ")
    name = head.split("@", 1)[0].lower()
    return commands.Command(name=name, args=rest.strip()) if name else None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Switchboard-Signature`` value of ``body`` at ``timestamp`` (host crypto)."""
    return SIGNATURE_PREFIX + signing.hmac_sha256_hex(
        secret.encode("utf-8"), [timestamp.encode("ascii"), b".", body]
    )


class Transport(defaults.Transport):
    """Webhooks only."""

    def verify_webhook(self, request: transport.WebhookRequest) -> transport.WebhookVerdict:
        # Never accept a request that cannot be authenticated.
        secret = settings.secret("signing_secret")
        if secret is None:
            raise Err(transport.WebhookRejection_BadToken("the installation has no signing_secret"))
        timestamp = _header(request.headers, TIMESTAMP_HEADER)
        presented = _header(request.headers, SIGNATURE_HEADER)
        if timestamp is None or presented is None:
            raise Err(
                transport.WebhookRejection_BadSignature(
                    "X-Switchboard-Timestamp and X-Switchboard-Signature are required"
                )
            )
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            raise Err(transport.WebhookRejection_BadSignature("X-Switchboard-Timestamp must be Unix seconds"))
        if not presented.startswith(SIGNATURE_PREFIX) or not signing.verify_hmac_sha256_hex(
            secret.encode("utf-8"),
            [timestamp.encode("ascii"), b".", request.body],
            presented[len(SIGNATURE_PREFIX) :],
        ):
            raise Err(transport.WebhookRejection_BadSignature("the signature does not match"))
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
                # The host refuses a timestamp outside its replay window.
                signed_at_ms=int(timestamp) * 1000,
                response=transport.WebhookResponse(
                    status=200, content_type="application/json", body=b'{"ok":true}'
                ),
            )
        )


class Decoder(defaults.Decoder):
    def decode(self, payload: bytes) -> decoder.Decoded:
        return decoder.Decoded_Message(read_message(payload))


class Enricher(defaults.Enricher):
    """Nothing to enrich: the body is kept as sent."""


class Commands(defaults.Commands):
    def parse(self, text: str) -> Optional[commands.Command]:
        return parse_command(text)


class Outbound(defaults.Outbound):
    """Replies and notices as signed JSON POSTs to ``callback_url``."""

    def deliver(self, delivery: outbound.Delivery) -> outbound.Receipt:
        url = settings.config("callback_url")
        secret = settings.secret("signing_secret")
        if url is None or secret is None:
            raise delivery_error("the installation needs callback_url and signing_secret", retryable=False)
        content = delivery.content
        text = content.value if isinstance(content, outbound.Content_Reply) else content.value.text
        body = jsonutil.dumps(
            {"chat_id": delivery.target.chat_id, "text": text, "idempotency_key": delivery.idempotency_key}
        )
        timestamp = str(clock.now_ms() // 1000)
        headers = [
            ("content-type", "application/json"),
            (TIMESTAMP_HEADER, timestamp),
            (SIGNATURE_HEADER, sign(secret, timestamp, body)),
        ]
        if delivery.idempotency_key:
            headers.append(("idempotency-key", delivery.idempotency_key))
        try:
            response = http.send(
                http.Request(method="POST", url=url, headers=headers, body=body, timeout_ms=5000)
            )
        except Err as e:
            retry = isinstance(e.value, (http.Error_Timeout, http.Error_Transport))
            raise delivery_error(f"the callback failed: {e.value}", retryable=retry) from None
        if 200 <= response.status < 300:
            return outbound.Receipt(message_id=None)
        raise delivery_error(
            f"the callback answered HTTP {response.status}",
            retryable=response.status == 429 or response.status >= 500,
            code=response.status,
        )


class Lifecycle(defaults.Lifecycle):
    def on_install(self, webhook_url: str) -> List[Tuple[str, str]]:
        if settings.secret("signing_secret") is None:
            raise invalid_input("a {{name}} installation needs the signing_secret secret")
        log.write(log.Level.INFO, "{{name}} installation ready", [("webhook_url", webhook_url)])
        return []
