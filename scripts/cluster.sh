#!/usr/bin/env bash
# A real Kubernetes cluster for the tests and the main job: kube-local's
# control plane plus one real node (a kubelet with its own containerd).
#
#   scripts/cluster.sh start DIR [debian|current]
#       starts it; prints the variables to export. The node's containerd is
#       Debian's (1.6, the default) or engine-current's (2.3.4, as Kind's
#       node images since v0.27)
#   scripts/cluster.sh restart DIR [debian|current]
#       stops what `start DIR` started and starts it again with that
#       containerd (a new cluster: the real node cannot be restarted alone,
#       its stop takes the controller-manager down); prints the variables
#   scripts/cluster.sh stop DIR    stops what `start DIR` started
#   scripts/cluster.sh available [current]
#       whether kube-local (and, with `current`, engine-current) is at hand
#   scripts/cluster.sh registry NODE_DIR HOSTS_DIR ADDRESS
#       lets the real node of NODE_DIR (DIR/<containerd>/node, or the node
#       folder of any kube-local real node) pull from the registry at ADDRESS
#       (an IP, or a CIDR): its containerd gets HOSTS_DIR as the CRI's
#       registry `config_path` (one `<host:port>/hosts.toml` per registry,
#       naming its CA; scripts/registry.sh writes one) and ADDRESS in
#       NO_PROXY, every other pull still going to kube-local's dead proxy.
#       Only the node's containerd process is restarted, as the same binary
#       with the same environment otherwise; the kubelet and the running
#       containers stay. Nothing is restarted when that containerd already
#       runs so. Credentials are not the node's: pods name an image pull
#       secret.
#
# kube-local is looked for in $KUBE_LOCAL, engine-current in $E2E_ENGINE_CURRENT,
# else next to the checkout (../shared/NAME). Ports are fixed: one cluster
# per machine. Each containerd gets its own folders, DIR/<containerd>/cluster
# and DIR/<containerd>/node.
set -euo pipefail
source "$(dirname "$0")/kits.sh"

die() { echo "cluster.sh: $*" >&2; exit 1; }

kube_local() { kit kube-local "${KUBE_LOCAL:-}" cluster.sh; }

# containerd_dir CONTAINERD: the CONTAINERD_DIR real-node.sh takes for that
# containerd (empty: Debian's, from the PATH).
containerd_dir() {
  local ec
  case "$1" in
    debian) echo ;;
    current)
      ec=$(kit engine-current "${E2E_ENGINE_CURRENT:-}" engine.sh) \
        || die "no engine-current for a node on containerd 2 (set E2E_ENGINE_CURRENT or put it at ../shared/engine-current)"
      "$ec/engine.sh" bin ;;
    *) die "the node's containerd is debian or current, not '$1'" ;;
  esac
}

start() { # start DIR CONTAINERD
  local dir containerd=$2 kl cdir here
  dir=$(realpath -m "$1")
  kl=$(kube_local) || die "no kube-local found (set KUBE_LOCAL or put it at ../shared/kube-local)"
  cdir=$(containerd_dir "$containerd") || exit 1
  if curl -sk --max-time 2 https://127.0.0.1:16443/readyz >/dev/null 2>&1; then
    die "an API server already listens on 127.0.0.1:16443 (kube-local's fixed port); stop that cluster first"
  fi
  here=$dir/$containerd
  mkdir -p "$here"
  # From `/`, as every daemon the scripts start: they outlive the checkout.
  (cd / && NODES=0 "$kl/cluster.sh" start "$here/cluster") >"$here/start.log" 2>&1 \
    || die "the control plane did not start; see $here/start.log and $here/cluster/*.log"
  (cd / && CONTAINERD_DIR=$cdir "$kl/real-node.sh" start "$here/cluster" "$here/node") >>"$here/start.log" 2>&1 \
    || die "the real node (containerd: $containerd) did not start; see $here/start.log and $here/node/*.log"
  echo "export KUBECONFIG=$here/cluster/kubeconfig E2E_KUBE_CONTEXT=local E2E_CONTAINERD_SOCKET=$here/node/containerd.sock"
}

