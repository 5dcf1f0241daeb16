#!/usr/bin/env bash
# Runs every test: starts the engines they need, then the whole workspace
# under cargo-nextest with all features.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/engine.sh --all
# The example suite builds its images from the static stand-in services.
bash scripts/stand-ins.sh
cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
cargo nextest run --workspace --all-features --no-fail-fast "$@"
