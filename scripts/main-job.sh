#!/usr/bin/env bash
# The main job: the example notification suite against its DataStorage
# stack, from a fresh machine.
#
#   scripts/main-job.sh              on the Docker backend
#   scripts/main-job.sh --kube-local on a kube-local cluster with a real node,
#                                    started here and stopped at the end
#   scripts/main-job.sh --kind C     on the Kind cluster C
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/engine.sh
bash scripts/example.sh
# One line per stage and component, and the summary table of the run.
export RUST_LOG="${RUST_LOG:-e2e_infra=info}"

case "${1:-}" in
  --kind)
    export E2E_INFRA_BACKEND=kind E2E_INFRA_KIND_CLUSTER="${2:?--kind takes a cluster name}" ;;
  --kube-local)
    command -v ctr >/dev/null || bash scripts/engine.sh --all
    dir=$(mktemp -d /tmp/e2e-infra-main.XXXXXX)
    trap 'bash scripts/cluster.sh stop "$dir"; rm -rf "$dir"' EXIT
    eval "$(bash scripts/cluster.sh start "$dir")"
    export E2E_INFRA_BACKEND=kubernetes E2E_INFRA_KUBE_CONTEXT="$E2E_KUBE_CONTEXT" \
      E2E_INFRA_CONTAINERD_SOCKET="$E2E_CONTAINERD_SOCKET"
    echo "main-job: kube-local is up (KUBECONFIG=$KUBECONFIG, node containerd $E2E_CONTAINERD_SOCKET)" ;;
  "") ;;
  *) echo "main-job.sh: unknown option $1 (use --kube-local or --kind CLUSTER)" >&2; exit 2 ;;
esac

cargo test -p notification-e2e --features e2e -- --nocapture

if [[ "${1:-}" == "--kube-local" ]]; then
  # Teardown runs in a process of its own once cargo has exited; the run is
  # over when the cluster holds nothing of it: no namespace, and no image
  # reference of its tag on the node.
  cargo build --quiet -p e2e-infra-cli
  leftovers() {
    target/debug/e2e-infra status --context "$E2E_INFRA_KUBE_CONTEXT" 2>&1 | grep '^notification ' || true
    ctr -a "$E2E_CONTAINERD_SOCKET" -n k8s.io images ls -q | grep -E '^localhost/.*:notification-' || true
  }
  for _ in $(seq 1 240); do
    left=$(leftovers)
    [[ -z "$left" ]] && break
    sleep 0.5
  done
  if [[ -n "$left" ]]; then
    echo "main-job: 120 s after the run, it has left on the cluster:" >&2
    echo "$left" >&2
    exit 1
  fi
  echo "main-job: teardown left nothing of the run: no namespace, no image reference of its tag on the node"
fi
