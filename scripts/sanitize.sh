#!/usr/bin/env bash
# The test suites under sanitizers (docs/robustness.md, "Sanitizers"):
#
#   scripts/sanitize.sh asan   gcc's AddressSanitizer + UndefinedBehaviorSanitizer in build-asan/:
#                              the whole C++ suite (CTest), then the Python suite driving the
#                              instrumented `shmarrow` tool (SHMARROW_BUILD=build-asan)
#   scripts/sanitize.sh tsan   ThreadSanitizer in build-tsan/: the C++ suite but the tests that
#                              fork children which start threads, or count mappings
#
# Every target of the build is instrumented (cmake/ShmarrowSanitize.cmake) and the first report
# fails the test that made it. libarrow is the pyarrow wheel's, not instrumented:
# ARROW_DEFAULT_MEMORY_POOL=system routes its allocations through malloc, which ASan intercepts.
# Needs the project's .venv (scripts/bootstrap.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kind=${1:-asan}
case "$kind" in
  asan) sanitizers=address,undefined ;;
  tsan) sanitizers=thread ;;
  *) echo "usage: scripts/sanitize.sh [asan|tsan]" >&2; exit 2 ;;
esac
dir=build-$kind
start=$SECONDS

if [ ! -f "$dir/build.ninja" ]; then
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSHMARROW_PYTHON="$root/.venv/bin/python" -DSHMARROW_SANITIZE="$sanitizers" \
    -DSHMARROW_BUILD_BENCH=OFF >/dev/null
fi
export ARROW_DEFAULT_MEMORY_POOL=system
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp"
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$root/tests/tsan.supp"

if [ "$kind" = tsan ]; then
  cmake --build "$dir" -j "$(nproc)" --target shmarrow_tests
  # One process for the whole suite: TSan's start-up makes one per test (CTest) take ~25x longer.
  # Left out: tests whose forked children start threads (TSan cannot, after a fork of a
  # multithreaded process, which its own helper thread makes every process), the one that
  # counts mappings (TSan's runtime adds some), and the Flight tests (gRPC's threads and
  # containers inside the uninstrumented libarrow_flight make TSan report on their memory).
  "$dir/tests/cpp/shmarrow_tests" \
    --gtest_filter='-*ResourceLimits*:*CrashMatrix*:*Killed*:*FdLimit*:*LifecycleLeaksNoFdsOrMappings*:FlightTest.*:*RequestBacklogNeverCostsTheProducerItsFds*'
else
  cmake --build "$dir" -j "$(nproc)"
  ctest --test-dir "$dir" --output-on-failure -j 2
  # Not under ASan: the heap proof (its LD_PRELOAD malloc counter and ASan both replace malloc)
  # and the soak's RSS bounds (ASan's quarantine holds freed memory by design).
  SHMARROW_BUILD="$root/$dir" .venv/bin/python -m pytest -q tests/python \
    --ignore=tests/python/test_soak.py \
    --deselect tests/python/test_proof.py::test_building_publishing_and_reading_256_mib_allocates_under_1_mib_of_heap \
    --deselect tests/python/test_proof.py::test_interposer_control_heap_built_column_counts_256_mib \
    --deselect tests/python/test_proof.py::test_cli_send_and_recv_whole_process_heap_stays_small
fi
echo "sanitize: $kind passed in $((SECONDS - start)) s"
