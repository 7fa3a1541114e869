#!/usr/bin/env bash
# Builds tally in release mode and runs the benchmark; writes BENCHMARKS.md.
# PostgreSQL rows use TALLY_BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tally --example bench
target/release/examples/bench target/release/tally BENCHMARKS.md
