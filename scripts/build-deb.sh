#!/usr/bin/env bash
# Builds OUT/hapgent_VERSION_amd64.deb (OUT is the first argument, default build) with dpkg-deb:
# the standalone binary, the systemd unit, an LSB init script for hosts where systemd is not PID 1,
# the environment file as a conffile, the default state file as a template (the state lives in
# /var/lib/hapgent, the service user's, and is no conffile), a man page, and maintainer scripts
# that create the hapgent user and its state and start the service (the unit where systemd runs, else the init
# script where a runlevel allows it). Needs dpkg-deb and dpkg-shlibdeps (Debian's dpkg-dev).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in dpkg-deb dpkg-shlibdeps gzip; do
  command -v "$tool" >/dev/null || {
    echo "build-deb: $tool is missing; on Debian: apt-get install dpkg-dev" >&2
    exit 2
  }
done

version="$(node -p 'require("./package.json").version')"
# The man page carries the version as written (`man ./packaging/hapgent.8` from a clone shows it);
# a release changes it with package.json's.
man_version="$(sed -n '1s/^\.TH HAPGENT 8 "[^"]*" "hapgent \([^"]*\)".*/\1/p' packaging/hapgent.8)"
if [ "$man_version" != "$version" ]; then
  echo "build-deb: packaging/hapgent.8 says hapgent ${man_version:-(none)}, package.json $version; make them agree" >&2
  exit 2
fi

out="${1:-build}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
bash scripts/build-binary.sh "$out"

maintainer="${DEB_MAINTAINER:-hapgent maintainers <hapgent@users.noreply.github.com>}"
# Reproducible dates: the last commit's, else now.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
date_rfc2822="$(date -u -R -d "@$SOURCE_DATE_EPOCH")"

stage="$out/deb"
rm -rf "$stage"
install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
  "$stage/etc/hapgent" "$stage/etc/default" "$stage/etc/init.d" "$stage/etc/logrotate.d" "$stage/usr/share/man/man8" \
  "$stage/usr/share/doc/hapgent" "$stage/usr/share/hapgent/prometheus"

install -m 0755 "$out/hapgent" "$stage/usr/bin/hapgent"
# The name the unit starts the daemon by (see packaging/hapgent.service).
install -d -m 0755 "$stage/usr/libexec/hapgent"
ln -s ../../bin/hapgent "$stage/usr/libexec/hapgent/daemon"
install -m 0644 packaging/hapgent.service "$stage/usr/lib/systemd/system/hapgent.service"
# Copied to /var/lib/hapgent/state.json by postinst when there is none: never a conffile, which
# dpkg changes and removes as root, in the service user's directory.
install -m 0644 packaging/state.json "$stage/usr/share/hapgent/state.json"
install -m 0644 packaging/default "$stage/etc/default/hapgent"
# For hosts where systemd is not PID 1; where it is, the unit runs the agent.
install -m 0755 packaging/init.d "$stage/etc/init.d/hapgent"
install -m 0644 packaging/logrotate "$stage/etc/logrotate.d/hapgent"
install -m 0644 packaging/prometheus/hapgent.rules.yml "$stage/usr/share/hapgent/prometheus/hapgent.rules.yml"
gzip -9n <packaging/hapgent.8 >"$stage/usr/share/man/man8/hapgent.8.gz"
chmod 0644 "$stage/usr/share/man/man8/hapgent.8.gz"
gzip -9n <README.md >"$stage/usr/share/doc/hapgent/README.md.gz"
# The pages the README links to, beside it as the links expect.
install -d -m 0755 "$stage/usr/share/doc/hapgent/docs"
for page in docs/*.md; do
  gzip -9n <"$page" >"$stage/usr/share/doc/hapgent/$page.gz"
  chmod 0644 "$stage/usr/share/doc/hapgent/$page.gz"
done
printf 'hapgent (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
  "$version" "$version" "$maintainer" "$date_rfc2822" |
  gzip -9n >"$stage/usr/share/doc/hapgent/changelog.gz"

# DEP-5 copyright. The binary embeds the Node.js runtime: its license, with those of the
# components Node.js bundles, is shipped whole beside it, as Node.js publishes it.
gzip -9n <"$out/LICENSE.node" >"$stage/usr/share/doc/hapgent/LICENSE.node.gz"
{
  printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
  printf 'Upstream-Name: hapgent\n\n'
  printf 'Files: *\nCopyright: 2026 the hapgent authors\nLicense: MIT\n\n'
  printf 'Files: usr/bin/hapgent\nCopyright: 2026 the hapgent authors\n Node.js contributors and other Node.js authors\n prom-client, OpenTelemetry, tdigest and bintrees contributors\n'
  printf 'Comment: The binary embeds the Node.js runtime, MIT-licensed, with the components it\n'
  printf ' bundles under their own licenses; all of them are in\n'
  printf ' /usr/share/doc/hapgent/LICENSE.node.gz.\n The agent bundles, for its Prometheus metrics, prom-client and\n'
  printf ' @opentelemetry/api (Apache-2.0), tdigest and bintrees (MIT).\n'
  printf 'License: MIT and Apache-2.0\n\n'
  printf 'License: MIT\n'
  tail -n +3 LICENSE | sed -e 's/^[[:space:]]*$/./' -e 's/^/ /'
  printf '\nLicense: Apache-2.0\n'
  printf ' On Debian systems, the full text of the Apache License 2.0 is in\n'
  printf ' /usr/share/common-licenses/Apache-2.0.\n'
} >"$stage/usr/share/doc/hapgent/copyright"
install -d -m 0755 "$stage/usr/share/lintian/overrides"
cp packaging/lintian-overrides "$stage/usr/share/lintian/overrides/hapgent"

for script in postinst prerm postrm; do
  install -m 0755 "packaging/$script" "$stage/DEBIAN/$script"
done
printf '%s\n' /etc/default/hapgent /etc/init.d/hapgent /etc/logrotate.d/hapgent \
  >"$stage/DEBIAN/conffiles"

# Library dependencies as Debian computes them; dpkg-shlibdeps reads debian/control.
shlibs="$out/shlibs"
rm -rf "$shlibs" && mkdir -p "$shlibs/debian"
printf 'Source: hapgent\n\nPackage: hapgent\nArchitecture: amd64\n' >"$shlibs/debian/control"
depends="$(cd "$shlibs" && dpkg-shlibdeps -O "$stage/usr/bin/hapgent" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')"
rm -rf "$shlibs"
[[ -n "$depends" ]] || {
  echo "build-deb: dpkg-shlibdeps found no library dependencies" >&2
  exit 1
}

(cd "$stage" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
installed_kib="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat >"$stage/DEBIAN/control" <<EOF
Package: hapgent
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $installed_kib
Depends: adduser, $depends
Section: net
Priority: optional
Description: HAProxy agent-check daemon driven by a JSON state file
 hapgent answers HAProxy's agent-check probes with one line, such as
 "up ready 75% maxconn:300", built from a small JSON state file. Operators
 change the state by editing the file and reloading, with signals from deploy
 scripts (USR2 takes the server out of the load balancer, USR1 puts it back),
 or with the hapgent command, which waits until the agent answers the change.
 .
 The binary embeds Node.js and needs no other runtime.
EOF

deb="$out/hapgent_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "built $deb ($(du -m "$deb" | cut -f1) MiB)"
