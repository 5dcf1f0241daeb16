#!/usr/bin/env bash
# Makes what the notification example's images are built from, before a run:
# - the Debian base image, PostgreSQL and Redis included, that its postgres
#   and redis images start FROM (scripts/base-image.sh: built once per set
#   of inputs, cached on disk), on the engine of DOCKER_HOST;
# - the static binaries of DataStorage (which also applies the migrations)
#   and of the notification controller, in examples/notification/images
#   (not committed).
# The base image is made in the background while cargo compiles.
#
# A separate target directory keeps the static RUSTFLAGS from invalidating
# the normal build cache; cargo makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
out=examples/notification/images
log=$(mktemp /tmp/e2e-infra-base-image.XXXXXX)
trap 'rm -f "$log"' EXIT

bash scripts/base-image.sh >"$log" 2>&1 &
base=$!

RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --quiet --profile example -p datastorage -p notification-controller --target "$target" --target-dir target/static

mkdir -p "$out"
for binary in datastorage notification-controller; do
  built=target/static/$target/example/$binary
  # Copy only when changed, so the context (and the images' input digests)
  # stays the same across runs.
  if ! cmp -s "$built" "$out/$binary"; then
    cp "$built" "$out/$binary"
  fi
done
if ! wait "$base"; then
  cat "$log" >&2
  echo "example.sh: the base image could not be made" >&2
  exit 1
fi
cat "$log"
