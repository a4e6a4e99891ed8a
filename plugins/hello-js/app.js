// The `hello-js` channel: the generic signed HTTP/JSON webhook channel of plugins/http-python,
// written in JavaScript and built with componentize-js (build.sh). A minimal example: it
// verifies, reads and answers; it has no typing, streaming, actions, attachments or kv.
//
// Inbound: the operator's system POSTs one signed JSON message to /hooks/hello-js/{installation}:
//
//   X-Switchboard-Timestamp: <unix seconds>
//   X-Switchboard-Signature: sha256=<hex HMAC-SHA256(signing_secret, timestamp + "." + body)>
//
//   {"message_id": "m-1", "chat_id": "c-1", "chat_type": "direct" | "group" | "channel",
//    "user": {"id": "u-1", "name": "Ada"}, "text": "hello", "sent_at_ms": 1700000000000?}
//
// Outbound: replies and notices are POSTed as JSON to the installation's callback_url, signed
// the same way with signing_secret, the delivery's idempotency key in the body and header.
//
// WIT → JS (componentize-js): interfaces are exported as objects named in camelCase, functions
// in camelCase; `list<u8>` is a Uint8Array, `s64` a BigInt, `option<T>` is T or undefined,
// enums are their WIT names as strings, variants are `{ tag, val }`. A `result` export returns
// its ok value and throws its error value (a plain object, never an `Error`: a thrown `Error`
// traps). An imported function that returns a `result` throws an error whose `payload` is the
// error value.
//
// Every call is stateless: the host may recycle the instance between any two calls, so this
// module keeps nothing in globals.

import { nowMs } from 'switchboard:channel/clock@0.2.0';
import { hmacSha256, constantTimeEq } from 'switchboard:channel/crypto@0.2.0';
import { send } from 'switchboard:channel/http@0.2.0';
import { config, secret } from 'switchboard:channel/installation@0.2.0';

const SIGNATURE_PREFIX = 'sha256=';
const CHAT_KINDS = ['direct', 'group', 'channel'];
const CALLBACK_TIMEOUT_MS = 10000;
const utf8 = new TextEncoder();

function notServed(what) {
  return `this plugin does not serve ${what}; its manifest does not declare it`;
}

