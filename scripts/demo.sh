#!/usr/bin/env bash
# The demo: a C++ producer builds a batch in shared memory and serves it; the C++ consumer and the
# Python consumer (pyarrow only) each receive the sealed memfd and print the same report.
# Installs and builds only what it runs (scripts/bootstrap.sh --demo): the Python package, whose
# build includes the `shmarrow` command (.venv/bin/shmarrow).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/bootstrap.sh" --demo
cd "$root"
sock=$(mktemp -u /tmp/shmarrow-demo.XXXXXX.sock)
.venv/bin/shmarrow send --socket "$sock" --clients 2 "$@" &
producer=$!
trap 'kill $producer 2>/dev/null || true' EXIT
echo "== C++ consumer: shmarrow recv =="
.venv/bin/shmarrow recv --socket "$sock" --connect-timeout-ms 10000
echo
echo "== Python consumer: python -m shmarrow.recv =="
.venv/bin/python -m shmarrow.recv --socket "$sock" --connect-timeout-ms 10000
wait $producer
trap - EXIT
