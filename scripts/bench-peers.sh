#!/usr/bin/env bash
# Issue 3's side-by-side benchmark in one invocation: the official Lark SDK peers
# (shared/peers: Python lark-oapi, Node @larksuiteoapi/node-sdk) and `switchboard bench decode`
# (wasm plugin and native), on the same events, cases and N, back to back.
#
#   scripts/bench-peers.sh                          # N=20000, one round, all four cases
#   N=20000 ROUNDS=3 scripts/bench-peers.sh         # three rounds (take medians)
#   scripts/bench-peers.sh --cases ws_frame         # extra args go to every benchmark
#   BUILD=0 scripts/bench-peers.sh                  # use the existing target/release binary
#
# The peers' directory is read-only, so it is copied to PEERS_DIR (default: a new temp dir;
# point PEERS_DIR at an earlier copy to reuse its installed SDKs) and set up there with its
# setup_peers.sh (needs PyPI and npm). JSON lines go to stdout, one-line run headers to stderr.
# Method and results: docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/peers}"
N="${N:-20000}"
ROUNDS="${ROUNDS:-1}"
if [ ! -x "$PEERS_SRC/run_peers.sh" ] || [ ! -d "$PEERS_SRC/events" ]; then
  echo "peer benchmark not found at $PEERS_SRC (set PEERS_SRC to the shared/peers directory)" >&2
  exit 2
fi
PEERS_DIR="${PEERS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/switchboard-peers.XXXXXX")}"
mkdir -p "$PEERS_DIR"
chmod -R u+w "$PEERS_DIR"
cp -R "$PEERS_SRC/." "$PEERS_DIR/"
chmod -R u+w "$PEERS_DIR"
echo "# peers copied to $PEERS_DIR" >&2
if [ ! -x "$PEERS_DIR/.venv/bin/python" ] || [ ! -d "$PEERS_DIR/node/node_modules/@larksuiteoapi/node-sdk" ]; then
  "$PEERS_DIR/setup_peers.sh" >&2
fi
if [ "${BUILD:-1}" != 0 ]; then
  (cd "$ROOT" && cargo build --release -p switchboard >&2)
fi
for round in $(seq 1 "$ROUNDS"); do
  echo "# round $round/$ROUNDS $(date -u +%Y-%m-%dT%H:%M:%SZ) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" >&2
  N="$N" "$PEERS_DIR/run_peers.sh" "$@"
  (cd "$ROOT" && ./target/release/switchboard bench decode -n "$N" --events "$PEERS_DIR/events" "$@")
done
