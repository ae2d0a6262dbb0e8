/**
 * The Node flags hapgent runs with, read from the one place they are set: the first line of the
 * compiled main.js (`#!/usr/bin/env -S node …`). The tests, the benchmark and the standalone
 * binary's build take them from here. Run directly, it prints them on one line.
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

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write(`${nodeFlags().join(" ")}\n`);
}
