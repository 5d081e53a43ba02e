#!/usr/bin/env bash
# examples/, a CMake project of its own, built against shmarrow the three ways a user would
# (find_package from `cmake --install build --prefix`, add_subdirectory of the checkout, FetchContent
# of a source archive of the checkout), and for each: its producer hands a batch to its consumer.
# Also a program compiled with `pkg-config shmarrow-flight` alone. Needs build/ (scripts/bootstrap.sh).
# Work files in build-examples/ (kept: reruns are incremental).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work="$root/build-examples"
python="$root/.venv/bin/python"  # its pyarrow: Arrow C++ for the source builds
mkdir -p "$work"

rm -rf "$work/prefix"
cmake --install build --prefix "$work/prefix" >/dev/null
"$work/prefix/bin/shmarrow" --help >/dev/null  # the installed CLI finds its libraries
# The archive FetchContent downloads: the checkout's files (tracked and new, not ignored ones).
git ls-files -z --cached --others --exclude-standard |
  tar --null -T - -czf "$work/shmarrow.tar.gz.new"
# FetchContent extracts an archive once per URL: a changed one needs a fresh build directory.
if ! cmp -s "$work/shmarrow.tar.gz.new" "$work/shmarrow.tar.gz"; then
  mv "$work/shmarrow.tar.gz.new" "$work/shmarrow.tar.gz"
  rm -rf "$work/fetch_content"
fi
rm -f "$work/shmarrow.tar.gz.new"

# run_pair DIR: the producer of DIR serves one batch, its consumer reads it.
run_pair() {
  local socket="@shmarrow-examples-$$-$1"
  "$work/$1/producer" "$socket" 2>/dev/null &
  local producer=$!
  local answer
  answer=$("$work/$1/consumer" "$socket")
  wait "$producer"
  # 1000 rows of i*i: sum 332833500
  [ "$answer" = "rows: 1000 sum: 332833500" ] || { echo "test_examples: $1: '$answer'" >&2; exit 1; }
  echo "test_examples: $1: $answer"
}

build() {
  local way=$1
  shift
  cmake -S examples -B "$work/$way" -G Ninja "$@" >/dev/null
  cmake --build "$work/$way" -j 2 >/dev/null
  run_pair "$way"
}
build find_package -DCMAKE_PREFIX_PATH="$work/prefix"
build add_subdirectory -DSHMARROW_SOURCE_DIR="$root" -DSHMARROW_PYTHON="$python"
build fetch_content -DSHMARROW_URL="file://$work/shmarrow.tar.gz" -DSHMARROW_PYTHON="$python"

# pkg-config: the consumer from the flags of the installed .pc files alone.
# shellcheck disable=SC2046
g++ -std=c++20 -o "$work/pkg_config_consumer" examples/consumer.cc \
  $(PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" pkg-config --cflags --libs shmarrow-flight)
mkdir -p "$work/pkg_config"
mv "$work/pkg_config_consumer" "$work/pkg_config/consumer"
cp "$work/find_package/producer" "$work/pkg_config/producer"
run_pair pkg_config
