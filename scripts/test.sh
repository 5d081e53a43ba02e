#!/usr/bin/env bash
# Every test: the C++ suite (GoogleTest through CTest), the Python suite (pytest), bootstrap's
# decisions (scripts/test_bootstrap.sh), examples/ built against shmarrow three ways
# (scripts/test_examples.sh), the wheel in a new venv (scripts/test_wheel.sh), the Rust crate
# with its cross-implementation tests (scripts/test_rust.sh), the CMake presets
# (scripts/test_presets.sh) and clang-tidy over src/ and tools/ (scripts/tidy.sh), after building.
# With CI set, or SHMARROW_FUZZ=1, also a bounded fuzzing run (fuzz/run_bounded.sh: clang build of
# the libFuzzer targets in build-fuzz/, 20 s per target; docs/robustness.md), and with CI set, or
# SHMARROW_SANITIZE=1, both suites under ASan+UBSan and the C++ suite under TSan
# (scripts/sanitize.sh: build-asan/, build-tsan/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/bootstrap.sh"
cd "$root"
export PATH="$root/.venv/bin:$PATH"  # bootstrap's cmake, where the system's is too old
ctest --test-dir build --output-on-failure -j 2
SHMARROW_BUILD="$root/build" .venv/bin/python -m pytest -q tests/python
"$root/scripts/test_rust.sh"
"$root/scripts/test_bootstrap.sh"
"$root/scripts/test_examples.sh"
"$root/scripts/test_wheel.sh"
"$root/scripts/test_presets.sh"
"$root/scripts/tidy.sh"
"$root/scripts/format.sh" --check
if [ -n "${CI:-}" ] || [ "${SHMARROW_FUZZ:-0}" = 1 ]; then
  "$root/fuzz/run_bounded.sh"
fi
if [ -n "${CI:-}" ] || [ "${SHMARROW_SANITIZE:-0}" = 1 ]; then
  "$root/scripts/sanitize.sh" asan
  "$root/scripts/sanitize.sh" tsan
fi
