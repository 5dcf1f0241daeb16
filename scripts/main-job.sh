#!/usr/bin/env bash
# The main job: the example notification suite against its DataStorage
# stack, from a fresh machine.
#
#   scripts/main-job.sh              on the Docker backend
#   scripts/main-job.sh --kube-local on a real Kubernetes cluster with a real
#                                    node: the one KUBECONFIG and
#                                    E2E_CONTAINERD_SOCKET (its node's
#                                    containerd socket) name, used as it is,
#                                    in the context E2E_KUBE_CONTEXT (default:
#                                    the kubeconfig's current one); when they
#                                    are unset, kube-local with a real node,
#                                    started here and stopped at the end
#   scripts/main-job.sh --kind C     on the Kind cluster C
#
# The engine: with DOCKER_HOST set, that one, and nothing is installed or
# started; else Debian's (installed and started if needed), or with
#   --engine current                 Docker 29.7.2 on its containerd image
#                                    store, from engine-current (started if
#                                    needed, see docs/engines.md); a
#                                    kube-local started here then runs its
#                                    node on containerd 2.3.4 too
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/kits.sh

usage="usage: scripts/main-job.sh [--engine system|current] [--kube-local | --kind CLUSTER]"
engine=system target=docker
while (($#)); do
  case "$1" in
    --engine) engine=${2:-}; shift $(($# > 1 ? 2 : 1)) ;;
    --kube-local) target=kube-local; shift ;;
    --kind) target=kind; kind_cluster=${2:?--kind takes a cluster name}; shift 2 ;;
    *) echo "main-job.sh: unknown option $1; $usage" >&2; exit 2 ;;
  esac
done
case "$engine" in system | current) ;; *) echo "main-job.sh: --engine takes system or current; $usage" >&2; exit 2 ;; esac

# The node's containerd under --kube-local: engine-current's 2.3.4 beside Docker 29.
node_containerd=debian installs=true
if [[ -n "${DOCKER_HOST:-}" ]]; then
  [[ "$engine" == system ]] || { echo "main-job.sh: DOCKER_HOST=$DOCKER_HOST already names the engine; drop --engine or unset it" >&2; exit 2; }
  echo "main-job: on the engine of DOCKER_HOST=$DOCKER_HOST (nothing installed or started)"
  installs=false
elif [[ "$engine" == current ]]; then
  bash scripts/engine.sh --current
  DOCKER_HOST=$(current_host docker29)
  answers "${DOCKER_HOST#unix://}" || { echo "main-job.sh: Docker 29 does not answer at $DOCKER_HOST" >&2; exit 1; }
  export DOCKER_HOST
  echo "main-job: on Docker 29 (containerd image store), DOCKER_HOST=$DOCKER_HOST"
  node_containerd=current
else
  bash scripts/engine.sh
fi
# One line per stage and component, and the summary table of the run.
export RUST_LOG="${RUST_LOG:-e2e_infra=info}"

# A kube-local started here comes up while scripts/example.sh makes the
# images' inputs and compiles the suite with them.
cluster_dir="" cluster_start="" example=""
case "$target" in
  kind)
    export E2E_INFRA_BACKEND=kind E2E_INFRA_KIND_CLUSTER="$kind_cluster" ;;
  kube-local)
    if ! command -v ctr >/dev/null; then
      $installs || { echo "main-job.sh: --kube-local needs ctr on the PATH (Debian's containerd package)" >&2; exit 1; }
      bash scripts/engine.sh --all
    fi
    if [[ -n "${KUBECONFIG:-}" && -n "${E2E_CONTAINERD_SOCKET:-}" ]]; then
      node=$(ctr -a "$E2E_CONTAINERD_SOCKET" version 2>/dev/null \
        | awk '/^Server:/ { server = 1 } server && $1 == "Version:" { print $2; exit }') \
        || { echo "main-job.sh: no containerd answers at E2E_CONTAINERD_SOCKET=$E2E_CONTAINERD_SOCKET" >&2; exit 1; }
      echo "main-job: on the cluster of KUBECONFIG=$KUBECONFIG${E2E_KUBE_CONTEXT:+ (context $E2E_KUBE_CONTEXT)}, used as it is; node containerd $node at $E2E_CONTAINERD_SOCKET"
    else
      cluster_dir=$(mktemp -d /tmp/e2e-infra-main.XXXXXX)
      # When the job ends: a build still under way is stopped; a start
      # still under way is let finish, then stopped.
      trap '[[ -n "$example" ]] && kill -- -"$example" 2>/dev/null
        wait "$cluster_start" 2>/dev/null; bash scripts/cluster.sh stop "$cluster_dir"; rm -rf "$cluster_dir"' EXIT
      bash scripts/cluster.sh start "$cluster_dir" "$node_containerd" >"$cluster_dir/env" &
      cluster_start=$!
    fi
    export E2E_INFRA_BACKEND=kubernetes ;;
  docker) ;;
esac
if [[ -z "$cluster_start" ]]; then
  bash scripts/example.sh --suite
else
  # The build in a process group of its own, so that a cluster that cannot
  # start ends the job at once, the build with it.
  setsid bash scripts/example.sh --suite &
  example=$!
  wait "$cluster_start" || { echo "main-job.sh: kube-local did not start (see above)" >&2; exit 1; }
  eval "$(cat "$cluster_dir/env")"
  echo "main-job: kube-local is up (KUBECONFIG=$KUBECONFIG, node containerd $E2E_CONTAINERD_SOCKET)"
  wait "$example" || exit 1
  example=""
fi
if [[ "$target" == kube-local ]]; then
  export E2E_INFRA_KUBE_CONTEXT="${E2E_KUBE_CONTEXT:-}" E2E_INFRA_CONTAINERD_SOCKET="$E2E_CONTAINERD_SOCKET"
  # A run id of its own, so that the check below looks at this run's
  # namespace and tag alone on a cluster that others may share.
  export E2E_INFRA_RUN_ID="main-job-$(date +%s)-$$"
fi
cargo test -p notification-e2e --features e2e -- --nocapture

if [[ "$target" == kube-local ]]; then
  # Teardown runs in a process of its own once cargo has exited; the run is
  # over when the cluster holds nothing of it: no namespace, and no image
  # reference of its tag on the node.
  cargo build --quiet -p e2e-infra-cli
  tag=$(target/debug/e2e-infra plan --config examples/notification/e2e-infra.toml --consumer notification \
    --needs datastorage --format json | jq -r .tag)
  cluster_flag=(--kubernetes)
  [[ -n "$E2E_INFRA_KUBE_CONTEXT" ]] && cluster_flag=(--context "$E2E_INFRA_KUBE_CONTEXT")
  leftovers() {
    target/debug/e2e-infra status "${cluster_flag[@]}" 2>&1 | grep -F "namespace: $tag " || true
    ctr -a "$E2E_CONTAINERD_SOCKET" -n k8s.io images ls -q | grep -E "^localhost/.*:$tag\$" || true
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
  echo "main-job: teardown left nothing of the run: no namespace $tag, no image reference of that tag on the node"
fi
