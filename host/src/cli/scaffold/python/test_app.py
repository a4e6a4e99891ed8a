"""The plugin's own checks in CPython: ``./build.sh && python3 -m unittest``.

The generated bindings (build/bindings, written by build.sh) and the SDK's pure-Python parts
import in CPython; the host's imports (crypto, clock, http, ...) do not run here, so these tests
exercise what needs none of them: decoding the fixtures, errors, commands, and the fixture's
signature (checked with the standard library's HMAC).
"""

import hashlib
import hmac
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [
    os.path.join(HERE, "build", "bindings"),
    os.environ.get("SWITCHBOARD_SDK_PYTHON", "{{sdk}}"),
]

try:
    from componentize_py_types import Err
    from wit_world.exports import decoder
    from wit_world.imports import types

    import app
except ImportError as e:  # pragma: no cover - the message is the point
    raise SystemExit(f"{e}: run ./build.sh first (it generates build/bindings)") from None

#: The secret fixtures/webhook.json is signed with (``--secret signing_secret=...`` in replay).
FIXTURE_SECRET = b"fixture-signing-secret"


def fixture(name: str) -> bytes:
    with open(os.path.join(HERE, "fixtures", name), "rb") as f:
        return f.read()


class DecodeTest(unittest.TestCase):
    def test_the_fixture_message_decodes(self):
        decoded = app.Decoder().decode(fixture("message.json"))
        self.assertIsInstance(decoded, decoder.Decoded_Message)
        message = decoded.value
        self.assertEqual(message.message_id, "m-1")
        self.assertEqual(message.chat.id, "chat-1")
        self.assertEqual(message.chat.kind, types.ChatKind.DIRECT)
        self.assertEqual(message.sender.id, "user-1")
        self.assertEqual(message.sender.display_name, "Ada")
        self.assertEqual(message.body, "hello from a fixture")
        self.assertTrue(message.addressed_to_bot)
        self.assertEqual(message.create_time_ms, 1767225600000)

    def test_malformed_payloads_are_invalid_input_naming_the_field(self):
        with self.assertRaises(Err) as caught:
            app.Decoder().decode(b"not json")
        self.assertIsInstance(caught.exception.value, types.PluginError_InvalidInput)
        with self.assertRaises(Err) as caught:
            app.Decoder().decode(b'{"message_id": "m", "user_id": "u", "text": "t"}')
        self.assertIn("chat_id", caught.exception.value.value)

    def test_the_webhook_fixture_is_signed_with_the_fixture_secret(self):
        request = json.loads(fixture("webhook.json"))["request"]
        body = request["raw_body"].encode("utf-8")
        timestamp = request["headers"]["x-switchboard-timestamp"]
        expected = hmac.new(FIXTURE_SECRET, timestamp.encode() + b"." + body, hashlib.sha256)
        self.assertTrue(
            hmac.compare_digest(
                request["headers"]["x-switchboard-signature"], "sha256=" + expected.hexdigest()
            )
        )

    def test_commands_are_read_from_the_text(self):
        command = app.Commands().parse("/New@bot  start over ")
        self.assertEqual((command.name, command.args), ("new", "start over"))
        self.assertIsNone(app.Commands().parse("just text"))


if __name__ == "__main__":
    unittest.main()
