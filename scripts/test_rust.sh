#!/usr/bin/env bash
# The Rust crate (rust/): rustfmt, clippy, its own tests, then the cross-implementation tests against the
# C++ producer (tests/python/test_rust_interop.py). Needs cargo; without it, says so and skips.
# Run from anywhere; uses build/ (the C++ tool) and .venv (pytest, pyarrow) of the repository.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/rust"

if ! command -v cargo >/dev/null; then
  echo "test_rust: skipped: cargo is not installed (https://rustup.rs), so the Rust crate is not tested"
  exit 0
fi
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
export SHMARROW_CLI=${SHMARROW_CLI:-$root/build/shmarrow}

cargo fmt --check
cargo clippy --release --all-targets --locked -- -D warnings
cargo test --release --locked
cargo build --release --locked --bins --examples

cd "$root"
SHMARROW_RUST_BIN="$root/rust/target/release/shmarrow-rs" "$root/.venv/bin/python" -m pytest -q tests/python/test_rust_interop.py "$@"
