#!/usr/bin/env bash
# Runs every test: starts the engines they need and, when kube-local is at
# hand, a real Kubernetes cluster with one real node; then the whole
# workspace under cargo-nextest with all features.
#
# The real-cluster tests are ignored unless a cluster is given: this script
# starts one (stopped at the end, on failure too), or uses yours when
# KUBECONFIG and E2E_CONTAINERD_SOCKET (its node's containerd socket) are
# set. In CI (CI set) a missing cluster is an error, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
# Formatting first: it takes a second and needs no engine.
cargo fmt --all -- --check
bash scripts/engine.sh --all
# The example suite builds its images from the static stand-in services.
bash scripts/stand-ins.sh
cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest

cluster=()
if [[ -n "${E2E_CONTAINERD_SOCKET:-}" && -n "${KUBECONFIG:-}" ]]; then
  echo "test.sh: real-cluster tests against KUBECONFIG=$KUBECONFIG, containerd at $E2E_CONTAINERD_SOCKET"
  cluster=(--run-ignored all)
elif bash scripts/cluster.sh available x; then
  dir=$(mktemp -d /tmp/e2e-infra-cluster.XXXXXX)
  trap 'bash scripts/cluster.sh stop "$dir"; rm -rf "$dir"' EXIT
  eval "$(bash scripts/cluster.sh start "$dir")"
  echo "test.sh: started kube-local with a real node in $dir"
  cluster=(--run-ignored all)
elif [[ -n "${CI:-}" ]]; then
  echo "test.sh: CI is set but there is no cluster: no kube-local and no KUBECONFIG + E2E_CONTAINERD_SOCKET" >&2
  exit 1
else
  echo "test.sh: no cluster (no kube-local, KUBECONFIG + E2E_CONTAINERD_SOCKET unset): the real-cluster tests are skipped"
fi
# With --run-ignored all, the inside of the unshare tests stays out: it runs
# only when the test that drives it starts it, never as a test of its own.
cargo nextest run --workspace --all-features --no-fail-fast "${cluster[@]}" \
  -E 'not test(=inner_run_in_a_new_pid_namespace)' "$@"
