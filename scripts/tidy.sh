#!/usr/bin/env bash
# Runs clang-tidy with .clang-tidy over every source of src/ and tools/ that build/ compiles (their
# project headers included), with the clang-tidy that requirements.txt pins (installed in .venv by
# scripts/bootstrap.sh) and the flags of build/compile_commands.json. Exits non-zero on any
# finding. Two files at a time unless SHMARROW_TIDY_JOBS says otherwise.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
clang_tidy=.venv/bin/clang-tidy
database=build/compile_commands.json
for needed in "$clang_tidy" "$database"; do
  if [ ! -e "$needed" ]; then
    echo "tidy: $needed is missing; run scripts/bootstrap.sh" >&2
    exit 1
  fi
done
start=$SECONDS
mapfile -t files < <(.venv/bin/python - "$database" "$root" <<'PY'
import json, os, sys
database, root = sys.argv[1], sys.argv[2]
for entry in json.load(open(database)):
    path = os.path.relpath(os.path.join(entry["directory"], entry["file"]), root)
    if path.startswith(("src/", "tools/")):
        print(path)
PY
)
if [ ${#files[@]} -eq 0 ]; then
  echo "tidy: $database lists no file of src/ or tools/" >&2
  exit 1
fi
if printf '%s\n' "${files[@]}" |
    xargs -P "${SHMARROW_TIDY_JOBS:-2}" -n 1 "$clang_tidy" -p build --quiet; then
  echo "tidy: ${#files[@]} files clean in $((SECONDS - start)) s"
else
  echo "tidy: findings above (.clang-tidy lists the checks)" >&2
  exit 1
fi
