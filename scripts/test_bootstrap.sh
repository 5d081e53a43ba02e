#!/usr/bin/env bash
# The decisions of scripts/bootstrap.sh, with fake commands first on PATH: apt-get runs as root
# directly, through sudo otherwise, and a clear message says what to do when neither works (also
# as the real user nobody, where this machine has no sudo); a cmake older than 3.25 or none is
# replaced; only the full mode needs GoogleTest.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bootstrap.sh
source "$root/scripts/bootstrap.sh"
set +e
shims=$(mktemp -d)
trap 'rm -rf "$shims"' EXIT
failures=0
check() {  # check DESCRIPTION COMMAND...: passes when COMMAND succeeds
  local description=$1
  shift
  if "$@"; then echo "ok: $description"; else echo "FAILED: $description" >&2; failures=$((failures + 1)); fi
}
fails() { ! "$@"; }
shim() {  # shim NAME BODY: a fake command in $shims/bin
  mkdir -p "$shims/bin"
  printf '#!/bin/bash\n%s\n' "$2" > "$shims/bin/$1"
  chmod +x "$shims/bin/$1"
}
log="$shims/log"
fake_path="$shims/bin:$PATH"

# apt-get as root: directly.
shim id 'echo 0'
shim apt-get "echo \"apt-get \$*\" >> $log"
shim sudo "echo \"sudo \$*\" >> $log; \"\$@\""
PATH="$fake_path" as_root apt-get install -y g++
check "root runs apt-get itself" [ "$(cat "$log")" = "apt-get install -y g++" ]

# Not root, sudo there: through sudo.
: > "$log"
shim id 'echo 1000'
PATH="$fake_path" as_root apt-get install -y g++
check "a user runs apt-get through sudo" \
  [ "$(cat "$log")" = "$(printf 'sudo apt-get install -y g++\napt-get install -y g++')" ]

# Not root, sudo refuses: fails, saying what to run.
shim sudo 'exit 1'
message=$(PATH="$fake_path" as_root apt-get install -y g++ 2>&1)
check "a refused sudo fails" [ $? -ne 0 ]
check "a refused sudo names the command" \
  grep -q "'sudo apt-get install -y g++' failed; run it as root yourself" <<<"$message"

# Not root, no sudo: fails, saying what to run as root.
rm "$shims/bin/sudo"
message=$(PATH="$shims/bin" as_root apt-get install -y g++ 2>&1)
check "no sudo fails" [ $? -ne 0 ]
check "no sudo says to run the command as root" \
  grep -q "not root and no sudo: as root, run 'apt-get install -y g++'" <<<"$message"

# The same as a real unprivileged user, where this machine lets root become one and has no sudo.
if [ "$(id -u)" = 0 ] && ! command -v sudo >/dev/null && su nobody -s /bin/bash -c true 2>/dev/null; then
  message=$(su nobody -s /bin/bash -c \
    "source '$root/scripts/bootstrap.sh'; as_root apt-get install -y g++" 2>&1)
  check "user nobody without sudo fails" [ $? -ne 0 ]
  check "user nobody is told to run the command as root" \
    grep -q "not root and no sudo" <<<"$message"
else
  echo "skipped: the check as user nobody (needs root, su and no sudo)"
fi

# cmake: at least 3.25, else replaced.
for version in 3.22.1 3.24.4 3.3.0; do
  shim cmake "echo 'cmake version $version'"
  check "cmake $version is replaced" fails env PATH="$fake_path" bash -c \
    "source '$root/scripts/bootstrap.sh'; cmake_is_recent"
done
for version in 3.25.0 3.25.1 3.31.6 4.0.2; do
  shim cmake "echo 'cmake version $version'"
  check "cmake $version is kept" env PATH="$fake_path" bash -c \
    "source '$root/scripts/bootstrap.sh'; cmake_is_recent"
done
rm "$shims/bin/cmake"
check "no cmake is replaced" fails env PATH="$shims/bin" /bin/bash -c \
  "source '$root/scripts/bootstrap.sh'; cmake_is_recent"

# GoogleTest, when missing: for the tests, never for the demo.
gtest_header="$shims/none/gtest.h"
check "the tests need GoogleTest" grep -qx libgtest-dev <(missing_debian_packages full)
check "the demo needs no GoogleTest" fails grep -q libgtest-dev <(missing_debian_packages demo)
check "an unknown option is refused" [ "$(main --bogus 2>&1; echo $?)" = "$(printf 'usage: scripts/bootstrap.sh [--demo]\n2')" ]

[ "$failures" = 0 ] || { echo "test_bootstrap: $failures failed" >&2; exit 1; }
echo "test_bootstrap: all passed"
