#!/usr/bin/env node
// The Telegram peer of `switchboard bench channels`: grammY (the `grammy` package) on the same
// inputs. No network is used: the Bot is given its `botInfo` (no getMe), and no handler calls
// the Bot API.
//
// Cases (names as in the Rust bench):
//   telegram_webhook  each request (headers + raw body of an Update) goes through grammY's own
//                     webhookCallback with `secretToken` set (its constant-time check of
//                     X-Telegram-Bot-Api-Secret-Token), through an adapter that hands over the
//                     request as grammY's Node `http` adapter does once the body is read
//                     (JSON.parse of the body), then bot.handleUpdate. Anything but a 200 (a
//                     401 for a refused secret) fails the run.
//   telegram_poll     each getUpdates answer (100 updates) is parsed (JSON.parse, `ok` checked)
//                     and its updates handed to bot.handleUpdate one after the other, as grammY's
//                     long-polling loop does with what getUpdates returns.
//
// Handlers: on("message") counts the event, the characters of `text` (or `caption`) and its
// mention entities; on("callback_query:data") counts the event and the characters of `data`.
// Usage: node telegram_grammy.mjs --inputs DIR [-n N] [--warmup W] [--cases a,b]
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import path from 'node:path';
import { SINK, chars, loadConfig, loadInputs, main, measure, sdkRequire } from './common.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PEER = 'node/grammy';
const CASES = ['telegram_webhook', 'telegram_poll'];

function makeBot(grammy, config) {
  const t = config.telegram;
  const bot = new grammy.Bot(`${t.bot_id}:bench-not-a-real-token`, {
    botInfo: {
      id: t.bot_id,
      is_bot: true,
      first_name: t.bot_first_name,
      username: t.bot_username,
      can_join_groups: true,
      can_read_all_group_messages: false,
      supports_inline_queries: false,
      can_connect_to_business: false,
      has_main_web_app: false,
    },
  });
  bot.on('message', (ctx) => {
    const msg = ctx.msg;
    const text = msg.text ?? msg.caption ?? '';
    const entities = msg.entities ?? msg.caption_entities ?? [];
    SINK.handled += 1;
    SINK.text_chars += chars(text);
    SINK.mentions += entities.filter((e) => e.type === 'mention' || e.type === 'text_mention').length;
  });
  bot.on('callback_query:data', (ctx) => {
    SINK.handled += 1;
    SINK.actions += 1;
    SINK.text_chars += chars(ctx.callbackQuery.data);
  });
  bot.catch((err) => { throw err.error ?? err; });
  return bot;
}

async function webhook(grammy, config, lines) {
  const bot = makeBot(grammy, config);
  const pool = lines.map((line) => {
    const { headers, body } = JSON.parse(line);
    return { headers, body: Buffer.from(body, 'utf8') };
  });
  // grammY's adapter contract: the update, the secret header, and how to answer.
  const adapter = (req) => ({
    get update() {
      return Promise.resolve(JSON.parse(req.body.toString('utf8')));
    },
    header: req.headers['x-telegram-bot-api-secret-token'],
    end: () => { req.status = 200; },
    respond: (json) => { req.status = 200; req.reply = json; },
    unauthorized: () => { req.status = 401; },
  });
  const handle = grammy.webhookCallback(bot, adapter, { secretToken: config.telegram.secret_token });
  let rejected = 0;
  const step = async (i) => {
    const { headers, body } = pool[i % pool.length];
    // A fresh buffer per request, as the HTTP server reads it.
    const req = { headers: { ...headers }, body: Buffer.from(body), status: 0 };
    await handle(req);
    if (req.status !== 200) rejected++;
  };
  return { step, perInput: 1, check: () => { if (rejected) throw new Error(`grammY refused ${rejected} requests`); } };
}

async function poll(grammy, config, lines) {
  const bot = makeBot(grammy, config);
  await bot.init();
  const answers = lines.map((line) => Buffer.from(line, 'utf8'));
  const batch = config.poll_batch;
  const step = async (i) => {
    const answer = JSON.parse(Buffer.from(answers[i % answers.length]).toString('utf8'));
    if (!answer.ok || answer.result.length !== batch) throw new Error('unexpected getUpdates answer');
    for (const update of answer.result) await bot.handleUpdate(update);
  };
  return { step, perInput: batch };
}

async function runCase(kase, args) {
  const require = sdkRequire(HERE);
  const grammy = require('grammy');
  // grammY's `exports` hide package.json: read it beside the resolved entry point.
  const entry = require.resolve('grammy');
  const version = JSON.parse(fs.readFileSync(path.join(entry.slice(0, entry.lastIndexOf('node_modules/grammy/') + 20), 'package.json'), 'utf8')).version;
  const config = loadConfig(args.inputs);
  const { lines, digest } = loadInputs(args.inputs, kase);
  const { step, perInput, check } = kase === 'telegram_webhook'
    ? await webhook(grammy, config, lines)
    : await poll(grammy, config, lines);
  return measure({
    peer: PEER, kase, n: args.events, warmup: args.warmup, perInput, step, digest,
    sdkVersion: version, check,
  });
}

await main(fileURLToPath(import.meta.url), PEER, CASES, runCase);
