"""Base classes for the six exports, answering "not supported" for whatever a channel does not
serve.

Every export exists in every plugin, but the host calls only what the manifest declares
(``transports`` and ``[features]``). componentize-py needs a class per exported interface,
named as the interface (``Transport``, ``Decoder``, ``Enricher``, ``Commands``, ``Outbound``,
``Lifecycle``) in the app module, with every function implemented. Subclass these and override
what your manifest declares::

    from switchboard_sdk import defaults

    class Transport(defaults.Transport):
        def verify_webhook(self, request): ...

    class Enricher(defaults.Enricher):  # nothing to enrich
        pass

The answers here are the ones the host handles gracefully: terminal connect errors, a
``bad-token`` webhook rejection (never accepting an unauthenticated request), non-retryable
delivery errors, no routing key, no command, the body unchanged.
"""

from typing import List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import commands, enricher, outbound, transport
from wit_world.imports import http, types

from .errors import delivery_error, fatal


def _not_served(what: str) -> str:
    return f"this plugin does not serve {what}; its manifest does not declare it"


class Transport(exports.Transport):
    """``transport``: no WebSocket, no webhooks, no long-poll until overridden."""

    def classify_frame(self, frame: bytes) -> transport.FrameClass:
        raise fatal(_not_served("WebSocket frames"))

    def build_ack(
        self,
        frame: bytes,
        status: transport.AckStatus,
        processing_ms: int,
        response: Optional[bytes],
    ) -> bytes:
        raise fatal(_not_served("WebSocket acknowledgements"))

    def plan_connection(self) -> transport.ConnectPlan:
        raise Err(transport.ConnectError_Terminal(_not_served("the websocket transport")))

    def classify_handshake_failure(
        self, status: int, headers: List[Tuple[str, str]]
    ) -> transport.ConnectError:
        return transport.ConnectError_Terminal(_not_served("the websocket transport"))

    def verify_webhook(self, request: transport.WebhookRequest) -> transport.WebhookVerdict:
        # Never accept what cannot be authenticated.
        raise Err(transport.WebhookRejection_BadToken(_not_served("the webhook transport")))

    def routing_key(self, payload: bytes) -> Optional[str]:
        return None

    def answer_action(self, payload: bytes, answer: types.ActionAnswer) -> Optional[bytes]:
        # No channel-specific answer to a button press: the transport's default answer goes out.
        return None

    def plan_poll(self, cursor: Optional[str]) -> http.Request:
        raise Err(transport.ConnectError_Terminal(_not_served("the long-poll transport")))

    def parse_poll(self, cursor: Optional[str], response: http.Response) -> transport.PollBatch:
        raise Err(transport.ConnectError_Terminal(_not_served("the long-poll transport")))


class Decoder(exports.Decoder):
    """``decoder``: every plugin must override ``decode``."""

    def decode(self, payload: bytes):
        raise fatal("the plugin does not implement decoder.decode")


class Enricher(exports.Enricher):
    """``enricher``: the body unchanged, no notes, no attachments from context."""

    def enrich(self, message: types.InboundMessage, budget: enricher.Budget) -> enricher.Enrichment:
        return enricher.Enrichment(body=message.body, notes=[], attachments=[])


class Commands(exports.Commands):
    """``commands``: no command syntax (every message is plain text)."""

    def parse(self, text: str) -> Optional[commands.Command]:
        return None


class Outbound(exports.Outbound):
    """``outbound``: nothing deliverable until ``deliver`` is overridden; no typing, streaming
    or attachments (features off)."""

    def deliver(self, delivery: outbound.Delivery) -> outbound.Receipt:
        raise delivery_error("the plugin does not implement outbound.deliver", retryable=False)

    def set_typing(
        self,
        target: types.SessionTarget,
        change: outbound.TypingChange,
        handle: Optional[str],
    ) -> Optional[str]:
        raise delivery_error(_not_served("typing indicators (feature `typing`)"), retryable=False)

    def stream_begin(self, target: types.SessionTarget, idempotency_key: str) -> str:
        raise delivery_error(_not_served("streaming (feature `streaming`)"), retryable=False)

    def stream_update(self, target: types.SessionTarget, handle: str, text: str) -> None:
        raise delivery_error(_not_served("streaming (feature `streaming`)"), retryable=False)

    def stream_end(self, target: types.SessionTarget, handle: str, text: str) -> outbound.Receipt:
        raise delivery_error(_not_served("streaming (feature `streaming`)"), retryable=False)

    def update_notice(
        self,
        target: types.SessionTarget,
        message_id: Optional[str],
        update_token: Optional[str],
        notice: types.Notice,
    ) -> None:
        raise delivery_error("this channel cannot update a sent message", retryable=False)

    def fetch_attachment(self, message_id: str, ref: str) -> outbound.AttachmentContent:
        raise fatal(_not_served("attachments (feature `attachments`)"))


class Lifecycle(exports.Lifecycle):
    """``lifecycle``: nothing to check or register."""

    def on_install(self, webhook_url: str) -> List[Tuple[str, str]]:
        return []

    def on_uninstall(self) -> None:
        return None