stop() { # stop DIR: every cluster `start DIR` made, each node with its own containerd
  local dir=$1 kl here containerd cdir
  kl=$(kube_local) || die "no kube-local found"
  for containerd in debian current; do
    here=$dir/$containerd
    if [[ -d "$here/node" ]]; then
      cdir=$(containerd_dir "$containerd") || exit 1
      CONTAINERD_DIR=$cdir "$kl/real-node.sh" stop "$here/cluster" "$here/node" >/dev/null 2>&1 || true
    fi
    if [[ -d "$here/cluster" ]]; then
      # kube-apiserver answers SIGTERM with a graceful shutdown of about a
      # minute here, which kube-local's stop waits 20 s for before it kills
      # it. The cluster's state is etcd's, and etcd is stopped as kube-local
      # does: the API server has nothing to save and is killed outright.
      if [[ -f "$here/cluster/apiserver.pid" ]]; then kill -KILL "$(cat "$here/cluster/apiserver.pid")" 2>/dev/null || true; fi
      "$kl/cluster.sh" stop "$here/cluster" >/dev/null 2>&1 || true
    fi
  done
}

# registry NODE_DIR HOSTS_DIR ADDRESS: see the top of this file.
registry() {
  local node hosts=$2 address=$3 pid exe config env=() var section
  node=$(realpath -m "$1")
  hosts=$(realpath -m "$hosts")
  [[ -d "$hosts" ]] || die "no hosts folder at $hosts (scripts/registry.sh start makes one)"
  [[ -f "$node/containerd.pid" && -f "$node/config.toml" ]] \
    || die "$node is not the folder of a real node (no containerd.pid and config.toml)"
  pid=$(cat "$node/containerd.pid")
  [[ -r /proc/$pid/environ ]] || die "the node's containerd (pid $pid of $node/containerd.pid) does not run"
  exe=$(readlink "/proc/$pid/exe")
  config=$node/config-registry.toml
  # The running process's environment, NO_PROXY replaced.
  while IFS= read -r -d '' var; do
    case "$var" in NO_PROXY=* | no_proxy=*) ;; *) env+=("$var") ;; esac
  done <"/proc/$pid/environ"
  env+=("NO_PROXY=$address" "no_proxy=$address")
  if [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline")" == *"--config $config "* ]] \
    && grep -qxF "NO_PROXY=$address" <(tr '\0' '\n' <"/proc/$pid/environ") \
    && grep -qF "config_path = \"$hosts\"" "$config"; then
    echo "cluster.sh: the node's containerd already pulls through $hosts"
    return 0
  fi
  # containerd 2 (config version 3) keeps the registry under the images plugin.
  if grep -qx 'version = 3' "$node/config.toml"; then
    section="[plugins.'io.containerd.cri.v1.images'.registry]"
  else
    section='[plugins."io.containerd.grpc.v1.cri".registry]'
  fi
  printf '%s\n%s\n  config_path = "%s"\n' "$(cat "$node/config.toml")" "$section" "$hosts" >"$config"
  kill "$pid"
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -d /proc/$pid ]] || break
    sleep 0.1
  done
  [[ ! -d /proc/$pid ]] || die "the node's containerd (pid $pid) did not stop within 10 s"
  # A session of its own, from `/`: it outlives the shell that restarted it.
  (cd / && exec setsid env -i "${env[@]}" "$exe" --config "$config") >>"$node/containerd.log" 2>&1 &
  echo $! >"$node/containerd.pid"
  for ((i = 0; i < 100; i++)); do
    if ctr -a "$node/containerd.sock" version >/dev/null 2>&1; then
      echo "cluster.sh: the node's containerd pulls through $hosts (NO_PROXY=$address)"
      return 0
    fi
    sleep 0.1
  done
  die "the node's containerd did not answer within 10 s after its restart; see $node/containerd.log"
}

cmd=${1:-}; dir=${2:-}
usage="usage: scripts/cluster.sh start|restart DIR [debian|current] | stop DIR | available [current] | registry NODE_DIR HOSTS_DIR ADDRESS"
case "$cmd" in
  available)
    kube_local >/dev/null || exit 1
    if [[ "$dir" == current ]]; then kit engine-current "${E2E_ENGINE_CURRENT:-}" engine.sh >/dev/null; fi ;;
  start)
    [[ -n "$dir" ]] || die "$usage"
    start "$dir" "${3:-debian}" ;;
  restart)
    [[ -n "$dir" ]] || die "$usage"
    stop "$dir"
    start "$dir" "${3:-debian}" ;;
  stop)
    [[ -n "$dir" ]] || die "$usage"
    stop "$dir" ;;
  registry)
    [[ -n "$dir" && -n "${3:-}" && -n "${4:-}" ]] || die "$usage"
    registry "$dir" "$3" "$4" ;;
  *) die "$usage" ;;
esac
