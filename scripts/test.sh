#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, NATS and Redis: brings
# the infrastructure up, checks formatting and lints, builds the binaries the
# tests start, runs every test of the workspace, then fuzzes command bodies
# for a fixed number of runs (FUZZ_RUNS, 100000; 0 skips it) with cargo fuzz
# on the nightly toolchain, installing what is missing.
set -euo pipefail
source "$(dirname "$0")/common.sh"
FUZZ_RUNS=${FUZZ_RUNS:-100000}

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

if [ "$FUZZ_RUNS" != 0 ]; then
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        echo "[test] installing the nightly toolchain for cargo fuzz"
        rustup toolchain install nightly --profile minimal >/dev/null
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "[test] installing cargo-fuzz"
        cargo install cargo-fuzz --locked --quiet
    fi
    echo "[test] fuzzing command bodies ($FUZZ_RUNS runs)"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    # New inputs go to a scratch corpus; the committed seeds are only read.
    if ! (cd fuzz && cargo +nightly fuzz run parse_command \
            --target-dir "${CARGO_TARGET_DIR:-$ROOT/target}-fuzz" \
            "$scratch" seeds/parse_command -- -runs="$FUZZ_RUNS" -max_len=8192 -print_final_stats=1 \
            >"$scratch/log" 2>&1); then
        tail -40 "$scratch/log" >&2
        echo "[test] fuzzing failed; a crashing input is kept in fuzz/artifacts/parse_command" >&2
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|new_units_added)" "$scratch/log" || true
fi
