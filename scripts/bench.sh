#!/usr/bin/env bash
# Runs the benchmarks and writes docs/benchmarks.md. Arguments go to the
# benchmark binary (`scripts/bench.sh --help` lists them), for instance
#
#   scripts/bench.sh --only 1,2 --reps 5 --load-mb 500
#
# Needs the Docker engine and the static busybox (scripts/engine.sh --all
# makes sure of both), cargo-nextest for benchmark 5, and a cluster for
# benchmarks 6 and 9: KUBECONFIG (and E2E_KUBE_CONTEXT) if set, else
# kube-local, started here and stopped at the end. A cluster already running
# is used when KUBECONFIG names it; benchmark 7 also loads into its node when
# E2E_CONTAINERD_SOCKET is set, and benchmark 9 needs it (cluster.sh prints
# all three). Benchmark 9 alone, on the cluster of /tmp/e2e-cluster.env:
#
#   source /tmp/e2e-cluster.env && scripts/bench.sh --only 9 --tests 8
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/engine.sh --all >/dev/null
if [[ -n "${KUBECONFIG:-}" ]]; then
  echo "bench.sh: using the cluster of KUBECONFIG=$KUBECONFIG${E2E_CONTAINERD_SOCKET:+, node containerd $E2E_CONTAINERD_SOCKET}" >&2
elif bash scripts/cluster.sh available x; then
  dir=$(mktemp -d /tmp/e2e-infra-bench.XXXXXX)
  trap 'bash scripts/cluster.sh stop "$dir"; rm -rf "$dir"' EXIT
  eval "$(bash scripts/cluster.sh start "$dir")"
fi
cargo build --quiet -p e2e-infra-bench
# Run the binary itself rather than `cargo run`: benchmark 5 runs cargo in
# the same target directory.
"${CARGO_TARGET_DIR:-target}/debug/e2e-infra-bench" "$@"
