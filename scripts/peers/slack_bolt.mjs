#!/usr/bin/env node
// The Slack peer of `switchboard bench channels`: the official Bolt for JavaScript
// (@slack/bolt) on the same inputs. No network is used.
//
// Cases (names as in the Rust bench):
//   slack_events_api   each signed request (headers + raw body of an `event_callback`) is handed
//                      to HTTPReceiver's own request listener as the Node HTTP server would hand
//                      it over (path /slack/events, POST, lower-case headers, the body already
//                      buffered): Bolt verifies X-Slack-Signature with the signing secret
//                      (v0 HMAC-SHA256, five-minute window), parses the body, acks and runs
//                      app.processEvent, whose `message` listener counts. processBeforeResponse
//                      is on, so the response ends once the listener ran; anything but 200
//                      (a 401 for a signature Bolt refuses) fails the run.
//   slack_socket_mode  each Socket Mode envelope (a text frame) is emitted as `ws_message` on
//                      SocketModeReceiver's SocketModeClient, whose WebSocket is a stand-in
//                      that records the ACK the client sends ({"envelope_id": …}); Bolt parses
//                      the envelope, acks and runs the same listener.
//
// The listener counts events, the characters of `message.text` and its user mentions
// (`<@U…>`). Usage: node slack_bolt.mjs --inputs DIR [-n N] [--warmup W] [--cases a,b]
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { SINK, benchLogger, chars, loadConfig, loadInputs, main, measure, sdkRequire } from './common.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PEER = 'node/@slack/bolt';
const CASES = ['slack_events_api', 'slack_socket_mode'];
const MENTION = /<@[UW][A-Z0-9]+(?:\|[^>]*)?>/g;

// Resolved by the listener (Socket Mode waits for it: the listener runs after the ack).
let listenerRan = null;

function onMessage({ message }) {
  const text = message.text ?? '';
  SINK.handled += 1;
  SINK.text_chars += chars(text);
  SINK.mentions += (text.match(MENTION) ?? []).length;
  const ran = listenerRan;
  listenerRan = null;
  if (ran) ran();
}

function makeApp(bolt, config, receiver, logger) {
  const app = new bolt.App({
    receiver,
    token: 'xoxb-bench-not-a-real-token',
    botId: config.slack.bot_id,
    botUserId: config.slack.bot_user_id,
    // The token is not checked with auth.test (no network).
    tokenVerificationEnabled: false,
    logger,
  });
  app.message(async (args) => onMessage(args));
  return app;
}

/// A stand-in for the ServerResponse: records the status and resolves when the response ends.
function fakeResponse() {
  let done;
  const ended = new Promise((r) => { done = r; });
  const res = {
    statusCode: 200,
    headersSent: false,
    ended,
    setHeader() {},
    writeHead(status) { res.statusCode = status; res.headersSent = true; return res; },
    end() { done(res.statusCode); },
  };
  return res;
}

async function eventsApi(bolt, config, lines) {
  const logger = benchLogger('bolt');
  const receiver = new bolt.HTTPReceiver({
    signingSecret: config.slack.signing_secret,
    processBeforeResponse: true,
    logger,
  });
  makeApp(bolt, config, receiver, logger);
  const pool = lines.map((line) => {
    const { headers, body } = JSON.parse(line);
    return { headers, body: Buffer.from(body, 'utf8') };
  });
  let rejected = 0;
  const step = async (i) => {
    const { headers, body } = pool[i % pool.length];
    // What the HTTP server hands the listener: a request whose body was read into a fresh buffer.
    const req = { url: '/slack/events', method: 'POST', headers: { ...headers }, rawBody: Buffer.from(body) };
    const res = fakeResponse();
    receiver.requestListener(req, res);
    if ((await res.ended) !== 200) rejected++;
  };
  return { step, check: () => { if (rejected) throw new Error(`Bolt refused ${rejected} requests (signature?)`); } };
}

async function socketMode(bolt, config, lines, args) {
  const logger = benchLogger('bolt');
  const receiver = new bolt.SocketModeReceiver({ appToken: 'xapp-1-bench-not-a-real-token', logger });
  makeApp(bolt, config, receiver, logger);
  const client = receiver.client;
  const frames = lines.map((line) => Buffer.from(line, 'utf8'));
  const sock = { acks: 0, lastAck: null, waiting: null };
  client.websocket = {
    readyState: 1,
    isActive: () => true,
    send(data, cb) {
      sock.acks++;
      sock.lastAck = data;
      if (cb) cb();
      const r = sock.waiting;
      sock.waiting = null;
      if (r) r();
    },
  };
  const step = async (i) => {
    const acked = new Promise((r) => { sock.waiting = r; });
    const ran = new Promise((r) => { listenerRan = r; });
    // A fresh buffer per frame, as a socket read delivers it.
    client.emit('ws_message', Buffer.from(frames[i % frames.length]), false);
    // One event in flight: its ack sent and its listener run (a lost one trips the watchdog).
    await Promise.all([acked, ran]);
  };
  return {
    step,
    check: () => {
      if (!String(sock.lastAck).startsWith('{"envelope_id":"')) throw new Error(`unexpected ack ${sock.lastAck}`);
      if (sock.acks !== args.events + args.warmup) throw new Error(`${sock.acks} acks for ${args.events + args.warmup} envelopes`);
    },
  };
}

async function runCase(kase, args) {
  const require = sdkRequire(HERE);
  const bolt = require('@slack/bolt');
  const version = require('@slack/bolt/package.json').version;
  const config = loadConfig(args.inputs);
  const { lines, digest } = loadInputs(args.inputs, kase);
  const { step, check } = kase === 'slack_events_api'
    ? await eventsApi(bolt, config, lines)
    : await socketMode(bolt, config, lines, args);
  return measure({
    peer: PEER, kase, n: args.events, warmup: args.warmup, perInput: 1, step, digest,
    sdkVersion: version, check,
  });
}

await main(fileURLToPath(import.meta.url), PEER, CASES, runCase);
