#!/usr/bin/env bash
# Runs every test: starts the engines they need and, when kube-local is at
# hand, a real Kubernetes cluster with one real node; then the workspace
# under cargo-nextest with all features, once per engine:
#
#   1. the system engine (Debian's Docker 20.10, or DOCKER_HOST when set):
#      every test, the real-cluster tests (the node on Debian's containerd
#      1.6) and the Podman tests;
#   2. Docker 29, classic overlay2 store: the load tests (Kind-node loads,
#      and the real-cluster tests, which load into the node's socket);
#   3. Docker 29, containerd image store: every test that talks to an
#      engine and the real-cluster tests, the node restarted on containerd
#      2.3.4 (as Kind's nodes since v0.27); not the Podman tests again.
#
# Docker 29 comes from engine-current (scripts/engine.sh --all starts it when
# it is at hand). Every pass runs, whichever failed; one summary line per
# pass at the end; the script fails if any pass failed. Arguments go to each
# `cargo nextest run`.
#
# The real-cluster tests are ignored unless a cluster is given: this script
# starts one (stopped at the end, on failure too), or uses yours when
# KUBECONFIG and E2E_CONTAINERD_SOCKET (its node's containerd socket) are
# set; yours is used as it is by every pass, its node never restarted. In
# CI (CI set) a missing cluster or a missing Docker 29 is an error, not a skip.
#
# The tests of a cluster that pulls (tests/tests/kube_registry.rs) need a TLS
# registry with basic auth that the node trusts: with its own cluster, this
# script starts one on a test host of its own (scripts/registry.sh) and
# gives the node's containerd its CA (scripts/cluster.sh registry), again
# after the node moves to containerd 2.3.4. With yours, set the variables
# scripts/registry.sh prints (E2E_REGISTRY, ...) for a registry your node
# pulls from; without them those tests are left out, and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/kits.sh
# Formatting first: it takes a second and needs no engine.
cargo fmt --all -- --check
bash scripts/engine.sh --all
# The example's images start FROM a Debian base image or hold the services'
# binaries.
bash scripts/example.sh
cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest

cluster=()
own_cluster=""
if [[ -n "${E2E_CONTAINERD_SOCKET:-}" && -n "${KUBECONFIG:-}" ]]; then
  echo "test.sh: real-cluster tests against KUBECONFIG=$KUBECONFIG, containerd at $E2E_CONTAINERD_SOCKET"
  cluster=(--run-ignored all)
elif bash scripts/cluster.sh available; then
  dir=$(mktemp -d /tmp/e2e-infra-cluster.XXXXXX)
  registry_dir=$dir/registry
  trap 'bash scripts/registry.sh stop "$registry_dir" || true; bash scripts/cluster.sh stop "$dir"; rm -rf "$dir"' EXIT
  eval "$(bash scripts/cluster.sh start "$dir" debian)"
  echo "test.sh: started kube-local with a real node in $dir"
  cluster=(--run-ignored all)
  own_cluster=$dir
elif [[ -n "${CI:-}" ]]; then
  echo "test.sh: CI is set but there is no cluster: no kube-local and no KUBECONFIG + E2E_CONTAINERD_SOCKET" >&2
  exit 1
else
  echo "test.sh: no cluster (no kube-local, KUBECONFIG + E2E_CONTAINERD_SOCKET unset): the real-cluster tests are skipped"
fi

docker29=$(current_host docker29)
docker29_classic=$(current_host docker29-classic)
have_docker29=true
if ! answers "${docker29#unix://}" || ! answers "${docker29_classic#unix://}"; then
  if [[ -n "${CI:-}" ]]; then
    echo "test.sh: CI is set but Docker 29 does not answer at $docker29 and $docker29_classic (engine-current missing?)" >&2
    exit 1
  fi
  echo "test.sh: no Docker 29 at $docker29 and $docker29_classic (no engine-current): only the system engine's pass runs"
  have_docker29=false
fi

# The Kind-node stand-ins on containerd 2 run engine-current's static
# containerd (or E2E_CONTAINERD2_BIN's); without either, their tests are left
# out, and said to be. (In CI a missing engine-current has ended the run above.)
no_containerd2=""
if [[ -z "${E2E_CONTAINERD2_BIN:-}" ]] && ! kit engine-current "${E2E_ENGINE_CURRENT:-}" engine.sh >/dev/null; then
  no_containerd2="no engine-current and E2E_CONTAINERD2_BIN unset, so no containerd 2 for the Kind-node stand-ins"
  echo "test.sh: $no_containerd2: the loads into containerd 2 nodes (containerd_2) are left out"
fi

