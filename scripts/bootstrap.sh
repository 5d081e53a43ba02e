#!/usr/bin/env bash
# Makes a fresh machine ready, for everything (default: the C++ library, CLI, tests and benchmarks
# in build/, all Python packages) or with --demo for scripts/demo.sh only (no GoogleTest, no test
# or benchmark packages; the Python package, whose build includes the `shmarrow` command, and
# nothing in build/).
# Steps: missing Debian packages (apt-get as root, or through sudo); the project's virtual
# environment .venv with the pinned Python packages; cmake and ninja from PyPI into .venv where the
# system's cmake is older than 3.25; the Python package (editable, built in build-python/); build/.
# Safe to run again: each step is skipped when its result is already there and up to date.
# Sourced (by scripts/test_bootstrap.sh) it only defines its functions.
set -euo pipefail

readonly min_cmake=3.25
gtest_header=/usr/include/gtest/gtest.h  # what libgtest-dev installs

# Runs a command as root: directly when root, else through sudo; says what to do when neither works.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@" || {
      echo "bootstrap: 'sudo $*' failed; run it as root yourself, then rerun bootstrap" >&2
      return 1
    }
  else
    echo "bootstrap: not root and no sudo: as root, run '$*', then rerun bootstrap" >&2
    return 1
  fi
}

# True when `cmake` exists and is at least $min_cmake.
cmake_is_recent() {
  command -v cmake >/dev/null || return 1
  local version
  version=$(cmake --version | sed -n 's/^cmake version \([0-9][0-9.]*\).*/\1/p')
  [ -n "$version" ] &&
    [ "$(printf '%s\n%s\n' "$min_cmake" "$version" | sort -V | head -n1)" = "$min_cmake" ]
}

# The Debian packages missing for `mode` (demo or full), one per line.
missing_debian_packages() {
  local mode=$1
  # cmake and ninja come from PyPI instead when the system's are missing or too old.
  command -v g++ >/dev/null || echo g++
  command -v python3 >/dev/null || echo python3
  python3 -c 'import venv, ensurepip' 2>/dev/null || echo python3-venv
  if [ "$mode" = full ]; then
    [ -f "$gtest_header" ] || echo libgtest-dev
    command -v strace >/dev/null || echo strace  # bench/run counts system calls per batch with it
  fi
}

install_debian_packages() {
  local packages
  mapfile -t packages < <(missing_debian_packages "$1")
  [ ${#packages[@]} -gt 0 ] || return 0
  echo "bootstrap: installing Debian packages: ${packages[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
}

# pip install -r FILE into .venv unless FILE (and what it includes) is installed already.
install_requirements() {
  local file=$1 stamp want
  stamp=".venv/.$(basename "$file").sha"
  want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing Python packages ($file)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$file"
    echo "$want" > "$stamp"
  fi
}

main() {
  local mode=full
  case "${1:-}" in
    --demo) mode=demo ;;
    "") ;;
    *) echo "usage: scripts/bootstrap.sh [--demo]" >&2; return 2 ;;
  esac
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cd "$root"

  install_debian_packages "$mode"
  if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv"
    python3 -m venv .venv
  fi
  # The venv's cmake and ninja (if any) win over the system's from here on, here and for the
  # scripts that run this one.
  export PATH="$root/.venv/bin:$PATH"
  if ! cmake_is_recent || ! command -v ninja >/dev/null; then
    install_requirements requirements-cmake.txt
  fi
  if [ "$mode" = demo ]; then
    install_requirements requirements-demo.txt
  else
    install_requirements requirements.txt
  fi

  # The shmarrow package itself (pure-Python modules, the compiled binding and the `shmarrow`
  # command), rebuilt incrementally in build-python/ whenever the sources changed.
  echo "bootstrap: building the Python package"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
    -e . -C build-dir=build-python
  [ "$mode" = full ] || return 0

  local build_type=${SHMARROW_BUILD_TYPE:-RelWithDebInfo}
  if [ ! -f build/build.ninja ]; then
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="$build_type" \
      -DSHMARROW_PYTHON="$root/.venv/bin/python" >/dev/null
  fi
  cmake --build build -j "$(nproc)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
