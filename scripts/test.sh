#!/usr/bin/env bash
# Every test: the C++ suite (GoogleTest through CTest) and the Python suite (pytest), after building.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/bootstrap.sh"
cd "$root"
ctest --test-dir build --output-on-failure -j 2
SHMARROW_BUILD="$root/build" .venv/bin/python -m pytest -q tests/python
