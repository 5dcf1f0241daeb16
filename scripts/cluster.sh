#!/usr/bin/env bash
# A real Kubernetes cluster for the tests and the main job: kube-local's
# control plane plus one real node (a kubelet with its own containerd).
#
#   scripts/cluster.sh start DIR   starts it; prints the variables to export
#   scripts/cluster.sh stop DIR    stops what `start DIR` started
#
# kube-local is looked for in $KUBE_LOCAL, then next to the checkout
# (../shared/kube-local). Its ports are fixed: one cluster per machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "cluster.sh: $*" >&2; exit 1; }

kube_local() {
  local candidate
  for candidate in "${KUBE_LOCAL:-}" "$root/../shared/kube-local"; do
    if [[ -n "$candidate" && -x "$candidate/cluster.sh" ]]; then
      (cd "$candidate" && pwd)
      return 0
    fi
  done
  return 1
}

cmd=${1:-}; dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || die "usage: scripts/cluster.sh start|stop DIR"
case "$cmd" in
  available)
    kube_local >/dev/null ;;
  start)
    kl=$(kube_local) || die "no kube-local found (set KUBE_LOCAL or put it at ../shared/kube-local)"
    if curl -sk --max-time 2 https://127.0.0.1:16443/readyz >/dev/null 2>&1; then
      die "an API server already listens on 127.0.0.1:16443 (kube-local's fixed port); stop that cluster first"
    fi
    mkdir -p "$dir"
    NODES=0 "$kl/cluster.sh" start "$dir/cluster" >"$dir/start.log" 2>&1 \
      || die "the control plane did not start; see $dir/start.log and $dir/cluster/*.log"
    "$kl/real-node.sh" start "$dir/cluster" "$dir/node" >>"$dir/start.log" 2>&1 \
      || die "the real node did not start; see $dir/start.log and $dir/node/*.log"
    echo "export KUBECONFIG=$dir/cluster/kubeconfig E2E_KUBE_CONTEXT=local E2E_CONTAINERD_SOCKET=$dir/node/containerd.sock" ;;
  stop)
    kl=$(kube_local) || die "no kube-local found"
    [[ -d "$dir/node" ]] && "$kl/real-node.sh" stop "$dir/cluster" "$dir/node" >/dev/null 2>&1 || true
    [[ -d "$dir/cluster" ]] && "$kl/cluster.sh" stop "$dir/cluster" >/dev/null 2>&1 || true ;;
  *) die "usage: scripts/cluster.sh start|stop DIR" ;;
esac
