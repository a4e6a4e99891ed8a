// tests/lark_card_action.rs runs this with the official Lark Node SDK (@larksuiteoapi/node-sdk,
// installed by `npm ci` from this directory's package-lock.json into LARK_NODE_SDK_DIR), so the
// card-action wire shapes the test uses are the SDK's, not only ours.
//
//   node card_action.cjs encode EVENT.json  -> {"frame_hex", "handler"}: the event as the SDK's
//       EventDispatcher hands it to a `card.action.trigger` handler, and a type=event data frame
//       carrying it, encoded with the SDK's own pbbp2.Frame encoder
//   node card_action.cjs decode ACK_HEX     -> the ACK frame read with the SDK's pbbp2 decoder,
//       with its payload JSON and the callback answer (base64 `data`) decoded as the SDK would
'use strict';
const fs = require('fs');
const path = require('path');

const dir = process.env.LARK_NODE_SDK_DIR;
if (!dir) {
  throw new Error('LARK_NODE_SDK_DIR is not set (the directory `npm ci` installed the SDK into)');
}
const sdkPath = path.join(dir, 'node_modules', '@larksuiteoapi', 'node-sdk');
const lark = require(sdkPath);
// The SDK's generated pbbp2 codec registers itself in protobufjs' default root; resolve the
// protobufjs instance the SDK itself loaded.
const protobuf = require(require.resolve('protobufjs/minimal', { paths: [sdkPath] }));
const pbbp2 = protobuf.roots['default'].pbbp2;
if (!pbbp2 || !pbbp2.Frame) {
  throw new Error('the SDK did not register its pbbp2 codec');
}

async function encode(eventFile) {
  const event = JSON.parse(fs.readFileSync(eventFile, 'utf8'));
  let seen = null;
  const dispatcher = new lark.EventDispatcher({ loggerLevel: lark.LoggerLevel.error }).register({
    'card.action.trigger': async (data) => {
      seen = data;
      return { toast: { type: 'info', content: 'sdk handler' } };
    },
  });
  const answer = await dispatcher.invoke(event, { needCheck: false });
  if (!seen) {
    throw new Error('the SDK did not dispatch the event to its card.action.trigger handler');
  }
  const payload = Buffer.from(JSON.stringify(event));
  const frame = pbbp2.Frame.encode({
    SeqID: 7760,
    LogID: 1186210100,
    service: 4921,
    method: 1,
    headers: [
      { key: 'type', value: 'event' },
      { key: 'message_id', value: 'sdk-card-action-1' },
      { key: 'sum', value: '1' },
      { key: 'seq', value: '0' },
      { key: 'trace_id', value: 'sdk-trace' },
    ],
    payload,
  }).finish();
  return {
    frame_hex: Buffer.from(frame).toString('hex'),
    handler: {
      event_id: seen.event_id,
      app_id: seen.app_id,
      open_id: seen.operator && seen.operator.open_id,
      open_chat_id: seen.context && seen.context.open_chat_id,
      open_message_id: seen.context && seen.context.open_message_id,
      value: seen.action && seen.action.value,
      tag: seen.action && seen.action.tag,
    },
    // What the SDK's WSClient would put in its ACK's `data` for this handler's answer.
    sdk_ack_data: Buffer.from(JSON.stringify(answer)).toString('base64'),
  };
}

function decode(ackHex) {
  const frame = pbbp2.Frame.decode(Buffer.from(ackHex, 'hex'));
  const payload = JSON.parse(Buffer.from(frame.payload).toString('utf8'));
  const answer = payload.data ? JSON.parse(Buffer.from(payload.data, 'base64').toString('utf8')) : null;
  return {
    SeqID: Number(frame.SeqID),
    service: frame.service,
    method: frame.method,
    headers: frame.headers.map((h) => [h.key, h.value]),
    payload,
    answer,
  };
}

(async () => {
  const [mode, arg] = process.argv.slice(2);
  const out = mode === 'encode' ? await encode(arg) : mode === 'decode' ? decode(arg) : null;
  if (!out) throw new Error(`usage: card_action.cjs encode EVENT.json | decode ACK_HEX`);
  process.stdout.write(JSON.stringify(out));
})().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
