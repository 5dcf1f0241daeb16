#!/usr/bin/env bash
# Makes what the notification example's images are built from, before a run:
# - the Debian base image, PostgreSQL and Redis included, that its postgres
#   and redis images start FROM (scripts/base-image.sh: built once per set
#   of inputs, cached on disk), on the engine of DOCKER_HOST;
# - the binaries of DataStorage (which also applies the migrations) and of
#   the notification controller, stripped, with the C libraries they link
#   (libc, libm, libgcc_s and the dynamic loader, taken from this machine),
#   in examples/notification/images (not committed): their images start
#   FROM scratch and run on any engine and node, whatever its distribution.
# The base image is made in the background while cargo compiles.
#
#   scripts/example.sh           the services alone
#   scripts/example.sh --suite   the example's suite too (`cargo test -p
#                                notification-e2e --features e2e` then
#                                compiles nothing): one cargo invocation
#                                builds the dependencies the services and the
#                                suite share once, with one set of features
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(-p datastorage -p notification-controller)
case "${1:-}" in
  "") ;;
  --suite) packages+=(-p notification-e2e --features notification-e2e/e2e --tests) ;;
  *) echo "usage: scripts/example.sh [--suite]" >&2; exit 2 ;;
esac

out=examples/notification/images
log=$(mktemp /tmp/e2e-infra-base-image.XXXXXX)
stripped=$(mktemp -d /tmp/e2e-infra-example.XXXXXX)
trap 'rm -f "$log"; rm -rf "$stripped"' EXIT

bash scripts/base-image.sh >"$log" 2>&1 &
base=$!

cargo build --quiet --bins "${packages[@]}"

# install_if_changed SOURCE DEST: DEST becomes SOURCE, and is left as it is
# when it already is, so that the context (and the images' input digests)
# stays the same across runs.
install_if_changed() {
  if ! cmp -s "$1" "$2"; then
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2"
  fi
}

libraries=()
for binary in datastorage notification-controller; do
  strip -o "$stripped/$binary" "target/debug/$binary"
  install_if_changed "$stripped/$binary" "$out/$binary"
  # ldd's lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
  # and the loader's "/lib64/ld-linux-x86-64.so.2 (0x...)".
  mapfile -t -O "${#libraries[@]}" libraries < <(ldd "target/debug/$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
done
for library in $(printf '%s\n' "${libraries[@]}" | sort -u); do
  # The path the binaries ask for, holding the file it resolves to.
  install_if_changed "$(readlink -f "$library")" "$out/libraries$library"
done

if ! wait "$base"; then
  cat "$log" >&2
  echo "example.sh: the base image could not be made" >&2
  exit 1
fi
cat "$log"
