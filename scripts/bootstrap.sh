#!/usr/bin/env bash
# Makes a fresh machine ready: Debian build tools, the project's virtual environment (.venv) with the
# pinned pyarrow, and a build of the C++ library, tool and tests in build/. Safe to run again: each
# step is skipped when its result is already there and up to date.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
command -v ninja >/dev/null || need_apt+=(ninja-build)
[ -f /usr/include/gtest/gtest.h ] || need_apt+=(libgtest-dev)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python packages (requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
# The shmarrow package itself (pure-Python modules and the compiled binding), rebuilt
# incrementally in build-python/ whenever the sources changed.
echo "bootstrap: building the Python package"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
  -e . -C build-dir=build-python

build_type=${SHMARROW_BUILD_TYPE:-RelWithDebInfo}
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DSHMARROW_PYTHON="$root/.venv/bin/python" >/dev/null
fi
cmake --build build -j "$(nproc)"
