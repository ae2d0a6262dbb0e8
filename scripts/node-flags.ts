/**
 * The Node flags hapgent runs with, read from the one place they are set: the first line of the
 * compiled main.js (`#!/usr/bin/env -S node …`), and the one the standalone binary adds. The
 * tests, the benchmark and the binary's build take them from here. Run directly, it prints them
 * on one line; with `--binary`, the binary's.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

/** The compiled entry point whose first line sets the flags. */
export const MAIN_JS = fileURLToPath(new URL("../src/main.js", import.meta.url));

/** The flags of `mainJs`'s first line; throws when that line is not the expected shebang. */
export function nodeFlags(mainJs = MAIN_JS): string[] {
  const first = readFileSync(mainJs, "utf8").split("\n", 1)[0] ?? "";
  const match = /^#!\/usr\/bin\/env -S node((?: --[a-z0-9-]+(?:=\S+)?)*)$/.exec(first);
  if (!match) throw new Error(`unexpected first line of ${mainJs}: ${first}`);
  return (match[1] ?? "").split(" ").filter(Boolean);
}

/**
 * What the binary adds for the Node inside it (its version is fixed, so V8's own flags are safe
 * there): no JIT compiler. At the few probes a second load balancers send, the interpreter does
 * the agent's work; without optimized code the agent keeps about 10 MiB less under load, allocates
 * no executable memory at run time, and still serves thousands of probes a second (BENCHMARKS.md,
 * "A lighter binary"). Without a JIT there is no WebAssembly, so no `fetch` (undici needs it): the
 * agent's HTTP (checks, metrics, etcd) is `node:http`.
 */
export const BINARY_EXTRA_FLAGS: readonly string[] = ["--jitless"];

/** The flags the standalone binary runs with. */
export function binaryFlags(mainJs = MAIN_JS): string[] {
  return [...nodeFlags(mainJs), ...BINARY_EXTRA_FLAGS];
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const binary = process.argv[2] === "--binary";
  process.stdout.write(`${(binary ? binaryFlags() : nodeFlags()).join(" ")}\n`);
}
