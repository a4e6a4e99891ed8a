#!/usr/bin/env bash
# Issues 16 and 17's side-by-side benchmark in one invocation: the official Bolt for JavaScript
# (@slack/bolt) and grammY (scripts/peers/) and `switchboard bench channels` (the wasm plugins
# and their native builds) on the same inputs, cases and N, back to back in each round.
#
#   scripts/bench-channel-peers.sh                        # N=10000, one round, all four cases
#   N=10000 ROUNDS=3 scripts/bench-channel-peers.sh       # three rounds (take medians)
#   scripts/bench-channel-peers.sh --cases telegram_poll  # extra args go to every benchmark
#   BUILD=0 scripts/bench-channel-peers.sh                # use the existing target/release binary
#   BUILD=0 BIN=/path/to/switchboard scripts/bench-channel-peers.sh   # measure another binary
#
# The peers' SDKs are installed with `npm ci` (scripts/peers/package-lock.json, npm registry
# only) into PEERS_NODE_DIR (default: a new temp dir; point it at an earlier one to reuse the
# install). Each round writes fresh inputs (`bench channels --write-inputs`: Slack signatures
# are only valid for five minutes) and every peer of the round reads those files: their
# `input_sha256` must agree. JSON lines go to stdout, one-line round headers to stderr.
#
# The run fails (exit 1) when any peer failed or handled fewer events than N: Bolt and grammY
# check the requests themselves (Bolt the v0 signature with the signing secret, grammY the
# secret token), so a signature we generate and our plugin accepts but Bolt refuses shows here.
# Method and results: docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS="$ROOT/scripts/peers"
N="${N:-10000}"
ROUNDS="${ROUNDS:-1}"
NODE="${NODE:-node}"
BIN="${BIN:-$ROOT/target/release/switchboard}"
PEERS_NODE_DIR="${PEERS_NODE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/switchboard-channel-peers.XXXXXX")}"
INPUTS="${INPUTS:-$(mktemp -d "${TMPDIR:-/tmp}/switchboard-channel-inputs.XXXXXX")}"
export PEERS_NODE_DIR

mkdir -p "$PEERS_NODE_DIR"
if ! cmp -s "$PEERS/package-lock.json" "$PEERS_NODE_DIR/package-lock.json" \
  || [ ! -d "$PEERS_NODE_DIR/node_modules/@slack/bolt" ] || [ ! -d "$PEERS_NODE_DIR/node_modules/grammy" ]; then
  cp "$PEERS/package.json" "$PEERS/package-lock.json" "$PEERS_NODE_DIR/"
  (cd "$PEERS_NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
echo "# peers installed in $PEERS_NODE_DIR: @slack/bolt $("$NODE" -p "require('$PEERS_NODE_DIR/node_modules/@slack/bolt/package.json').version"), grammy $("$NODE" -p "require('$PEERS_NODE_DIR/node_modules/grammy/package.json').version"), node $("$NODE" -v)" >&2
if [ "${BUILD:-1}" != 0 ]; then
  (cd "$ROOT" && cargo build --release -p switchboard >&2)
fi

OUT="$(mktemp "${TMPDIR:-/tmp}/switchboard-channel-results.XXXXXX")"
rc=0
for round in $(seq 1 "$ROUNDS"); do
  echo "# round $round/$ROUNDS $(date -u +%Y-%m-%dT%H:%M:%SZ) commit=$(git -C "$ROOT" rev-parse --short HEAD) nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg) N=$N" >&2
  "$BIN" bench channels --write-inputs "$INPUTS" >&2
  : > "$OUT"
  "$NODE" "$PEERS/slack_bolt.mjs" --inputs "$INPUTS" -n "$N" "$@" | tee -a "$OUT" || rc=1
  "$NODE" "$PEERS/telegram_grammy.mjs" --inputs "$INPUTS" -n "$N" "$@" | tee -a "$OUT" || rc=1
  (cd "$ROOT" && "$BIN" bench channels --inputs "$INPUTS" -n "$N" "$@") | tee -a "$OUT" || rc=1
  # Every line of the round: no error, every event handled, the same bytes per case.
  "$NODE" -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map(JSON.parse);
    const n = Number(process.argv[2]);
    const digests = {};
    let bad = 0;
    for (const l of lines) {
      if (l.error || l.handled !== n || l.events !== n) {
        console.error(`FAILED: ${l.peer} ${l.case}: ${l.error ?? `handled ${l.handled} of ${n}`}`);
        bad++;
        continue;
      }
      (digests[l.case] ??= new Set()).add(l.input_sha256);
    }
    for (const [c, d] of Object.entries(digests)) {
      if (d.size !== 1) { console.error(`FAILED: ${c}: peers read different inputs (${[...d]})`); bad++; }
    }
    if (!lines.length) { console.error("FAILED: no results"); bad++; }
    process.exit(bad ? 1 : 0);
  ' "$OUT" "$N" || rc=1
done
rm -f "$OUT"
if [ "$rc" != 0 ]; then
  echo "bench-channel-peers: FAILED (see the lines above)" >&2
fi
exit "$rc"
