#!/usr/bin/env bash
# The main job: the example notification suite against its DataStorage
# stack, on the Docker backend, from a fresh machine.
#
#   scripts/main-job.sh            under cargo test
#   scripts/main-job.sh --kind C   on the Kind cluster C instead
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/engine.sh
bash scripts/stand-ins.sh
if [[ "${1:-}" == "--kind" ]]; then
  export E2E_INFRA_BACKEND=kind E2E_INFRA_KIND_CLUSTER="${2:?--kind takes a cluster name}"
fi
# One line per stage and component, and the summary table of the run.
export RUST_LOG="${RUST_LOG:-e2e_infra=info}"
cargo test -p notification-e2e --features e2e -- --nocapture
