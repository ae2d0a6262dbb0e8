#!/usr/bin/env bash
# Makes DEST a fresh minimal Debian 12 root (debootstrap's minbase, plus adduser and systemd so
# that it can also be booted with systemd-nspawn). It has no Node.js. The root built by
# debootstrap is cached under ~/.cache/hapgent-ci, keyed on everything that shapes it; DEST is a
# copy, so nothing a test does reaches the cache. Needs root and debootstrap.
set -euo pipefail

dest="${1:?usage: debian-root.sh DEST}"
suite=bookworm
variant=minbase
include=adduser,systemd,systemd-sysv,dbus
mirror="${HAPGENT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

cache="${HAPGENT_CACHE_DIR:-${HOME:-/root}/.cache/hapgent-ci}/debootstrap"
key="$(printf '%s\n' "$suite" "$variant" "$include" "$mirror" "$(uname -m)" | sha256sum | cut -c1-16)"
root="$cache/$suite-$variant-$key"

if [[ ! -x "$root/usr/bin/dpkg" ]]; then
  mkdir -p "$cache"
  # Built aside and renamed into place: an interrupted run never leaves a half root in the cache.
  building="$(mktemp -d "$cache/.building-XXXXXX")"
  trap 'rm -rf "$building"' EXIT
  echo "debian-root: debootstrap $suite ($variant + $include) from $mirror" >&2
  if ! debootstrap --variant="$variant" --include="$include" "$suite" "$building/root" "$mirror" \
    >"$building/log" 2>&1; then
    tail -n 30 "$building/log" >&2
    [[ -f "$building/root/debootstrap/debootstrap.log" ]] &&
      tail -n 30 "$building/root/debootstrap/debootstrap.log" >&2
    exit 1
  fi
  # What apt fetched is not needed again.
  rm -rf "$building/root/var/cache/apt/archives/"*.deb
  rm -rf "$root"
  mv "$building/root" "$root"
fi

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -a --reflink=auto "$root" "$dest"
