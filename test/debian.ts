/**
 * Minimal Debian roots (scripts/debian-root.sh, cached between runs): the releases the package
 * is proven on, and the kinds of root the suites use.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { execOk, REPO } from "./helpers.js";

/** The Debian releases the package and the HAProxy suite are proven on. */
export const RELEASES = [
  { suite: "bookworm", name: "Debian 12" },
  { suite: "trixie", name: "Debian 13" },
] as const;
export type Suite = (typeof RELEASES)[number]["suite"];

/** systemd, sysvinit: boots with that init; haproxy, lintian: holds that tool of the release. */
export type RootKind = "systemd" | "sysvinit" | "haproxy" | "lintian";

const SCRIPT = join(REPO, "scripts/debian-root.sh");

/** Makes `dest` a fresh copy of the cached root (made first if missing: minutes). */
export async function debianRoot(dest: string, suite: Suite, kind: RootKind): Promise<void> {
  await execOk("bash", [SCRIPT, "--suite", suite, "--kind", kind, dest], { timeoutMs: 900_000 });
}

/**
 * The cached root itself (made first if missing), for tools run from it that change nothing in
 * it. Synchronous: modules decide at load what they can run.
 */
export function cachedDebianRoot(suite: Suite, kind: RootKind): string {
  return execFileSync("bash", [SCRIPT, "--suite", suite, "--kind", kind, "--print"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    timeout: 900_000,
  }).trim();
}
