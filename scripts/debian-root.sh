#!/usr/bin/env bash
# Minimal Debian roots for the packaging and HAProxy suites, made by debootstrap (minbase) and
# cached under ~/.cache/hapgent-ci, keyed on everything that shapes them. They have no Node.js.
#
#   debian-root.sh [--suite SUITE] [--kind KIND] DEST
#       DEST becomes a fresh copy of the root, so nothing a test does reaches the cache. Its
#       directory must be this user's, and writable by no one else.
#   debian-root.sh [--suite SUITE] [--kind KIND] --print
#       Prints the cached root's path, for tools run from it without changing it.
#   debian-root.sh --prepare
#       Makes every root the suites use, one after another, so that the suites find them made.
#
# SUITE is bookworm (Debian 12, the default) or trixie (Debian 13). KIND is what minbase is given:
#   systemd   adduser, systemd as init and dbus: a root that boots with systemd-nspawn (default)
#   sysvinit  adduser and sysvinit-core: a root that boots with another init than systemd
#   haproxy   the release's HAProxy, run from the cached root
#   lintian   the release's lintian, run from the cached root
# Needs root and debootstrap. Concurrent runs wait for each other (flock) instead of building the
# same root twice.
set -euo pipefail

usage() {
  echo "usage: debian-root.sh [--suite bookworm|trixie] [--kind systemd|sysvinit|haproxy|lintian] DEST|--print" >&2
  echo "       debian-root.sh --prepare" >&2
  exit 2
}

if [[ "${1:-}" == --prepare ]]; then
  (($# == 1)) || usage
  # One at a time, in the order the suites first need them (HAProxy's first), so that making
  # them takes one core, not every core the suites run on meanwhile.
  failed=0
  for root in "trixie haproxy" "bookworm systemd" "trixie systemd" "trixie sysvinit" \
    "trixie lintian"; do
    read -r suite kind <<<"$root"
    bash "${BASH_SOURCE[0]}" --suite "$suite" --kind "$kind" --print >/dev/null || failed=1
  done
  exit "$failed"
fi

suite=bookworm
kind=systemd
dest=""
print=false
while (($#)); do
  case "$1" in
    --suite) suite="${2:-}" && shift 2 || usage ;;
    --kind) kind="${2:-}" && shift 2 || usage ;;
    --print) print=true && shift ;;
    -*) usage ;;
    *) [[ -z "$dest" ]] || usage && dest="$1" && shift ;;
  esac
done
case "$suite" in bookworm | trixie) ;; *)
  echo "debian-root: unknown suite '$suite'; expected bookworm or trixie" >&2
  exit 2
  ;;
esac
case "$kind" in
  systemd) include=adduser,systemd,systemd-sysv,dbus ;;
  sysvinit) include=adduser,sysvinit-core ;;
  haproxy) include=haproxy ;;
  # perl-openssl-defaults: debootstrap does not resolve the virtual package lintian's TLS needs.
  lintian) include=lintian,perl-openssl-defaults ;;
  *)
    echo "debian-root: unknown kind '$kind'; expected systemd, sysvinit, haproxy or lintian" >&2
    exit 2
    ;;
esac
if $print; then [[ -z "$dest" ]] || usage; else [[ -n "$dest" ]] || usage; fi

variant=minbase
mirror="${HAPGENT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${HAPGENT_CACHE_DIR:-${HOME:-/root}/.cache/hapgent-ci}/debootstrap"
key="$(printf '%s\n' "$suite" "$variant" "$include" "$mirror" "$(uname -m)" | sha256sum | cut -c1-16)"
root="$cache/$suite-$variant-$key"

# DEST is removed first: only an empty or missing directory, or a root this script made. It is
# made by root, setuid programs included: in a directory no one else may write (not /tmp itself,
# where another user could put a link in its place).
marker=.hapgent-debian-root
if ! $print; then
  parent="$(dirname "$dest")"
  if [[ ! -d "$parent" || -L "$parent" || "$(stat -c %u "$parent")" != "$(id -u)" ]] ||
    [[ -n "$(find "$parent" -maxdepth 0 -perm /022)" ]]; then
    echo "debian-root: $parent must be a directory of this user's that no one else may write" >&2
    exit 2
  fi
  if [[ -e "$dest" && ! -e "$dest/$marker" ]] && [[ ! -d "$dest" || -n "$(ls -A "$dest")" ]]; then
    echo "debian-root: $dest exists and is not a root this script made; expected a new path" >&2
    exit 2
  fi
fi

# Removes a directory, unmounting first what an interrupted debootstrap left mounted in it.
remove() {
  local mounts
  mounts="$(awk -v dir="$1/" 'index($2, dir) == 1 { print $2 }' /proc/mounts | sort -r)"
  [[ -z "$mounts" ]] || xargs -r -n1 umount -l <<<"$mounts" || true
  rm -rf --one-file-system "$1"
}

mkdir -p "$cache"
exec 9>"$cache/.lock-$key"
# Another run making this root holds the lock; half an hour is more than any build takes.
flock -w 1800 9 || {
  echo "debian-root: $cache/.lock-$key is still held after 30 minutes" >&2
  exit 1
}
if [[ ! -x "$root/usr/bin/dpkg" ]]; then
  # Built aside and renamed into place: an interrupted run never leaves a half root in the cache,
  # and the next run (holding the same lock) removes what it left.
  building="$cache/.building-$key"
  remove "$building"
  mkdir -p "$building"
  trap 'remove "$building"' EXIT
  echo "debian-root: debootstrap $suite ($variant + $include) from $mirror" >&2
  if ! debootstrap --variant="$variant" --include="$include" "$suite" "$building/root" "$mirror" \
    >"$building/log" 2>&1 9>&-; then
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
flock -u 9

if $print; then
  printf '%s\n' "$root"
  exit 0
fi
remove "$dest"
cp -a --reflink=auto "$root" "$dest" 9>&-
touch "$dest/$marker"
