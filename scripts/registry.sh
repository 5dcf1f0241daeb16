#!/usr/bin/env bash
# A registry on a test host of its own, as a shared cluster pulls from: TLS
# with a CA made for the run, basic auth, on an address off loopback.
#
#   scripts/registry.sh start DIR   starts it; prints the variables to export
#   scripts/registry.sh stop DIR    stops it and removes what start made
#
# The host is a network namespace joined to this machine by a veth pair on
# the /29 E2E_REGISTRY_NET (default 10.231.77.0/29): this machine is .1, the
# registry .2. Two registries (Debian's docker-registry) listen there:
#   .2:5000  TLS signed by DIR/ca.crt, htpasswd (bcrypt) auth: the registry
#   .2:5001  TLS signed by a CA nobody is given: a registry with an unknown CA
# and .5 is routed to the namespace but answers nothing: a dead address.
#
# Everything lives under DIR (certificates, htpasswd, storage, logs, pids),
# except what stop removes by name: the namespace and veth pair named after
# DIR, and the Docker engines' trust of the registry, the symlink
# /etc/docker/certs.d/<registry>/ca.crt -> DIR/ca.crt (Docker reads that
# folder at every push; no engine restarts).
#
# Printed variables:
#   E2E_REGISTRY            host:port of the registry
#   E2E_REGISTRY_CA         the CA's certificate
#   E2E_REGISTRY_USER, E2E_REGISTRY_PASSWORD   the credential it accepts
#   E2E_REGISTRY_HOSTS_DIR  a containerd hosts folder (config_path) naming
#                           the CA: `scripts/cluster.sh registry` gives it to
#                           the node's containerd
#   E2E_REGISTRY_STORAGE    the registry's storage folder (the benchmark
#                           empties it between its sides)
#   E2E_REGISTRY_UNKNOWN_CA host:port of the registry with an unknown CA
#   E2E_REGISTRY_DEAD       host:port of the dead address
set -euo pipefail

die() { echo "registry.sh: $*" >&2; exit 1; }

net=${E2E_REGISTRY_NET:-10.231.77.0/29}
[[ "$net" =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/29$ ]] || die "E2E_REGISTRY_NET must be a /29 ending in .0, not '$net'"
prefix=${BASH_REMATCH[1]}
host_ip=$prefix.1 registry_ip=$prefix.2 dead_ip=$prefix.5
registry=$registry_ip:5000 unknown_ca=$registry_ip:5001

# names DIR: the namespace and veth names of DIR (at most 15 characters).
names() {
  local id
  id=$(realpath -m "$1" | sha256sum | cut -c1-6)
  ns=e2ereg-$id veth_host=e2ereg${id}h veth_ns=e2ereg${id}n
}

