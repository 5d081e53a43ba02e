#!/usr/bin/env bash
# CMakePresets.json: cmake lists the four configure presets, each configures (into a scratch
# directory: nothing is built) with the settings scripts/bootstrap.sh and scripts/sanitize.sh use,
# and each names the build directory those scripts use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.venv/bin:$PATH"  # bootstrap's cmake, where the system's is too old
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() { echo "test_presets: $*" >&2; exit 1; }

listed=$(cmake --list-presets=configure)
# preset, binary directory, CMAKE_BUILD_TYPE, SHMARROW_SANITIZE
while read -r preset dir build_type sanitize; do
  grep -q "\"$preset\"" <<<"$listed" || fail "cmake --list-presets does not list '$preset'"
  cmake --preset "$preset" -B "$scratch/$preset" >"$scratch/$preset.log" 2>&1 ||
    { cat "$scratch/$preset.log" >&2; fail "configuring preset '$preset' failed"; }
  cache="$scratch/$preset/CMakeCache.txt"
  for expected in "CMAKE_BUILD_TYPE:STRING=$build_type" \
      "SHMARROW_PYTHON:FILEPATH=$root/.venv/bin/python" \
      "SHMARROW_SANITIZE:STRING=${sanitize#-}" "CMAKE_GENERATOR:INTERNAL=Ninja"; do
    grep -qxF "$expected" "$cache" || fail "preset '$preset': expected $expected in its cache"
  done
  binary_dir=$(.venv/bin/python -c 'import json, sys
print(next(p["binaryDir"] for p in json.load(open("CMakePresets.json"))["configurePresets"]
           if p["name"] == sys.argv[1]))' "$preset")
  [ "$binary_dir" = "\${sourceDir}/$dir" ] || fail "preset '$preset' builds in $binary_dir, not $dir"
done <<'TABLE'
dev     build          RelWithDebInfo -
release build-release  Release        -
asan    build-asan     RelWithDebInfo address,undefined
tsan    build-tsan     RelWithDebInfo thread
TABLE
echo "test_presets: 4 presets configure as the scripts do"
