#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, NATS and Redis: brings
# the infrastructure up, checks formatting and lints, builds the binaries the
# tests start, and runs every test of the workspace.
set -euo pipefail
source "$(dirname "$0")/common.sh"

scripts/infra.sh
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "[test] building binaries"
cargo build --workspace --bins --quiet
echo "[test] running tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
