#!/usr/bin/env bash
# check_no_flight.sh PROGRAM LIBRARY: PROGRAM, linked with only shmarrow::shmarrow, loads no gRPC
# and no libarrow_flight; LIBRARY (libshmarrow, static or shared) refers to no Flight or gRPC
# symbol; and PROGRAM, asked for a Flight address, names the library that reads it.
set -euo pipefail
program=$1
library=$2
fail() { echo "check_no_flight: $*" >&2; exit 1; }

loaded=$(ldd "$program")
if grep -Ei 'grpc|arrow_flight|protobuf' <<<"$loaded"; then
  fail "$program loads the libraries above"
fi
grep -q 'libarrow\.so' <<<"$loaded" || fail "$program does not load libarrow: the check proves nothing"

undefined=$(nm -C --undefined-only "$library" 2>/dev/null)
[ -n "$undefined" ] || fail "nm found no undefined symbols in $library"
if grep -E 'arrow::flight|grpc' <<<"$undefined"; then
  fail "$library refers to the symbols above"
fi

set +e
answer=$("$program" grpc://127.0.0.1:1)
rc=$?
set -e
[ "$rc" = 1 ] || fail "$program grpc://127.0.0.1:1 exited $rc, expected 1"
grep -q 'link shmarrow::flight' <<<"$answer" || fail "unexpected answer: $answer"
echo "check_no_flight: $(basename "$program") and $(basename "$library") are free of Flight and gRPC"
