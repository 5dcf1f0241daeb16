#!/usr/bin/env bash
# Runs the benchmarks and writes docs/benchmarks.md. Arguments go to the
# benchmark binary (`scripts/bench.sh --help` lists them), for instance
#
#   scripts/bench.sh --only 1,2 --reps 5 --load-mb 500
#
# Needs the Docker engine and the static busybox (scripts/engine.sh --all
# makes sure of both) and cargo-nextest for benchmark 5.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/engine.sh --all >/dev/null
cargo build --quiet -p e2e-infra-bench
# Run the binary itself rather than `cargo run`: benchmark 5 runs cargo in
# the same target directory.
exec target/debug/e2e-infra-bench "$@"