# With --run-ignored all, the inside of the unshare tests stays out: it runs
# only when the test that drives it starts it, never as a test of its own.
always='not test(=inner_run_in_a_new_pid_namespace)'
# Docker 20.10 cannot load an image with zstd-compressed layers (its `docker
# load` stops at "unexpected EOF"): the zstd load test runs in the Docker 29
# passes, whose engines can.
zstd='test(/zstd_layer/)'
if [[ -n "$no_containerd2" ]]; then always+=' and not test(/containerd_2::/)'; fi

# The registry the node pulls from (see the top of this file).
pulls=""
# pull_from_registry CONTAINERD: gives the own cluster's node on CONTAINERD
# the registry's CA; says why not and fails when it cannot.
pull_from_registry() {
  bash scripts/cluster.sh registry "$own_cluster/$1/node" "$E2E_REGISTRY_HOSTS_DIR" "${E2E_REGISTRY%:*}"
}
if ((${#cluster[@]})) && [[ -n "${E2E_REGISTRY:-}" ]]; then
  echo "test.sh: the cluster pulls from the registry at $E2E_REGISTRY"
elif [[ -n "$own_cluster" ]]; then
  if started=$(bash scripts/registry.sh start "$registry_dir") && eval "$started" && pull_from_registry debian; then
    echo "test.sh: started a TLS registry at $E2E_REGISTRY on a host of its own; the node pulls from it"
  elif [[ -n "${CI:-}" ]]; then
    echo "test.sh: CI is set but the registry the node pulls from did not start" >&2
    exit 1
  else
    pulls="the registry the node pulls from did not start"
  fi
elif ((${#cluster[@]})); then
  pulls="E2E_REGISTRY is unset: your cluster is used as it is, and no registry its node pulls from is known"
fi
if [[ -n "$pulls" ]]; then
  echo "test.sh: $pulls: the tests of a cluster that pulls (kube_registry) are left out"
  always+=' and not binary_id(e2e-infra-tests::kube_registry)'
fi
# The tests that talk to no engine: unit tests, and the suites that read
# files, run the compiler, or run the CLI where it asks no engine.
no_engine='kind(lib) or kind(bin) or kind(proc-macro)
  or binary_id(e2e-infra-tests::compile_fail) or binary_id(e2e-infra-tests::docs_catalog)
  or binary_id(e2e-infra-tests::quickstart) or binary_id(e2e-infra-cli::cli_plan)
  or binary_id(e2e-infra-cli::cli_images) or binary_id(e2e-infra::layers) or binary_id(e2e-infra::attach)'
podman='binary_id(e2e-infra-tests::podman) or test(/podman/)'
# Loads into Kind nodes, and the real-cluster tests, whose stacks are loaded
# into the node's containerd socket; and the test that names the engine.
loads='binary_id(e2e-infra-tests::kind_load) or binary_id(e2e-infra-tests::kube_cluster)
  or test(=the_engine_is_the_one_docker_host_names)'

color=auto
[[ -t 1 ]] && color=always
summaries=()
failed=false
if [[ -n "$pulls" ]]; then summaries+=("SKIPPED the tests of a cluster that pulls (kube_registry, and the example through the registry): $pulls"); fi
if [[ -n "$no_containerd2" ]]; then summaries+=("SKIPPED the loads into containerd 2 nodes (containerd_2): $no_containerd2"); fi

# in_scope FILTER ARGS...: how many tests FILTER selects, ignored ones too.
in_scope() {
  local filter=$1; shift
  local listed
  listed=$(cargo nextest list --workspace --all-features --run-ignored all -E "$filter" \
    --message-format oneline "$@" 2>/dev/null) || return 1
  grep -c . <<<"$listed" || true
}

# node_version: the containerd version of the cluster's node, if there is one.
node_version() {
  [[ -n "${E2E_CONTAINERD_SOCKET:-}" && ${#cluster[@]} -gt 0 ]] || return 0
  ctr --address "$E2E_CONTAINERD_SOCKET" version 2>/dev/null \
    | awk '/^Server:/ { server = 1 } server && $1 == "Version:" { print $2; exit }'
}

# count WORDS SUMMARY: the number before WORDS in nextest's summary line.
count() { grep -oE "[0-9]+ $1" <<<"$2" | grep -oE '^[0-9]+' || echo 0; }

# run_pass NAME HOST FILTER [ARGS...]: the tests FILTER selects, against
# the engine at HOST (empty: DOCKER_HOST as it is, else the default socket),
# under `cargo nextest run`; records the pass's summary line.
run_pass() {
  local name=$1 host=$2 filter=$3; shift 3
  local -a env=(env -u E2E_EXPECT_ENGINE)
  if [[ -n "$host" ]]; then env+=("DOCKER_HOST=$host"); fi
  local engine node started log status scope counts line
  engine=$("${env[@]}" docker info --format '{{.ServerVersion}} {{.Driver}}' 2>/dev/null) || engine=""
  # The suite's own test checks that it talks to this engine.
  if [[ -n "$engine" ]]; then env+=("E2E_EXPECT_ENGINE=$engine"); fi
  node=$(node_version)
  echo "test.sh: pass '$name': engine ${engine:-?} at ${host:-${DOCKER_HOST:-the default socket}}${node:+, node containerd $node}"
  scope=$(in_scope "$filter" "$@") || scope=""
  log=$(mktemp /tmp/e2e-infra-test.XXXXXX)
  started=$SECONDS
  set +e
  "${env[@]}" cargo nextest run --workspace --all-features --no-fail-fast \
    --color "$color" "${cluster[@]}" -E "$filter" "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  counts=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^ *Summary \[' | tail -n 1 || true)
  rm -f "$log"
  local run passed broken
  run=$(count 'tests? run' "$counts")
  passed=$(count passed "$counts")
  broken=$(($(count failed "$counts") + $(count 'timed out' "$counts")))
  line="$name (${engine:-?}${node:+, node containerd $node}): $passed passed, $broken failed"
  if [[ -n "$scope" ]]; then line+=", $((scope - run)) skipped"; fi
  line+=", $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s"
  if [[ -z "$counts" ]]; then line+="; cargo nextest exited $status before running the tests"; fi
  if ((status != 0)); then failed=true; line="FAILED $line"; fi
  summaries+=("$line")
}

run_pass "system engine" "" "($always) and not ($zstd)" "$@"
# The example on the cluster: a build with E2E_INFRA_BACKEND=kubernetes
# also stands up the notification controller and has its tests (build.rs).
if ((${#cluster[@]})); then
  E2E_INFRA_BACKEND=kubernetes E2E_INFRA_KUBE_CONTEXT=${E2E_KUBE_CONTEXT:-} \
    E2E_INFRA_CONTAINERD_SOCKET=$E2E_CONTAINERD_SOCKET \
    run_pass "example on the cluster" "" "binary_id(notification-e2e::notification)" "$@"
fi
# The example on the cluster again, its images pushed to the registry and
# pulled by the node, with the credential where Docker users keep it.
if ((${#cluster[@]})) && [[ -z "$pulls" && -n "${E2E_REGISTRY_USER:-}" ]]; then
  docker_config=$(mktemp -d /tmp/e2e-infra-docker-config.XXXXXX)
  auth=$(printf '%s:%s' "$E2E_REGISTRY_USER" "${E2E_REGISTRY_PASSWORD:-}" | base64 -w0)
  printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$E2E_REGISTRY" "$auth" >"$docker_config/config.json"
  DOCKER_CONFIG=$docker_config E2E_INFRA_BACKEND=kubernetes E2E_INFRA_KUBE_CONTEXT=${E2E_KUBE_CONTEXT:-} \
    E2E_INFRA_REGISTRY=$E2E_REGISTRY \
    run_pass "example on the cluster, through the registry" "" "binary_id(notification-e2e::notification)" "$@"
  rm -rf "$docker_config"
elif ((${#cluster[@]})) && [[ -z "$pulls" ]]; then
  summaries+=("SKIPPED the example through the registry: E2E_REGISTRY_USER is unset, so no credential for $E2E_REGISTRY is known")
fi
if $have_docker29; then
  # The example's images start FROM the base image, which each engine gets
  # from the cache by an import (no build needs a network).
  for host in "$docker29_classic" "$docker29"; do
    if ! DOCKER_HOST=$host bash scripts/base-image.sh >/dev/null; then
      failed=true
      summaries+=("FAILED the base image could not be imported into $host: the example's builds there fail")
    fi
  done
  run_pass "Docker 29 classic" "$docker29_classic" "($always) and ($loads)" "$@"
  if [[ -n "$own_cluster" ]]; then
    echo "test.sh: restarting the cluster with its node on containerd 2.3.4"
    if restarted=$(bash scripts/cluster.sh restart "$own_cluster" current); then
      eval "$restarted"
      if [[ -z "$pulls" ]] && ! pull_from_registry current; then
        failed=true
        summaries+=("FAILED the node on containerd 2.3.4 could not be given the registry's CA")
      fi
    else
      failed=true
      summaries+=("FAILED the real node did not start on containerd 2.3.4: the next pass runs without a cluster")
      cluster=()
    fi
  fi
  run_pass "Docker 29 containerd store" "$docker29" "($always) and not ($no_engine) and not ($podman)" "$@"
fi

echo
for line in "${summaries[@]}"; do echo "test.sh: $line"; done
if $failed; then exit 1; fi