function header(headers, name) {
  for (const [key, value] of headers) {
    if (key.toLowerCase() === name) return value;
  }
  return undefined;
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** HMAC-SHA256(secret, timestamp + "." + body), computed by the host (`crypto`). */
function mac(key, timestamp, body) {
  return hmacSha256(utf8.encode(key), [utf8.encode(timestamp), utf8.encode('.'), body]);
}

/** The wire message → the neutral `inbound-message`; throws `invalid-input` naming the field. */
function readMessage(payload) {
  let obj;
  try {
    obj = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
  } catch {
    throw { tag: 'invalid-input', val: 'the message is not UTF-8 JSON' };
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw { tag: 'invalid-input', val: 'the message must be a JSON object' };
  }
  const text = (o, field, where = '') => {
    if (typeof o[field] !== 'string' || o[field] === '') {
      throw { tag: 'invalid-input', val: `field \`${where}${field}\` must be a non-empty string` };
    }
    return o[field];
  };
  const chatType = text(obj, 'chat_type');
  if (!CHAT_KINDS.includes(chatType)) {
    throw { tag: 'invalid-input', val: 'field `chat_type` must be "direct", "group" or "channel"' };
  }
  const user = obj.user;
  if (user === null || typeof user !== 'object') {
    throw { tag: 'invalid-input', val: 'field `user` must be an object' };
  }
  if (typeof obj.text !== 'string') {
    throw { tag: 'invalid-input', val: 'field `text` must be a string' };
  }
  const messageId = text(obj, 'message_id');
  return {
    eventId: messageId,
    messageId,
    chat: { id: text(obj, 'chat_id'), kind: chatType, title: undefined },
    sender: {
      id: text(user, 'id', 'user.'),
      displayName: typeof user.name === 'string' ? user.name : undefined,
      isBot: false,
      altIds: [],
    },
    messageType: 'text',
    body: obj.text,
    commandBody: obj.text,
    // Direct chats always address the bot; elsewhere the sender's system says so.
    addressedToBot: chatType === 'direct' || obj.addressed_to_bot !== false,
    parentId: undefined,
    rootId: undefined,
    threadId: typeof obj.thread_id === 'string' ? obj.thread_id : undefined,
    createTimeMs: Number.isSafeInteger(obj.sent_at_ms) ? BigInt(obj.sent_at_ms) : nowMs(),
    mentions: [],
    attachments: [],
  };
}

/** `/name args` → `{ name, args }` (name lower-cased, `@suffix` dropped); undefined otherwise. */
function parseCommand(text) {
  const match = /^\/([A-Za-z0-9_]+)(?:@\S*)?(?:\s+([\s\S]*))?$/.exec(text.trim());
  return match ? { name: match[1].toLowerCase(), args: (match[2] ?? '').trim() } : undefined;
}

export const transport = {
  verifyWebhook(request) {
    const signingSecret = secret('signing_secret');
    if (signingSecret === undefined) {
      throw { tag: 'bad-token', val: 'the installation has no signing_secret' };
    }
    if (request.method !== 'POST' || request.path !== '') {
      throw { tag: 'malformed', val: 'POST the message to /hooks/hello-js/{installation} itself' };
    }
    const timestamp = header(request.headers, 'x-switchboard-timestamp');
    const presented = header(request.headers, 'x-switchboard-signature');
    if (timestamp === undefined || presented === undefined) {
      throw { tag: 'bad-signature', val: 'X-Switchboard-Timestamp and X-Switchboard-Signature are required' };
    }
    if (!/^[0-9]{1,12}$/.test(timestamp) || !presented.startsWith(SIGNATURE_PREFIX)) {
      throw { tag: 'bad-signature', val: 'malformed timestamp or signature header' };
    }
    const expected = utf8.encode(hex(mac(signingSecret, timestamp, request.body)));
    const given = utf8.encode(presented.slice(SIGNATURE_PREFIX.length).toLowerCase());
    // Constant time, by the host: never compare signatures with `===`.
    if (!constantTimeEq(expected, given)) {
      throw { tag: 'bad-signature', val: 'the signature does not match' };
    }
    // Authenticated from here on: a body that is not a message is the sender's bug (400).
    let message;
    try {
      message = readMessage(request.body);
    } catch (e) {
      if (e instanceof Error) throw e;
      throw { tag: 'malformed', val: e.val };
    }
    return {
      tag: 'events',
      val: {
        payloads: [request.body],
        // The message read in this call saves the host a `decode` call.
        readings: [
          {
            routingKey: undefined,
            decoded: { tag: 'ok', val: { tag: 'message', val: message } },
            command: parseCommand(message.commandBody),
          },
        ],
        signedAtMs: BigInt(timestamp) * 1000n,
        response: { status: 200, contentType: 'application/json', body: utf8.encode('{"ok":true}') },
      },
    };
  },
  routingKey(payload) {
    return undefined;
  },
  classifyFrame(frame) {
    throw { tag: 'fatal', val: notServed('WebSocket frames') };
  },
  buildAck(frame, status, processingMs, response) {
    throw { tag: 'fatal', val: notServed('WebSocket acknowledgements') };
  },
  answerAction(payload, answer) {
    return undefined;
  },
  planConnection() {
    throw { tag: 'terminal', val: notServed('the websocket transport') };
  },
  classifyHandshakeFailure(status, headers) {
    return { tag: 'terminal', val: notServed('the websocket transport') };
  },
  planPoll(cursor) {
    throw { tag: 'terminal', val: notServed('the long-poll transport') };
  },
  parsePoll(cursor, response) {
    throw { tag: 'terminal', val: notServed('the long-poll transport') };
  },
};

export const decoder = {
  decode(payload) {
    return { tag: 'message', val: readMessage(payload) };
  },
};

export const enricher = {
  // Nothing to enrich: the sender's system sends the whole text.
  enrich(message, budget) {
    return { body: message.body, notes: [] };
  },
};

export const commands = {
  parse(text) {
    return parseCommand(text);
  },
};

function notDelivered(message) {
  return { code: undefined, message, retryable: false, retryAfterMs: undefined };
}

export const outbound = {
  deliver(delivery) {
    const url = config('callback_url');
    const signingSecret = secret('signing_secret');
    if (url === undefined || signingSecret === undefined) {
      throw notDelivered('the installation needs callback_url and signing_secret');
    }
    const { target, content } = delivery;
    const body = utf8.encode(
      JSON.stringify({
        idempotency_key: delivery.idempotencyKey,
        session_id: target.sessionId,
        chat_id: target.chatId,
        chat_type: target.chatKind,
        thread_id: target.threadId ?? null,
        type: content.tag,
        text: content.tag === 'reply' ? content.val : content.val.text,
      }),
    );
    const timestamp = String(nowMs() / 1000n);
    const headers = [
      ['content-type', 'application/json'],
      ['x-switchboard-timestamp', timestamp],
      ['x-switchboard-signature', SIGNATURE_PREFIX + hex(mac(signingSecret, timestamp, body))],
    ];
    if (delivery.idempotencyKey !== '') headers.push(['idempotency-key', delivery.idempotencyKey]);
    let response;
    try {
      response = send({ method: 'POST', url, headers, body, timeoutMs: CALLBACK_TIMEOUT_MS });
    } catch (e) {
      // The host's `http.error` (`not-allowed`, `timeout`, …): only a timeout or a transport
      // failure may pass on a retry.
      const error = e.payload ?? { tag: 'transport', val: String(e) };
      throw {
        code: undefined,
        message: `the callback could not be sent (${error.tag})`,
        retryable: error.tag === 'timeout' || error.tag === 'transport',
        retryAfterMs: undefined,
      };
    }
    if (response.status >= 200 && response.status < 300) return { messageId: undefined };
    throw {
      code: BigInt(response.status),
      message: `the callback answered HTTP ${response.status}`,
      retryable: response.status === 429 || response.status >= 500,
      retryAfterMs: undefined,
    };
  },
  setTyping(target, change, handle) {
    throw notDelivered(notServed('typing indicators'));
  },
  streamBegin(target, idempotencyKey) {
    throw notDelivered(notServed('streaming'));
  },
  streamUpdate(target, handle, text) {
    throw notDelivered(notServed('streaming'));
  },
  streamEnd(target, handle, text) {
    throw notDelivered(notServed('streaming'));
  },
  updateNotice(target, messageId, updateToken, notice) {
    throw notDelivered(notServed('message updates'));
  },
  fetchAttachment(messageId, ref) {
    throw { tag: 'fatal', val: notServed('attachments') };
  },
};

export const lifecycle = {
  onInstall(webhookUrl) {
    if (secret('signing_secret') === undefined || config('callback_url') === undefined) {
      throw { tag: 'invalid-input', val: 'a hello-js installation needs signing_secret and callback_url' };
    }
    return [];
  },
  onUninstall() {},
};
