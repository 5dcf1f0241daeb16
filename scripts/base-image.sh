#!/usr/bin/env bash
# Makes the Debian base image the notification example's postgres and redis
# images are built FROM: `localhost/e2e-infra-debian:bookworm-postgres-redis`,
# a minbase bookworm with PostgreSQL 15 and Redis 7, made by debootstrap from
# Debian's packages. The images on top only configure: no build step needs
# a network, so they build on every engine, and both share this one layer.
#
# It is built once per set of inputs and never again because a run starts:
# - the inputs (suite, variant, mirror, packages, slimming steps) have a
#   digest; the image carries it as the label io.e2e-infra.base.inputs, so an
#   engine that holds the image with that label costs one `docker image
#   inspect`;
# - the root filesystem is kept as a tarball in $E2E_INFRA_BASE_CACHE
#   (default /var/tmp/e2e-infra-base), named by that digest, so another
#   engine (DOCKER_HOST) or an engine that lost the image gets it by an
#   import of a few seconds, without debootstrap.
#
# Variables: DEBIAN_MIRROR (default: the first Debian URI in apt's sources),
# E2E_INFRA_BASE_CACHE. Prints the image reference.
set -euo pipefail

image=localhost/e2e-infra-debian:bookworm-postgres-redis
suite=bookworm
variant=minbase
include=postgresql-15,redis-server
label=io.e2e-infra.base.inputs
cache=${E2E_INFRA_BASE_CACHE:-/var/tmp/e2e-infra-base}

mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local uri
  uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v -- '-security' | grep -oE 'https?://[^ ]+' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# What the image holds beyond debootstrap's output: no documentation,
# manuals or translations, and apt and dpkg set up to install none of them
# nor recommends. PostgreSQL without JIT (LLVM, Z3), the Perl of Debian's
# cluster wrappers (the server and psql run from their own folder, with JIT
# off) or the `main` cluster its package creates (the image initialises its
# own in $PGDATA); no `locales` either (C.UTF-8 is libc's own).
slim() {
  local root=$1
  dpkg --root="$root" --purge --force-depends libllvm14 libz3-4 perl perl-modules-5.36 libperl5.36 \
    locales libc-l10n
  rm -rf "$root"/usr/lib/postgresql/15/lib/llvmjit* "$root"/usr/lib/postgresql/15/lib/bitcode \
    "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15
  chroot "$root" install -d -o postgres -g postgres /run/postgresql /var/lib/postgresql/data
  rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    >"$root/etc/dpkg/dpkg.cfg.d/01-e2e-infra-slim"
  printf '%s\n' 'APT::Install-Recommends "false";' 'APT::Install-Suggests "false";' \
    >"$root/etc/apt/apt.conf.d/01-e2e-infra-slim"
}

source=$(mirror)
# The digest covers every input, the slimming steps' text included.
inputs=$(printf 'suite=%s\nvariant=%s\nmirror=%s\ninclude=%s\n%s\n' \
  "$suite" "$variant" "$source" "$include" "$(declare -f slim)" | sha256sum | cut -c1-16)
tarball=$cache/debian-$suite-$inputs.tar
log=$cache/debian-$suite-$inputs.log

if [[ "$(docker image inspect --format "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null)" == "$inputs" ]]; then
  echo "$image"
  exit 0
fi

if [[ ! -s "$tarball" ]]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/root.XXXXXX")
  trap 'status=$?; rm -rf "$root" "$tarball.partial"
    if ((status)); then tail -n 20 "$log" >&2; echo "base-image: debootstrap or slimming failed (log: $log)" >&2; fi' EXIT
  started=$SECONDS
  args=(--variant="$variant")
  [[ -n "$include" ]] && args+=(--include="$include")
  debootstrap "${args[@]}" "$suite" "$root" "$source" >"$log" 2>&1
  slim "$root" >>"$log" 2>&1
  tar -C "$root" --numeric-owner -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
  printf 'suite=%s\nvariant=%s\nmirror=%s\ninclude=%s\ndigest=%s\nbuilt=%s\nseconds=%s\n' \
    "$suite" "$variant" "$source" "$include" "$inputs" "$(date -u +%FT%TZ)" "$((SECONDS - started))" \
    >"$cache/debian-$suite-$inputs.inputs"
  echo "base-image: debootstrap of $suite ($variant) from $source took $((SECONDS - started)) s" >&2
fi

docker import --change "LABEL $label=$inputs" --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
echo "$image"
