/** Running the build scripts and system tools the packaging tests need. */
import { execFileSync, type SpawnOptions, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { collect, type Finished } from "../helpers.js";

/** The repository: the compiled tests live in dist/test/package. */
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));

/** Runs a command to its end; killed after `timeoutMs`. */
export function exec(
  file: string,
  args: readonly string[],
  { timeoutMs = 60_000, ...options }: SpawnOptions & { timeoutMs?: number } = {},
): Promise<Finished> {
  const child = spawn(file, [...args], { stdio: ["ignore", "pipe", "pipe"], ...options });
  return collect(child, timeoutMs);
}

/** Like exec, but fails with everything the command wrote unless it exits 0. */
export async function execOk(
  file: string,
  args: readonly string[],
  options: SpawnOptions & { timeoutMs?: number } = {},
): Promise<Finished> {
  const result = await exec(file, args, options);
  if (result.code !== 0) {
    throw new Error(
      `${file} ${args.join(" ")} exited ${result.code}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`,
    );
  }
  return result;
}

function has(command: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/**
 * Why a suite cannot run here, or false when it can. Outside CI a missing tool skips the suite,
 * loudly; under CI (CI=true) it fails, since CI must prove the packages.
 */
export function missing(
  suite: string,
  { commands, root = false }: { commands: readonly string[]; root?: boolean },
): string | false {
  const absent = commands.filter((command) => !has(command));
  const reasons = [
    ...(absent.length > 0 ? [`missing ${absent.join(", ")}`] : []),
    ...(root && process.getuid?.() !== 0 ? ["needs root"] : []),
  ];
  if (reasons.length === 0) return false;
  const reason = `${suite}: ${reasons.join("; ")}`;
  if (process.env.CI === "true") throw new Error(`${reason}, and CI must run it (see .ci/run)`);
  process.stderr.write(`\n*** ${reason}: SKIPPED ***\n\n`);
  return reason;
}
