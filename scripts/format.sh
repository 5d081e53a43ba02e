#!/usr/bin/env bash
# Formats the project's C and C++ sources with .clang-format, using the clang-format that
# requirements.txt pins (installed in .venv by scripts/bootstrap.sh), so every machine formats alike.
#
#   scripts/format.sh           rewrites the files that differ
#   scripts/format.sh --check   changes nothing; lists the files that differ and exits 1 if any do
#
# The sources are the tracked and new (not ignored) .c/.cc/.h files under src/ include/ tools/
# tests/ bench/ fuzz/ examples/ python/src/; build trees, .venv and rust/ are never touched.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: scripts/format.sh [--check]" >&2; exit 2 ;;
esac
clang_format=.venv/bin/clang-format
if [ ! -x "$clang_format" ]; then
  echo "format: $clang_format is missing; run scripts/bootstrap.sh" >&2
  exit 1
fi

mapfile -t files < <(git ls-files --cached --others --exclude-standard -- \
  src include tools tests bench fuzz examples python/src | grep -E '\.(c|cc|h)$' | sort -u)
if [ ${#files[@]} -eq 0 ]; then
  echo "format: no C or C++ source found (not a git checkout?)" >&2
  exit 1
fi
if [ "$check" = 0 ]; then
  "$clang_format" -i --style=file "${files[@]}"
  exit 0
fi
differ=0
for file in "${files[@]}"; do
  if ! "$clang_format" --style=file "$file" | cmp -s - "$file"; then
    echo "$file"
    differ=$((differ + 1))
  fi
done
if [ "$differ" -gt 0 ]; then
  echo "format: $differ of ${#files[@]} files differ from .clang-format (scripts/format.sh fixes them)" >&2
  exit 1
fi
