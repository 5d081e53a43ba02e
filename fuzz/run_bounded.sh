#!/usr/bin/env bash
# Bounded fuzzing run (CI): builds the libFuzzer targets of fuzz/ with clang into build-fuzz/ and runs
# each for a bounded time over its seed corpus, failing on any crash, sanitizer report, leak,
# timeout or out-of-memory. Without clang it installs it through apt when running as root, and
# otherwise skips with a message (exit 0). Needs the project's .venv (scripts/bootstrap.sh).
#
#   fuzz/run_bounded.sh [SECONDS_PER_TARGET]     (default: $SHMARROW_FUZZ_SECONDS or 20)
#   SHMARROW_FUZZ_TARGETS="ring_fuzz" fuzz/run_bounded.sh 60
#
# New inputs found accumulate in build-fuzz/corpus/<target>/ (not committed); crashing inputs are
# written to build-fuzz/artifacts/. Reproduce one with: build-fuzz/fuzz/<target> <file>.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-${SHMARROW_FUZZ_SECONDS:-20}}
targets=${SHMARROW_FUZZ_TARGETS:-"protocol_fuzz flatbuffer_fuzz stream_fuzz ring_fuzz session_fuzz handshake_fuzz"}
start=$SECONDS

find_clang() {
  for v in "" -19 -18 -17 -16 -15 -14; do
    if command -v "clang++$v" >/dev/null && command -v "clang$v" >/dev/null; then
      local dir
      dir=$("clang$v" -print-resource-dir 2>/dev/null) || continue
      # libFuzzer's runtime ships separately (libclang-rt-N-dev on Debian 12).
      if compgen -G "$dir/lib/*/libclang_rt.fuzzer*.a" >/dev/null; then
        echo "$v"
        return 0
      fi
    fi
  done
  return 1
}

if ! suffix=$(find_clang); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "fuzz: installing clang and its runtimes (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends clang >/dev/null
    major=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n 1)
    apt-get install -y -qq --no-install-recommends "libclang-rt-$major-dev" >/dev/null 2>&1 || true
    suffix=$(find_clang) || { echo "fuzz: clang installed but no libFuzzer runtime found" >&2; exit 1; }
  else
    echo "fuzz: SKIPPED: no clang with libFuzzer (install clang and libclang-rt-<N>-dev, or run as root)"
    exit 0
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "fuzz: no .venv: run scripts/bootstrap.sh first" >&2
  exit 1
fi

echo "fuzz: building with clang$suffix into build-fuzz/"
if [ ! -f build-fuzz/build.ninja ]; then
  CC="clang$suffix" CXX="clang++$suffix" cmake -S . -B build-fuzz -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHMARROW_PYTHON="$root/.venv/bin/python" \
    -DSHMARROW_BUILD_FUZZ=ON -DSHMARROW_BUILD_TESTS=OFF -DSHMARROW_BUILD_BENCH=OFF >/dev/null
fi
# shellcheck disable=SC2086
cmake --build build-fuzz -j "$(nproc)" --target $targets
echo "fuzz: built in $((SECONDS - start)) s"

# Every committed seed of the targets built first (the regression inputs among them), then the
# fuzzing proper.
ARROW_DEFAULT_MEMORY_POOL=system ctest --test-dir build-fuzz --output-on-failure -j "$(nproc)" \
  -R "^(${targets// /|})_replay\$"

# Extra seeds for the stream target: small IPC streams of ../shared/arrow-testing (integration
# files, and Arrow's own clusterfuzz regressions), copied to a temporary directory, never committed.
extra=$(mktemp -d)
trap 'rm -rf "$extra"' EXIT
testing="$root/../shared/arrow-testing/arrow-ipc-stream"
if [ -d "$testing" ]; then
  find "$testing" -type f \( -name '*.stream' -o -name 'clusterfuzz-*' \) -size -20k -print0 |
    while IFS= read -r -d '' f; do cp "$f" "$extra/$(echo "$f" | sha1sum | cut -c1-16)"; done
fi

# libarrow allocates with malloc, so ASan sees Arrow's buffers too; Arrow itself is not instrumented.
export ARROW_DEFAULT_MEMORY_POOL=system
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p build-fuzz/artifacts build-fuzz/logs
failed=()
for target in $targets; do
  work="build-fuzz/corpus/$target"
  mkdir -p "$work"
  dirs=("$work" "fuzz/corpus/$target")
  [ "$target" = stream_fuzz ] && dirs+=("$extra")
  log="build-fuzz/logs/$target.log"
  if "build-fuzz/fuzz/$target" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 \
      -print_final_stats=1 -artifact_prefix="build-fuzz/artifacts/$target-" "${dirs[@]}" >"$log" 2>&1; then
    summary=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -n 1 | sed 's/ MS:.*//')
    echo "fuzz: $target ok: $summary"
  else
    echo "fuzz: $target FAILED; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    failed+=("$target")
  fi
done
echo "fuzz: done in $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in build-fuzz/artifacts/)" >&2
  exit 1
fi
