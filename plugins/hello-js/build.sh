#!/usr/bin/env bash
# Builds the JavaScript `hello-js` channel plugin: target/plugins/hello-js.wasm with its manifest
# beside it as target/plugins/hello-js.toml, ready for `switchboard serve --plugins-dir
# target/plugins`.
#
# The build tools (componentize-js and jco, pinned in package.json and package-lock.json) are
# installed by `npm ci` into plugins/hello-js/node_modules, nothing global; that needs Node 20 or
# newer and the npm registry the first time. The build is skipped when neither the sources, the
# WIT nor the lockfile changed since the last one (a stamp beside the output).
#
# Environment: SWITCHBOARD_PLUGIN_OUT (output directory, default <repo>/target/plugins).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${SWITCHBOARD_PLUGIN_OUT:-$repo/target/plugins}"
work="$repo/target/hello-js"

fail() {
    printf 'build.sh: %s\n' "$*" >&2
    exit 1
}

command -v node >/dev/null && command -v npm >/dev/null \
    || fail "node and npm are needed to build JavaScript plugins (Node 20 or newer: https://nodejs.org, or apt-get install nodejs npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[[ "$node_major" -ge 20 ]] || fail "Node 20 or newer is needed; found $(node --version)"

# One build at a time (tests run in parallel and each asks for the plugin): the others wait,
# then find it up to date. npm ci rewrites node_modules, so it is under the lock too.
mkdir -p "$repo/target"
exec 9>"$repo/target/hello-js-build.lock"
flock 9 || fail "could not lock $repo/target/hello-js-build.lock"

# Everything the component is made of: the plugin, its manifest, the contract and the locked tools.
stamp_of() {
    {
        node --version
        find "$here" "$repo/wit" -maxdepth 1 -type f \
            \( -name '*.js' -o -name '*.wit' -o -name 'manifest.toml' -o -name 'package-lock.json' \) -print0 \
            | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}
stamp="$(stamp_of)"
if [[ -f "$out/hello-js.wasm" && -f "$out/hello-js.toml" && "$(cat "$out/hello-js.stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "build.sh: $out/hello-js.wasm is up to date" >&2
    exit 0
fi

# The pinned tools, exactly as locked (npm ci also checks the lockfile matches package.json).
# Reinstalled only when the lockfile changed since the last install.
lock_sum="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$here/node_modules/.switchboard-lock" 2>/dev/null)" != "$lock_sum" ]]; then
    echo "build.sh: npm ci in $here" >&2
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) \
        || fail "npm ci failed in $here; it needs the npm registry (or a cache) for the versions in package-lock.json"
    echo "$lock_sum" >"$here/node_modules/.switchboard-lock"
fi

mkdir -p "$work" "$out"
# --disable http fetch-event: StarlingMonkey's fetch() and fetch-event handler import wasi:http,
# which the host never links (a plugin reaches the network only through the `http` capability,
# under the operator's policy); without these the component would be refused at load. stdio
# (errors and console output go to stderr, which the host captures for the error report),
# clocks (Date.now: the host's clock with the `clock` grant, the Unix epoch without) and random
# stay: the host links them. The engine also imports wasi:filesystem, which the host links with
# no directory, so no --stub-wasi step is needed (componentize-js has none).
"$here/node_modules/.bin/componentize-js" "$here/app.js" \
    --wit "$repo/wit" --world-name channel-plugin \
    --disable http fetch-event \
    --out "$work/hello-js.wasm"
cp "$work/hello-js.wasm" "$out/hello-js.wasm"
cp "$here/manifest.toml" "$out/hello-js.toml"
echo "$stamp" >"$out/hello-js.stamp"
echo "build.sh: built $out/hello-js.wasm ($(stat -c %s "$out/hello-js.wasm") bytes)" >&2
