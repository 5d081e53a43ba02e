#!/usr/bin/env bash
# The wheel as a user gets it: `pip wheel .` builds it (without build isolation, from the pinned
# build requirements in .venv, so that reruns are incremental in build-wheel/), a new venv holding
# only the wheel's dependencies (pinned by requirements-demo.txt, from the pip cache or PyPI)
# installs it with `pip install --no-index --find-links`, and then: import, a Producer/Consumer pair in Python,
# `shmarrow --help` and a send/recv pair with the venv's `shmarrow` command, which must load the
# libarrow of the venv's pyarrow. Needs .venv (scripts/bootstrap.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work="$root/build-wheel-test"
rm -rf "$work"
mkdir -p "$work"
pip=(-m pip --disable-pip-version-check -q)

.venv/bin/python "${pip[@]}" wheel --no-deps --no-build-isolation -w "$work/dist" . \
  -C build-dir=build-wheel
wheel=$(ls "$work"/dist/shmarrow-*.whl)
metadata=$(unzip -p "$wheel" '*.dist-info/METADATA')
grep -qx 'Requires-Dist: pyarrow<27,>=26' <<<"$metadata" ||
  { echo "test_wheel: the wheel does not require the pyarrow major it links:" >&2;
    grep '^Requires-Dist' <<<"$metadata" >&2; exit 1; }
version=$(sed -n 's/^project(shmarrow VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
grep -qx "Version: $version" <<<"$metadata" ||
  { echo "test_wheel: the wheel's version is not CMakeLists.txt's $version" >&2; exit 1; }

python3 -m venv "$work/venv"
venv_python="$work/venv/bin/python"
# The wheel's own requirements (not its extras), at the versions the project pins.
mapfile -t requires < <(sed -n 's/^Requires-Dist: \([^;]*\)$/\1/p' <<<"$metadata")
"$venv_python" "${pip[@]}" install -c requirements-demo.txt "${requires[@]}"
"$venv_python" "${pip[@]}" install --no-index --find-links "$work/dist" shmarrow

cd "$work"  # away from the checkout's python/ directory
SHMARROW_EXPECTED_VERSION=$version timeout 60 "$venv_python" - <<'PY'
import os
import pyarrow as pa
import shmarrow

address = f"@shmarrow-wheel-{os.getpid()}"
schema = pa.schema([("x", pa.int64())])
producer = shmarrow.Producer(address, schema)
consumer = shmarrow.Consumer(address)
producer.publish(pa.record_batch([pa.array(range(1000))], schema=schema))
producer.end()
table = pa.Table.from_batches(list(consumer), schema=schema)
assert table.column("x").to_pylist() == list(range(1000)), table
assert shmarrow.__file__.startswith(os.getcwd()), shmarrow.__file__  # the installed package
assert shmarrow.__version__ == os.environ["SHMARROW_EXPECTED_VERSION"], shmarrow.__version__
print(f"test_wheel: shmarrow {shmarrow.__version__}: Producer -> Consumer, {table.num_rows} rows")
PY

cli="$work/venv/bin/shmarrow"
"$cli" --help >/dev/null
libarrow=$(ldd "$work"/venv/lib/python3*/site-packages/shmarrow/bin/shmarrow | grep 'libarrow\.so')
[[ "$libarrow" == *"$work/venv/"* ]] || { echo "test_wheel: the CLI loads $libarrow" >&2; exit 1; }
socket="@shmarrow-wheel-cli-$$"
"$cli" send --socket "$socket" >/dev/null &
sender=$!
"$cli" recv --socket "$socket" --connect-timeout-ms 10000 --json >"$work/recv.json"
wait "$sender"
grep -q '"rows":100' "$work/recv.json" ||
  { echo "test_wheel: shmarrow recv printed:" >&2; cat "$work/recv.json" >&2; exit 1; }
echo "test_wheel: $(basename "$wheel"): installed without a build, CLI send -> recv works"
