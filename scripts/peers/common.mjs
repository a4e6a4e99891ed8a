// What the two channel peers share with `switchboard bench channels`: the inputs it wrote
// (`--write-inputs DIR`: one JSON Lines file per case and bench-inputs.json), the handler's
// counters, the measurement (process CPU over the timed loop, peak RSS) and the JSON line.
//
// Each peer script runs as a parent (`--inputs DIR [-n N] [--warmup W] [--cases a,b]`) that
// starts one child per case (`--case NAME`), so peak RSS is per case, as in the Rust bench.
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/// The installed SDKs: `node_modules` under PEERS_NODE_DIR (where the bench script ran
/// `npm ci`), else beside these scripts.
export function sdkRequire(here) {
  const dir = process.env.PEERS_NODE_DIR || here;
  return createRequire(path.join(dir, 'package.json'));
}

/// The input file of `kase`: its lines (one input each) and input_sha256 (first 16 hex digits
/// of the sha256 of the file's bytes, as every peer prints it).
export function loadInputs(dir, kase) {
  const bytes = fs.readFileSync(path.join(dir, `${kase}.jsonl`));
  const digest = crypto.createHash('sha256').update(bytes).digest('hex').slice(0, 16);
  const lines = bytes.toString('utf8').split('\n').filter((l) => l.length > 0);
  return { lines, digest };
}

export function loadConfig(dir) {
  return JSON.parse(fs.readFileSync(path.join(dir, 'bench-inputs.json'), 'utf8'));
}

/// What the handler accumulates (work that must not be optimised away).
export const SINK = { handled: 0, actions: 0, text_chars: 0, mentions: 0 };

export function resetSink() {
  for (const k of Object.keys(SINK)) SINK[k] = 0;
}

/// Characters (code points, as Rust's `chars().count()`), not UTF-16 units.
export function chars(s) {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/// SDK log records: warnings and errors are counted (a run with any fails), the rest dropped.
export const LOG_ERRORS = { n: 0 };
export function benchLogger(name) {
  let level = 'warn';
  const out = (kind) => (...m) => {
    LOG_ERRORS.n++;
    process.stderr.write(`[${name} ${kind}] ${m.map(String).join(' ')}\n`);
  };
  return {
    error: out('error'),
    warn: out('warn'),
    info: () => {},
    debug: () => {},
    setLevel: (l) => { level = l; },
    getLevel: () => level,
    setName: () => {},
  };
}

const mb = (bytes) => Math.round((bytes / 1048576) * 10) / 10;

/// Runs `step(i)` for the warm-up and then the timed inputs; the JSON line.
export async function measure({ peer, kase, n, warmup, perInput, step, digest, sdkVersion, check }) {
  if (n % perInput || warmup % perInput) {
    throw new Error(`${kase}: N and --warmup must be multiples of ${perInput}`);
  }
  for (let i = 0; i < warmup / perInput; i++) await step(i);
  resetSink();
  const rssBefore = process.memoryUsage().rss;
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const start = warmup / perInput;
  for (let i = start; i < start + n / perInput; i++) await step(i);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cu = process.cpuUsage(c0);
  const cpu = (cu.user + cu.system) / 1e6;
  if (SINK.handled !== n) throw new Error(`${kase}: the handler saw ${SINK.handled} events, expected ${n}`);
  if (LOG_ERRORS.n) throw new Error(`${kase}: the SDK logged ${LOG_ERRORS.n} warnings/errors`);
  if (check) check();
  const peakKb = process.resourceUsage().maxRSS; // KiB (getrusage ru_maxrss)
  return {
    peer,
    case: kase,
    events: n,
    seconds: Math.round(seconds * 1e4) / 1e4,
    events_per_sec: Math.round((n / seconds) * 10) / 10,
    us_per_event: Math.round((seconds * 1e6 * 100) / n) / 100,
    cpu_seconds: Math.round(cpu * 1e4) / 1e4,
    cpu_us_per_event: Math.round((cpu * 1e6 * 100) / n) / 100,
    peak_rss_mb: Math.round((peakKb / 1024) * 10) / 10,
    rss_before_timed_mb: mb(rssBefore),
    warmup,
    handled: SINK.handled,
    actions: SINK.actions,
    text_chars: SINK.text_chars,
    mentions: SINK.mentions,
    input_sha256: digest,
    sdk_version: sdkVersion,
    runtime: 'Node ' + process.version,
  };
}

export function parseArgs(argv, cases) {
  const a = { events: Number(process.env.N || 10000), warmup: null, case: null, cases: cases.join(','), inputs: null };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    if (k === '-n' || k === '--count') { a.events = Number(v); i++; }
    else if (k === '--warmup') { a.warmup = Number(v); i++; }
    else if (k === '--case') { a.case = v; i++; }
    else if (k === '--cases') { a.cases = v; i++; }
    else if (k === '--inputs') { a.inputs = v; i++; }
    else if (k === '-h' || k === '--help') {
      process.stdout.write(`usage: node ${path.basename(process.argv[1])} --inputs DIR [-n N] [--warmup W] [--cases ${cases.join(',')}] | --case NAME\n`);
      process.exit(0);
    } else throw new Error('unknown argument ' + k);
  }
  if (!a.inputs) throw new Error('--inputs DIR is required (write it with `switchboard bench channels --write-inputs DIR`)');
  if (a.warmup === null) a.warmup = Math.min(2000, a.events);
  return a;
}

/// The parent: one child process per case, one JSON line each (an `error` line for a failed
/// one, and a non-zero exit).
export async function main(script, peer, cases, runCase) {
  const args = parseArgs(process.argv.slice(2), cases);
  if (args.case) {
    if (!cases.includes(args.case)) throw new Error(`unknown case ${args.case} (known: ${cases.join(', ')})`);
    const watchdog = setTimeout(() => { process.stderr.write('watchdog: case hung\n'); process.exit(3); }, 900e3);
    watchdog.unref();
    const line = await runCase(args.case, args);
    process.stdout.write(JSON.stringify(line) + '\n');
    // The SDKs leave timers behind (ack timeouts); the line is out, so stop here.
    process.exit(0);
  }
  let rc = 0;
  for (const kase of args.cases.split(',').filter((c) => cases.includes(c))) {
    const p = spawnSync(process.execPath,
      [script, '--case', kase, '--inputs', args.inputs, '-n', String(args.events), '--warmup', String(args.warmup)],
      { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 1 << 24 });
    const lines = (p.stdout || '').split('\n').filter((l) => l.startsWith('{'));
    if (p.status !== 0 || !lines.length) {
      process.stdout.write(JSON.stringify({ peer, case: kase, error: `exit ${p.status}` }) + '\n');
      rc = 1;
      continue;
    }
    process.stdout.write(lines[lines.length - 1] + '\n');
  }
  process.exitCode = rc;
}