wait_for() { # wait_for SECONDS COMMAND...
  local limit=$1 i; shift
  for ((i = 0; i < limit * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

certificates() { # certificates DIR
  local dir=$1
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=e2e-infra test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=e2e-infra unknown CA" \
    -keyout "$dir/unknown-ca.key" -out "$dir/unknown-ca.crt" 2>/dev/null
  local which
  for which in ca unknown-ca; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$registry_ip" \
      -keyout "$dir/$which-server.key" -out "$dir/$which-server.csr" 2>/dev/null
    printf 'subjectAltName = IP:%s\n' "$registry_ip" >"$dir/san.ext"
    openssl x509 -req -in "$dir/$which-server.csr" -CA "$dir/$which.crt" -CAkey "$dir/$which.key" \
      -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/$which-server.crt" 2>/dev/null
  done
}

config() { # config DIR NAME ADDR CA
  local dir=$1 name=$2 addr=$3 ca=$4
  cat >"$dir/$name.yml" <<YML
version: 0.1
log: { level: info }
storage:
  filesystem: { rootdirectory: $dir/$name-data }
  delete: { enabled: true }
http:
  addr: $addr
  tls:
    certificate: $dir/$ca-server.crt
    key: $dir/$ca-server.key
auth:
  htpasswd:
    realm: e2e-infra
    path: $dir/htpasswd
YML
}

start() {
  local dir
  dir=$(realpath -m "$1")
  names "$dir"
  for tool in docker-registry htpasswd openssl ip; do
    command -v "$tool" >/dev/null || die "$tool is missing; scripts/engine.sh --all installs it"
  done
  if ip netns list | grep -qw "$ns"; then die "namespace $ns of $dir exists: run 'scripts/registry.sh stop $dir' first"; fi
  if ip -br addr | grep -qF " $prefix."; then die "$net is in use on this machine (ip addr); set E2E_REGISTRY_NET to a free /29"; fi
  if [[ -e /etc/docker/certs.d/$registry ]]; then
    die "/etc/docker/certs.d/$registry exists: another registry setup uses $net; stop it, or set E2E_REGISTRY_NET"
  fi
  mkdir -p "$dir"
  certificates "$dir"
  local password
  password=$(openssl rand -hex 16)
  htpasswd -Bbn e2e-infra "$password" >"$dir/htpasswd" 2>/dev/null
  printf 'e2e-infra\n%s\n' "$password" >"$dir/credential"
  config "$dir" registry "$registry" ca
  config "$dir" unknown-ca "$unknown_ca" unknown-ca
  mkdir -p "$dir/hosts/$registry"
  # The CA both for the [host] entry and for the server, which containerd
  # tries after the hosts: a pull that fails there is then reported with the
  # registry's own answer, not a TLS error. (containerd 1.6 takes no file
  # without a [host] entry.)
  cat >"$dir/hosts/$registry/hosts.toml" <<TOML
server = "https://$registry"
ca = "$dir/ca.crt"

[host."https://$registry"]
  capabilities = ["pull", "resolve"]
  ca = "$dir/ca.crt"
TOML

  ip netns add "$ns"
  echo "$ns" >"$dir/netns"
  ip link add "$veth_host" type veth peer name "$veth_ns" netns "$ns"
  ip addr add "$host_ip/29" dev "$veth_host"
  ip link set "$veth_host" up
  ip -n "$ns" addr add "$registry_ip/29" dev "$veth_ns"
  ip -n "$ns" link set "$veth_ns" up
  ip -n "$ns" link set lo up
  local name
  for name in registry unknown-ca; do
    (cd / && exec setsid ip netns exec "$ns" docker-registry serve "$dir/$name.yml") >"$dir/$name.log" 2>&1 &
    echo $! >"$dir/$name.pid"
  done
  wait_for 30 curl -s --cacert "$dir/ca.crt" -o /dev/null "https://$registry/v2/" \
    || die "the registry did not answer at https://$registry within 30 s; see $dir/registry.log"
  wait_for 30 curl -sk -o /dev/null "https://$unknown_ca/v2/" \
    || die "the unknown-CA registry did not answer at https://$unknown_ca within 30 s; see $dir/unknown-ca.log"
  mkdir -p "/etc/docker/certs.d/$registry"
  ln -sfn "$dir/ca.crt" "/etc/docker/certs.d/$registry/ca.crt"
  echo "$registry" >"$dir/trusted"
  echo "export E2E_REGISTRY=$registry E2E_REGISTRY_CA=$dir/ca.crt E2E_REGISTRY_USER=e2e-infra" \
    "E2E_REGISTRY_PASSWORD=$password E2E_REGISTRY_HOSTS_DIR=$dir/hosts E2E_REGISTRY_STORAGE=$dir/registry-data" \
    "E2E_REGISTRY_UNKNOWN_CA=$unknown_ca E2E_REGISTRY_DEAD=$dead_ip:5000"
}

stop() {
  local dir name pid trusted
  dir=$(realpath -m "$1")
  names "$dir"
  for name in registry unknown-ca; do
    if [[ -f "$dir/$name.pid" ]]; then
      pid=$(cat "$dir/$name.pid")
      kill "$pid" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
  if [[ -f "$dir/trusted" ]]; then
    trusted=$(cat "$dir/trusted")
    # Only the trust this setup gave: the link into DIR, and its folder once empty.
    if [[ "$(readlink "/etc/docker/certs.d/$trusted/ca.crt" 2>/dev/null)" == "$dir/ca.crt" ]]; then
      rm -f "/etc/docker/certs.d/$trusted/ca.crt"
      rmdir "/etc/docker/certs.d/$trusted" 2>/dev/null || true
    fi
  fi
  ip link del "$veth_host" 2>/dev/null || true
  if ip netns list | grep -qw "$ns"; then ip netns del "$ns"; fi
  rm -rf "$dir"
}

cmd=${1:-}; dir=${2:-}
[[ -n "$dir" ]] || die "usage: scripts/registry.sh start|stop DIR"
[[ $(id -u) -eq 0 ]] || die "a network namespace needs root"
case "$cmd" in
  start) start "$dir" ;;
  stop) stop "$dir" ;;
  *) die "usage: scripts/registry.sh start|stop DIR" ;;
esac
