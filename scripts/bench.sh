#!/usr/bin/env bash
# Runs the benchmarks and writes docs/benchmarks.md. Arguments go to the
# benchmark binary (`scripts/bench.sh --help` lists them), for instance
#
#   scripts/bench.sh --only 1,2 --reps 5 --load-mb 500
#
# The load and warm benchmarks (1, 2, 4, 7) run on every engine at hand,
# each against `docker save | ctr import` on that same engine, and their
# tables hold one row per engine: the system engine (DOCKER_HOST, else the
# default socket) and Docker 29 on its containerd image store (engine-current,
# which scripts/engine.sh --all starts). E2E_BENCH_ENGINES overrides the
# list (DOCKER_HOST addresses separated by commas; `default` is the system
# engine). The other benchmarks run on the system engine. The page and the
# output open with every target of the issue's list (cold load into 1 and
# 3 nodes against the pipelines, reload against the change alone, the
# loader's warm overhead, peak RSS at 2 GiB), one column per engine.
#
# The defaults are the full-size case: a 300 MiB image loaded into 1 and 3
# nodes, a 300 MiB base under the reloaded layer, and the memory measured
# at 50 MiB and 2 GiB. The loader's figures alone, into a page of their own:
#
#   scripts/bench.sh --only 1,2,4,7 --out /tmp/loader-benchmarks.md
#
# A quicker look (figures not for the docs): --load-mb 50 --delta-base-mb 50
# --memory-mb 50 --load-reps 1.
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
#
# Benchmark 10 needs a registry the node pulls from: with the cluster it
# starts, this script starts one (scripts/registry.sh) and gives the node
# its CA (scripts/cluster.sh registry); with yours, export what
# `scripts/registry.sh start DIR` prints, else its table says it was not run.
# It pushes the example's images: run scripts/example.sh first.
#
# Benchmark 11 runs CI shards: 2 and 4 `cargo nextest run --partition`
# commands, each in a PID namespace of its own (unshare) with its own state
# root, taking turns on the system engine and Docker 29, sharing one stack
# on the cluster against a stack each; it counts setups and wall time:
#
#   source /tmp/e2e-cluster.env && scripts/bench.sh --only 11 --out /tmp/shards.md
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/kits.sh

scripts/engine.sh --all >/dev/null
if [[ -n "${KUBECONFIG:-}" ]]; then
  echo "bench.sh: using the cluster of KUBECONFIG=$KUBECONFIG${E2E_CONTAINERD_SOCKET:+, node containerd $E2E_CONTAINERD_SOCKET}" >&2
elif bash scripts/cluster.sh available; then
  dir=$(mktemp -d /tmp/e2e-infra-bench.XXXXXX)
  trap 'bash scripts/registry.sh stop "$dir/registry" || true; bash scripts/cluster.sh stop "$dir"; rm -rf "$dir"' EXIT
  # Assigned first: a failed start then stops this script (eval would not).
  started=$(bash scripts/cluster.sh start "$dir")
  eval "$started"
  if [[ -z "${E2E_REGISTRY:-}" ]]; then
    started=$(bash scripts/registry.sh start "$dir/registry")
    eval "$started"
    bash scripts/cluster.sh registry "$dir/debian/node" "$E2E_REGISTRY_HOSTS_DIR" "${E2E_REGISTRY%:*}"
  fi
fi
cargo build --quiet -p e2e-infra-bench
# Run the binary itself rather than `cargo run`: benchmark 5 runs cargo in
# the same target directory.
if [[ -z "${E2E_BENCH_ENGINES:-}" ]]; then
  E2E_BENCH_ENGINES=default
  if answers "$engines_dir/docker29/docker.sock"; then E2E_BENCH_ENGINES+=",$(current_host docker29)"; fi
fi
export E2E_BENCH_ENGINES
echo "bench.sh: load and warm benchmarks on E2E_BENCH_ENGINES=$E2E_BENCH_ENGINES" >&2
"${CARGO_TARGET_DIR:-target}/debug/e2e-infra-bench" "$@"
