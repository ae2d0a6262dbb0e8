/**
 * Finds running hapgent daemons by reading /proc: a daemon names itself `hapgent` (its comm and
 * its whole command line) once its signal handlers exist, and its environment says which state
 * file and address it serves. A command keeps its own name and arguments, so it is never taken
 * for a daemon. Any process can take that name: what a daemon says is only as good as the user
 * it runs as, and the caller decides what to believe (target.ts).
 */
import { open, readdir, readlink, realpath } from "node:fs/promises";
import { join } from "node:path";
import { type Config, parseConfig } from "../config.js";
import { printable } from "../core/state.js";

/** A process that calls itself hapgent, and who it is. Its environment is read only on demand. */
export interface Found {
  readonly pid: number;
  /** The real uid it runs as. */
  readonly uid: number;
  /** When it started, in clock ticks since boot: with the pid, it names the process for good. */
  readonly startTicks: string;
  /** Its systemd unit when it runs in a system service's cgroup, which only root can arrange. */
  readonly unit: string | undefined;
}

/** What a daemon's environment says it serves, or why it says nothing usable. */
export type Described =
  | { readonly readable: true; readonly config: Config }
  | { readonly readable: false; readonly reason: string };

export type RunningDaemon = Found & Described;

/** A daemon's command line is `hapgent`; anything much longer is not one. */
const MAX_CMDLINE_BYTES = 4096;
/** A daemon's environment is small; another user's process may make its own huge. */
const MAX_ENVIRON_BYTES = 1024 * 1024;
const MAX_SMALL_FILE_BYTES = 64 * 1024;

/**
 * Every process in `procRoot` that calls itself a hapgent daemon, except `self`: cheaply, from
 * small files. Any user can start thousands: their environments are not read here.
 */
export async function findDaemons(procRoot: string, self: number): Promise<Found[]> {
  const names = await readdir(procRoot).catch(() => [] as string[]);
  const found: Found[] = [];
  for (const name of names) {
    if (!/^[0-9]+$/.test(name) || Number(name) === self) continue;
    const daemon = await inspect(join(procRoot, name), Number(name)).catch(() => undefined);
    if (daemon !== undefined) found.push(daemon);
  }
  return found;
}

/** The daemon in /proc/PID, or undefined when the process is not one (or is gone). */
async function inspect(dir: string, pid: number): Promise<Found | undefined> {
  const comm = await readText(join(dir, "comm"), 64).catch(() => "");
  if (comm.trim() !== "hapgent") return undefined;
  const cmdline = await readText(join(dir, "cmdline"), MAX_CMDLINE_BYTES).catch(() => "");
  if (cmdline.split("\0").filter(Boolean).join(" ") !== "hapgent") return undefined;
  return identify(dir, pid);
}

/** Reads what a daemon's environment says it serves. */
export async function describeDaemon(procRoot: string, daemon: Found): Promise<Described> {
  return describe(join(procRoot, String(daemon.pid)), daemon.uid);
}

/** Who a process is: its uid, start time and service; undefined when it is gone. */
export async function identify(dir: string, pid: number): Promise<Found | undefined> {
  const status = await readText(join(dir, "status"), MAX_SMALL_FILE_BYTES).catch(() => "");
  const uid = Number(/^Uid:\s+([0-9]+)/m.exec(status)?.[1] ?? Number.NaN);
  // The start time is field 22; the command name before it may hold spaces and parentheses.
  const stat = await readText(join(dir, "stat"), MAX_SMALL_FILE_BYTES).catch(() => "");
  const startTicks = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  if (!Number.isInteger(uid) || startTicks === undefined) return undefined;
  const cgroup = await readText(join(dir, "cgroup"), MAX_SMALL_FILE_BYTES).catch(() => "");
  return { pid, uid, startTicks, unit: systemUnit(cgroup) };
}

/**
 * The unit of a process in the system manager's service cgroup: `0::/system.slice/NAME.service`
 * (cgroup v2) or `N:name=systemd:/system.slice/NAME.service` (v1). Only root can place a process
 * there; a user's own services run under /user.slice.
 */
export function systemUnit(cgroup: string): string | undefined {
  const path = /^(?:0:|[0-9]+:name=systemd):(\/\S*)$/m.exec(cgroup)?.[1];
  return path === undefined ? undefined : /^\/system\.slice\/([^/]+\.service)$/.exec(path)?.[1];
}

async function describe(
  dir: string,
  uid: number,
): Promise<{ readable: true; config: Config } | { readable: false; reason: string }> {
  try {
    const env = await hapgentVariables(join(dir, "environ"));
    if (env === undefined) {
      return {
        readable: false,
        reason: `its environment is larger than ${MAX_ENVIRON_BYTES / 1024 / 1024} MiB, which no hapgent's is`,
      };
    }
    const cwd = await readlink(join(dir, "cwd"));
    const parsed = parseConfig(env, cwd, uid);
    if (!parsed.ok) return { readable: false, reason: printable(parsed.reason) };
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

/**
 * The variables of a process's environment that decide what it serves (HAPGENT_*, and where it
 * keeps run-time files); undefined when the environment is implausibly large.
 */
async function hapgentVariables(path: string): Promise<Record<string, string> | undefined> {
  const bytes = await readBounded(path, MAX_ENVIRON_BYTES + 1);
  if (bytes.length > MAX_ENVIRON_BYTES) return undefined;
  // Found where they are, without splitting what may be a million other entries.
  const env: Record<string, string> = {};
  for (const prefix of PREFIXES) {
    for (let at = bytes.indexOf(prefix); at >= 0; at = bytes.indexOf(prefix, at + 1)) {
      if (at > 0 && bytes[at - 1] !== 0) continue;
      const end = bytes.indexOf(0, at);
      const entry = bytes.toString("utf8", at, end < 0 ? bytes.length : end);
      const equals = entry.indexOf("=");
      if (equals > 0) env[entry.slice(0, equals)] = entry.slice(equals + 1);
    }
  }
  return env;
}
const PREFIXES = ["HAPGENT_", "RUNTIME_DIRECTORY=", "XDG_RUNTIME_DIR="].map((p) => Buffer.from(p));

/** At most `max` bytes of a file: /proc files can be as large as their owner likes. */
async function readBounded(path: string, max: number): Promise<Buffer> {
  const handle = await open(path, "r");
  try {
    const buffer = Buffer.alloc(max);
    let length = 0;
    while (length < max) {
      const { bytesRead } = await handle.read(buffer, length, max - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    return buffer.subarray(0, length);
  } finally {
    await handle.close();
  }
}

/** At most `max` bytes of a file, as text. */
async function readText(path: string, max: number): Promise<string> {
  return (await readBounded(path, max)).toString("utf8");
}

/** True while `daemon` still runs: the same pid and start time, so not a reused pid. */
export async function stillRunning(procRoot: string, daemon: Found): Promise<boolean> {
  const now = await identify(join(procRoot, String(daemon.pid)), daemon.pid).catch(() => undefined);
  return now?.startTicks === daemon.startTicks && now.uid === daemon.uid;
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
