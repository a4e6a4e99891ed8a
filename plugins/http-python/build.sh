#!/usr/bin/env bash
# Builds the Python `http` channel plugin: target/plugins/http.wasm with its manifest beside it
# as target/plugins/http.toml, ready for `switchboard serve --plugins-dir target/plugins`.
#
# componentize-py (pinned in plugins/sdk-python/requirements-build.txt) is taken from PATH when
# it is that version, else pip-installed into a venv under target/ the first time. The build is skipped when neither the sources, the WIT nor
# the pinned version changed since the last one (a stamp beside the output).
#
# Environment: SWITCHBOARD_PLUGIN_OUT (output directory, default <repo>/target/plugins).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
sdk="$repo/plugins/sdk-python"
requirements="$sdk/requirements-build.txt"
out="${SWITCHBOARD_PLUGIN_OUT:-$repo/target/plugins}"
work="$repo/target/http-python"
venv="$repo/target/python-build-venv"

fail() {
    printf 'build.sh: %s\n' "$*" >&2
    exit 1
}

# One build at a time (tests run in parallel and each asks for the plugin): the others wait,
# then find it up to date.
mkdir -p "$repo/target"
exec 9>"$repo/target/http-python-build.lock"
flock 9 || fail "could not lock $repo/target/http-python-build.lock"

pinned="$(grep -E '^componentize-py==' "$requirements" | head -n1)"
[[ -n "$pinned" ]] || fail "no componentize-py==VERSION line in $requirements"
version="${pinned#componentize-py==}"

# The pinned version on PATH (CI installs it), else the venv under target/.
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
        || fail "could not install $pinned from PyPI; install it by hand with: $venv/bin/pip install $pinned"
fi

# Everything the component is made of: the plugin, the SDK, the contract and the tool version.
stamp_of() {
    {
        echo "$pinned"
        find "$here" "$sdk/switchboard_sdk" "$repo/wit" -maxdepth 1 -type f \
            \( -name '*.py' -o -name '*.wit' -o -name 'manifest.toml' \) -print0 \
            | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}
stamp="$(stamp_of)"
if [[ -f "$out/http.wasm" && -f "$out/http.toml" && "$(cat "$out/http.stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "build.sh: $out/http.wasm is up to date" >&2
    exit 0
fi

mkdir -p "$work" "$out"
rm -rf "$work/bindings"
# The generated `wit_world` package (also what an editor or type checker reads).
"$componentize" -d "$repo/wit" -w channel-plugin bindings "$work/bindings"
# --stub-wasi: CPython's WASI build imports wasi:sockets, which the host never links (a plugin
# reaches nothing outside its call but through the host's imports), so the component would be
# refused at load. The stubs replace every WASI import with a trap;
# the plugin uses only the switchboard imports (clock.now-ms, not time.time; no random).
"$componentize" -d "$repo/wit" -w channel-plugin componentize --stub-wasi \
    -p "$here" -p "$sdk" -p "$work/bindings" app -o "$work/http.wasm"
cp "$work/http.wasm" "$out/http.wasm"
cp "$here/manifest.toml" "$out/http.toml"
echo "$stamp" >"$out/http.stamp"
echo "build.sh: built $out/http.wasm ($(stat -c %s "$out/http.wasm") bytes)" >&2
