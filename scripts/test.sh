#!/usr/bin/env bash
# The project's test command: ./scripts/test.sh
#   installs test dependencies, checks formatting and lints, checks the dependency arrows,
#   builds the binaries and runs every test of the workspace.
# CAIRN_SKIP_LINT=1 skips cargo fmt and cargo clippy (for local iteration).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

step() { printf '\n==> %s\n' "$*" >&2; }

step "install test dependencies"
./scripts/install-test-deps.sh

if [ "${CAIRN_SKIP_LINT:-0}" = "1" ]; then
    step "CAIRN_SKIP_LINT=1: skipping cargo fmt and cargo clippy"
else
    step "cargo fmt --all -- --check"
    cargo fmt --all -- --check

    step "cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
fi

step "dependency arrows: cairn-storage must not depend on tonic, prost, openraft or tokio"
tree="$(cargo tree -p cairn-storage -e normal --prefix none --format '{p}')"
forbidden="$(printf '%s\n' "${tree}" | awk '{print $1}' | grep -Ex 'tonic|prost|openraft|tokio' | sort -u || true)"
if [ -n "${forbidden}" ]; then
    echo "error: cairn-storage depends (normal dependencies, possibly transitively) on:" >&2
    printf '  %s\n' ${forbidden} >&2
    echo "storage must stay synchronous and free of tonic, prost, openraft and tokio (see DESIGN.md)." >&2
    echo "paths: run 'cargo tree -p cairn-storage -e normal -i <crate>' to see who pulls it in." >&2
    exit 1
fi

step "cargo build --workspace --bins"
cargo build --workspace --bins

# --no-fail-fast: run every test binary and report all failures, still exiting non-zero.
step "cargo test --workspace --no-fail-fast"
cargo test --workspace --no-fail-fast

# loom models of the watch hub: storage built with --cfg loom in its own target dir.
step "loom models (watch hub)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p cairn-storage --lib --release watch::loom
