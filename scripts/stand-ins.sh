#!/usr/bin/env bash
# Builds the static `stand-ins` binary the notification example's images are
# made of, and puts it in the example's build context
# (examples/notification/images/stand-ins, not committed).
#
# A separate target directory keeps the static RUSTFLAGS from invalidating
# the normal build cache; cargo makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
out=examples/notification/images

RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --quiet --release -p stand-ins --target "$target" --target-dir target/static

mkdir -p "$out"
built=target/static/$target/release/stand-ins
# Copy only when changed, so the context (and the images' input digests)
# stays the same across runs.
if ! cmp -s "$built" "$out/stand-ins"; then
  cp "$built" "$out/stand-ins"
fi
echo "$out/stand-ins"
