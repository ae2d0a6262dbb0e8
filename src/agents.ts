/**
 * Finds running hapgent daemons by reading /proc: a daemon names itself `hapgent` (its comm and
 * its whole command line) once its signal handlers exist, and its environment says which state
 * file and address it serves. A CLI process keeps its own name and arguments, so it is never
 * taken for a daemon.
 */
import { readdir, readFile, readlink, realpath } from "node:fs/promises";
import { join } from "node:path";
import { type Config, parseConfig } from "./config.js";

export type RunningAgent =
  | { readonly pid: number; readonly readable: true; readonly config: Config }
  | { readonly pid: number; readonly readable: false; readonly reason: string };

/** Every hapgent daemon visible in `procRoot`, except the process `self`. */
export async function findAgents(procRoot: string, self: number): Promise<RunningAgent[]> {
  const names = await readdir(procRoot).catch(() => [] as string[]);
  const found: RunningAgent[] = [];
  for (const name of names) {
    if (!/^[0-9]+$/.test(name) || Number(name) === self) continue;
    const dir = join(procRoot, name);
    const comm = await readFile(join(dir, "comm"), "utf8").catch(() => "");
    if (comm.trim() !== "hapgent") continue;
    const cmdline = await readFile(join(dir, "cmdline"), "utf8").catch(() => "");
    if (cmdline.split("\0").filter(Boolean).join(" ") !== "hapgent") continue;
    found.push(await describeAgent(Number(name), dir));
  }
  return found;
}

async function describeAgent(pid: number, dir: string): Promise<RunningAgent> {
  try {
    const environ = await readFile(join(dir, "environ"), "utf8");
    const cwd = await readlink(join(dir, "cwd"));
    const env: Record<string, string> = {};
    for (const entry of environ.split("\0")) {
      const at = entry.indexOf("=");
      if (at > 0) env[entry.slice(0, at)] = entry.slice(at + 1);
    }
    const parsed = parseConfig(env, cwd);
    if (!parsed.ok) return { pid, readable: false, reason: parsed.reason };
    return { pid, readable: true, config: parsed.config };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return {
      pid,
      readable: false,
      reason:
        code === "EACCES" || code === "EPERM"
          ? "its environment is not readable by this user (run as root or as the agent's user)"
          : `it could not be inspected (${code ?? "error"})`,
    };
  }
}

/** The same file for two paths, following symlinks where the file exists. */
export async function samePath(a: string, b: string): Promise<boolean> {
  const canonical = (path: string) => realpath(path).catch(() => path);
  return (await canonical(a)) === (await canonical(b));
}

/** Where a client reaches an agent that listens on `host` (a wildcard means this host). */
export function probeAddress(host: string): string {
  if (host === "0.0.0.0") return "127.0.0.1";
  if (host === "::") return "::1";
  return host;
}
