# Sourced by the scripts: where the machine's prebuilt kits are, and the
# Docker 29 engines that scripts/engine.sh --all starts.

kits_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# kit NAME OVERRIDE SCRIPT: the folder of the kit NAME (kube-local,
# engine-current): OVERRIDE when it is set (KUBE_LOCAL, ENGINE_CURRENT), else
# ../shared/NAME next to the checkout; the one that holds SCRIPT. Fails
# when neither does.
kit() {
  local candidate
  for candidate in "$2" "$kits_root/../shared/$1"; do
    if [[ -n "$candidate" && -x "$candidate/$3" ]]; then
      (cd "$candidate" && pwd)
      return 0
    fi
  done
  return 1
}

# Where scripts/engine.sh keeps what it starts.
engines_dir=${E2E_INFRA_ENGINE_DIR:-/tmp/e2e-infra-engines}

# current_host NAME: the DOCKER_HOST of Docker 29 in $engines_dir/NAME
# (docker29: containerd image store; docker29-classic: overlay2).
current_host() { echo "unix://$engines_dir/$1/docker.sock"; }

# answers SOCKET: whether an engine API (Docker or Podman) answers on it.
answers() { curl -sf --unix-socket "$1" http://d/_ping >/dev/null 2>&1; }
