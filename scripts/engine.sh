#!/usr/bin/env bash
# Makes sure the container engines the tests need answer, installing and
# starting them on a Debian machine when they do not. Idempotent: whatever
# already answers is left alone.
#
#   scripts/engine.sh            Docker engine only
#   scripts/engine.sh --all      Docker engine, Podman API, loopback registry,
#                                the static busybox the test images use, and
#                                Docker 29 (below) when it is at hand
#   scripts/engine.sh --current  Docker 29 only (both store modes)
#
# Everything this script starts lives in E2E_INFRA_ENGINE_DIR (default
# /tmp/e2e-infra-engines). With --all, Docker 29.7.2 on containerd 2.3.4 from
# engine-current ($E2E_ENGINE_CURRENT, else ../shared/engine-current next to the
# checkout) is started twice beside the system engine:
#   DIR/docker29/docker.sock           containerd image store (a new install)
#   DIR/docker29-classic/docker.sock   classic overlay2 store (an upgraded one)
# Point DOCKER_HOST at unix://<socket> to use one (docs/engines.md).
set -euo pipefail
source "$(dirname "$0")/kits.sh"

want=${1:-docker}
case "$want" in docker | --all | --current) ;; *) echo "usage: scripts/engine.sh [--all | --current]" >&2; exit 2 ;; esac

mkdir -p "$engines_dir"
state_dir=$(cd "$engines_dir" && pwd)

die() { echo "engine.sh: $*" >&2; exit 1; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local i
  for ((i = 0; i < limit * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  return 1
}

apt_install() {
  [[ $(id -u) -eq 0 ]] || die "installing $* needs root; run as root or install them yourself"
  command -v apt-get >/dev/null || die "installing $* needs apt-get (Debian); install them yourself"
  if [[ ! -f "$state_dir/apt-updated" ]]; then
    apt-get update -qq || die "apt-get update failed; check the machine's package sources"
    touch "$state_dir/apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$state_dir/apt.log" 2>&1 \
    || die "apt-get install $* failed; see $state_dir/apt.log"
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if [[ -n "${DOCKER_HOST:-}" ]]; then
    die "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"
  fi
  command -v dockerd >/dev/null || apt_install docker.io
  echo "engine.sh: starting dockerd (log: $state_dir/dockerd.log)"
  # Each daemon runs from `/`: it outlives the checkout it was started from,
  # and Podman's conmon fails every container start once its working
  # directory is gone.
  (cd / && exec nohup dockerd) >"$state_dir/dockerd.log" 2>&1 &
  wait_for 60 "dockerd" docker info \
    || die "dockerd did not answer within 60 s; last lines of $state_dir/dockerd.log:
$(tail -n 20 "$state_dir/dockerd.log")"
}

ensure_tools() {
  local missing=()
  [[ -x /bin/busybox ]] || missing+=(busybox-static)
  command -v podman >/dev/null || missing+=(podman)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v ctr >/dev/null || missing+=(containerd)
  # scripts/registry.sh: the registry's CA and its bcrypt htpasswd.
  command -v openssl >/dev/null || missing+=(openssl)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  command -v zstd >/dev/null || missing+=(zstd)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
}

ensure_podman() {
  local sock=$state_dir/podman.sock
  local conf=$state_dir/containers.conf
  printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n' >"$conf"
  if answers "$sock"; then return 0; fi
  rm -f "$sock"
  echo "engine.sh: starting the Podman API on unix://$sock"
  (cd / && CONTAINERS_CONF=$conf exec nohup podman system service --time=0 "unix://$sock") \
    >"$state_dir/podman.log" 2>&1 &
  wait_for 30 "podman" answers "$sock" \
    || die "the Podman API did not answer within 30 s; see $state_dir/podman.log"
}

ensure_registry() {
  if curl -sf http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then return 0; fi
  cat >"$state_dir/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $state_dir/registry
http:
  addr: 127.0.0.1:5000
YML
  echo "engine.sh: starting a registry on 127.0.0.1:5000"
  (cd / && exec nohup docker-registry serve "$state_dir/registry.yml") >"$state_dir/registry.log" 2>&1 &
  wait_for 30 "registry" curl -sf http://127.0.0.1:5000/v2/ \
    || die "the registry did not answer within 30 s; see $state_dir/registry.log"
}

# ensure_current NAME MODE [VAR=VALUE...]: Docker 29 in $state_dir/NAME, in
# store MODE, with engine-current's settings VAR=VALUE (its own bridge and
# address pool, so that two of them run side by side).
ensure_current() {
  local name=$1 mode=$2 ec; shift 2
  local dir=$state_dir/$name
  if answers "$dir/docker.sock"; then return 0; fi
  ec=$(kit engine-current "${E2E_ENGINE_CURRENT:-}" engine.sh) || return 0
  # engine-current's script unpacks its binaries with xz and works out its
  # bridge's network with python3; a minimal Debian has neither.
  local missing=()
  command -v xz >/dev/null || missing+=(xz-utils)
  command -v python3 >/dev/null || missing+=(python3)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
  echo "engine.sh: starting Docker 29 ($mode) on unix://$dir/docker.sock (logs: $dir/logs)"
  # What an earlier start left in DIR goes first: a half-started engine's
  # processes, and sockets nobody serves (engine-current's start takes an
  # existing containerd socket for a ready containerd).
  env -u ENGINE_BRIDGE -u ENGINE_BRIDGE_IP -u ENGINE_POOL "$@" "$ec/engine.sh" stop "$dir" >/dev/null 2>&1 || true
  rm -f "$dir"/*.sock "$dir"/*.sock.ttrpc
  (cd / && env -u ENGINE_BRIDGE -u ENGINE_BRIDGE_IP -u ENGINE_POOL "$@" "$ec/engine.sh" start "$dir" "$mode") >/dev/null \
    || die "Docker 29 ($mode) did not start; see $dir/logs/dockerd.log and $dir/logs/containerd.log"
}

ensure_current_engines() {
  if ! kit engine-current "${E2E_ENGINE_CURRENT:-}" engine.sh >/dev/null; then
    echo "engine.sh: no engine-current (set E2E_ENGINE_CURRENT or put it at ../shared/engine-current): Docker 29 is not started"
    return 0
  fi
  ensure_current docker29 containerd-store
  ensure_current docker29-classic classic \
    ENGINE_BRIDGE=e2ecur1 ENGINE_BRIDGE_IP=172.31.251.1/24 ENGINE_POOL=10.230.0.0/16
  local name
  for name in docker29 docker29-classic; do
    if answers "$state_dir/$name/docker.sock"; then
      echo "engine.sh: ready ($name: DOCKER_HOST=$(current_host "$name"))"
    fi
  done
}

command -v curl >/dev/null || apt_install curl
if [[ "$want" == --current ]]; then
  ensure_current_engines
  exit 0
fi
ensure_docker
if [[ "$want" == --all ]]; then
  ensure_tools
  ensure_podman
  ensure_registry
fi
echo "engine.sh: ready (docker: $(docker info --format '{{.ServerVersion}}'))"
if [[ "$want" == --all ]]; then ensure_current_engines; fi
