/**
 * Finds running hapgent daemons by reading /proc: a daemon names itself `hapgent` (its comm and
 * its whole command line) once its signal handlers exist, and its environment says which state
 * file and address it serves. A command keeps its own name and arguments, so it is never taken
 * for a daemon. Any process can take that name: what a daemon says is only as good as the user
 * it runs as, and the caller decides what to believe (target.ts).
 */
import { readdir, readFile, readlink, realpath } from "node:fs/promises";
import { join } from "node:path";
import { type Config, parseConfig } from "../config.js";

interface Found {
  readonly pid: number;
  /** The real uid it runs as. */
  readonly uid: number;
  /** Its systemd unit when it runs in a system service's cgroup, which only root can arrange. */
  readonly unit: string | undefined;
}

export type RunningDaemon =
  | (Found & { readonly readable: true; readonly config: Config })
  | (Found & { readonly readable: false; readonly reason: string });

/** Every hapgent daemon visible in `procRoot`, except the process `self`. */
export async function findDaemons(procRoot: string, self: number): Promise<RunningDaemon[]> {
  const names = await readdir(procRoot).catch(() => [] as string[]);
  const found: RunningDaemon[] = [];
  for (const name of names) {
    if (!/^[0-9]+$/.test(name) || Number(name) === self) continue;
    const dir = join(procRoot, name);
    const comm = await readFile(join(dir, "comm"), "utf8").catch(() => "");
    if (comm.trim() !== "hapgent") continue;
    const cmdline = await readFile(join(dir, "cmdline"), "utf8").catch(() => "");
    if (cmdline.split("\0").filter(Boolean).join(" ") !== "hapgent") continue;
    const status = await readFile(join(dir, "status"), "utf8").catch(() => "");
    const uid = Number(/^Uid:\s+([0-9]+)/m.exec(status)?.[1] ?? Number.NaN);
    // Gone between the listing and now, or not a process we can see.
    if (!Number.isInteger(uid)) continue;
    const cgroup = await readFile(join(dir, "cgroup"), "utf8").catch(() => "");
    const base = { pid: Number(name), uid, unit: systemUnit(cgroup) };
    found.push({ ...base, ...(await describe(dir)) });
  }
  return found;
}

/**
 * The unit of a process in the system manager's service cgroup (`0::/system.slice/NAME.service`
 * in cgroup v2): only root can place a process there; a user's own services run under
 * /user.slice.
 */
export function systemUnit(cgroup: string): string | undefined {
  const path = /^0::(\/\S*)$/m.exec(cgroup)?.[1];
  return path === undefined ? undefined : /^\/system\.slice\/([^/]+\.service)$/.exec(path)?.[1];
}

async function describe(
  dir: string,
): Promise<{ readable: true; config: Config } | { readable: false; reason: string }> {
  try {
    const environ = await readFile(join(dir, "environ"), "utf8");
    const cwd = await readlink(join(dir, "cwd"));
    const env: Record<string, string> = {};
    for (const entry of environ.split("\0")) {
      const at = entry.indexOf("=");
      if (at > 0) env[entry.slice(0, at)] = entry.slice(at + 1);
    }
    const parsed = parseConfig(env, cwd);
    if (!parsed.ok) return { readable: false, reason: parsed.reason };
    return { readable: true, config: parsed.config };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return {
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
