#!/usr/bin/env bash
# Makes sure the container engines the tests need answer, installing and
# starting them on a Debian machine when they do not. Idempotent: whatever
# already answers is left alone.
#
#   scripts/engine.sh            Docker engine only
#   scripts/engine.sh --all      Docker engine, Podman API, loopback registry,
#                                and the static busybox the test images use
set -euo pipefail

want_all=false
[[ "${1:-}" == "--all" ]] && want_all=true

state_dir=${E2E_INFRA_ENGINE_DIR:-/tmp/e2e-infra-engines}
mkdir -p "$state_dir"

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
  nohup dockerd >"$state_dir/dockerd.log" 2>&1 &
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
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
}

ensure_podman() {
  local sock=$state_dir/podman.sock
  local conf=$state_dir/containers.conf
  printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n' >"$conf"
  if curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then return 0; fi
  rm -f "$sock"
  echo "engine.sh: starting the Podman API on unix://$sock"
  CONTAINERS_CONF=$conf nohup podman system service --time=0 "unix://$sock" \
    >"$state_dir/podman.log" 2>&1 &
  wait_for 30 "podman" curl -sf --unix-socket "$sock" http://d/_ping \
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
  nohup docker-registry serve "$state_dir/registry.yml" >"$state_dir/registry.log" 2>&1 &
  wait_for 30 "registry" curl -sf http://127.0.0.1:5000/v2/ \
    || die "the registry did not answer within 30 s; see $state_dir/registry.log"
}

command -v curl >/dev/null || apt_install curl
ensure_docker
if $want_all; then
  ensure_tools
  ensure_podman
  ensure_registry
fi
echo "engine.sh: ready (docker: $(docker info --format '{{.ServerVersion}}'))"
