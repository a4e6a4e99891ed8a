#!/usr/bin/env bash
# Builds the {{name}} plugin: dist/{{name}}.wasm with its manifest beside it as dist/{{name}}.toml,
# ready for `switchboard serve --plugins-dir dist`. Also generates build/bindings (the
# `wit_world` package, for your editor and for `python3 -m unittest`).
#
# componentize-py (pinned below) is taken from PATH when it is that version, else pip-installed
# into .build-venv the first time.
#
# Environment: SWITCHBOARD_SDK_PYTHON (the switchboard_sdk directory, default the one this project
# was written with), SWITCHBOARD_PLUGIN_OUT (output directory, default dist).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sdk="${SWITCHBOARD_SDK_PYTHON:-{{sdk}}}"
out="${SWITCHBOARD_PLUGIN_OUT:-$here/dist}"
pinned="componentize-py=={{componentize_py}}"
version="${pinned#componentize-py==}"
venv="$here/.build-venv"

fail() {
    printf 'build.sh: %s\n' "$*" >&2
    exit 1
}

[[ -d "$sdk/switchboard_sdk" ]] \
    || fail "no switchboard_sdk in $sdk; set SWITCHBOARD_SDK_PYTHON to switchboard's plugins/sdk-python"

componentize="$(command -v componentize-py || true)"
if [[ -z "$componentize" ]] || [[ "$("$componentize" --version 2>/dev/null)" != "componentize-py $version" ]]; then
    componentize="$venv/bin/componentize-py"
fi
if [[ ! -x "$componentize" ]] || [[ "$("$componentize" --version 2>/dev/null)" != "componentize-py $version" ]]; then
    command -v python3 >/dev/null || fail "python3 is needed to build Python plugins"
    echo "build.sh: installing $pinned into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || fail "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pinned" \
        || fail "could not install $pinned; install it by hand with: $venv/bin/pip install $pinned"
fi

mkdir -p "$here/build" "$out"
rm -rf "$here/build/bindings"
"$componentize" -d "$here/wit" -w channel-plugin bindings "$here/build/bindings"
# --stub-wasi: CPython's WASI build imports wasi:filesystem and wasi:sockets, which the host never
# links; the stubs trap instead. Use the host's imports: clock.now_ms(), http, kv; never print.
"$componentize" -d "$here/wit" -w channel-plugin componentize --stub-wasi \
    -p "$here" -p "$sdk" -p "$here/build/bindings" app -o "$here/build/{{name}}.wasm"
cp "$here/build/{{name}}.wasm" "$out/{{name}}.wasm"
cp "$here/manifest.toml" "$out/{{name}}.toml"
echo "build.sh: built $out/{{name}}.wasm ($(stat -c %s "$out/{{name}}.wasm") bytes)" >&2
