/**
 * Runs the real HAProxy in the foreground against the agent under test, every supported version
 * side by side (Debian 12's 2.6 and Debian 13's 3.0), and reads each one's view of each server
 * through its runtime API.
 */
import { execFileSync, spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { join } from "node:path";
import { cachedDebianRoot } from "./debian.js";
import { freePort, missing, tempDir, waitFor } from "./helpers.js";

export interface ServerSpec {
  readonly name: string;
  /** Weight configured in haproxy.cfg. */
  readonly weight: number;
  /** Adds HAProxy's own TCP health check against a loopback listener that accepts. */
  readonly check?: boolean;
  /** Text sent with agent-send (a `\n` is appended). */
  readonly send?: string;
  /** maxconn on the server line in haproxy.cfg. */
  readonly maxconn?: number;
}

export interface BackendSpec {
  readonly name: string;
  readonly servers: readonly ServerSpec[];
}

/** One server as HAProxy shows it. */
export interface ServerView {
  /** `show stat` status: UP, DOWN, MAINT, DRAIN, no check, … */
  readonly status: string;
  readonly weight: number;
  /** `show stat` slim: the server's maxconn, "" when none. */
  readonly maxconn: string;
  readonly agentStatus: string;
  readonly agentDesc: string;
  /** `show stat` last_agt: "via agent : down (text)" when the reply had a description. */
  readonly lastAgent: string;
  /** `show servers state`: 0 stopped, 2 running. */
  readonly opState: number;
  /** `show servers state` admin bits: 0x01 forced maint, 0x08 forced drain. */
  readonly adminState: number;
  /** `show servers state` user weight. */
  readonly userWeight: number;
}

export type View = Record<string, ServerView>;

/** One HAProxy build: how to run it, and its version as `haproxy -v` tells it. */
export interface HaproxyBuild {
  /** "2.6.12-1+deb12u4", or "unknown" when `haproxy -v` does not say. */
  readonly version: string;
  /** "HAProxy 2.6.12-1+deb12u4", and where it comes from when not the machine. */
  readonly label: string;
  readonly file: string;
  /** Arguments before HAProxy's own (a dynamic loader's, for a build run from a Debian root). */
  readonly args: readonly string[];
}

/** One HAProxy process. */
export interface Haproxy {
  readonly build: HaproxyBuild;
  readonly dir: string;
  readonly config: string;
  command(line: string): Promise<string>;
  /** Every server of every backend, keyed `backend/server`. */
  view(): Promise<View>;
  /** Waits until `predicate` holds for the view; fails with the last view. */
  waitUntil(what: string, predicate: (view: View) => boolean, timeoutMs?: number): Promise<View>;
  stop(): Promise<void>;
  /** Stops this process and starts a fresh one with the same config (a reload's effect on state). */
  restart(): Promise<void>;
  log(): string;
}

/** The same configuration run by every HAProxy build the suite judges, side by side. */
export interface Haproxies {
  readonly each: readonly Haproxy[];
  /** One view per build, in the order of HAPROXIES. */
  views(): Promise<View[]>;
  /**
   * Waits until `predicate` holds for every build's view, all builds at once (so one wait, not
   * one per build); fails naming the build and its last view.
   */
  waitUntil(what: string, predicate: (view: View) => boolean, timeoutMs?: number): Promise<View[]>;
  restart(): Promise<void>;
  /** What every build printed, each under its label. */
  log(): string;
}

/** The version `haproxy -v` prints, or undefined when `file` does not run. */
function versionOf(file: string, args: readonly string[]): string | undefined {
  try {
    const out = execFileSync(file, [...args, "-v"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 10_000,
    });
    return out.match(/^HAProxy version (\S+)/m)?.[1] ?? "unknown";
  } catch {
    return undefined;
  }
}

function build(file: string, args: readonly string[] = [], from = ""): HaproxyBuild | undefined {
  const version = versionOf(file, args);
  return version === undefined
    ? undefined
    : { version, label: `HAProxy ${version}${from}`, file, args };
}

/** Outside CI, why a build is not judged; in CI, where everything must be, an error. */
function unavailable(why: string): string {
  if (process.env.CI === "true") throw new Error(`${why}, and CI must run the HAProxy suite`);
  process.stderr.write(`\n*** ${why}: not judged by the HAProxy suite ***\n\n`);
  return why;
}

/**
 * Debian 13's HAProxy (3.0), run from a cached Debian 13 root with that root's own dynamic loader
 * and libraries: nothing is installed on the machine, nothing needs a chroot. Making the root
 * needs root and debootstrap; without them, why not.
 */
function debian13Haproxy(): HaproxyBuild | string {
  const reason = missing("HAProxy 3.0 from a Debian 13 root", {
    commands: ["debootstrap", "flock"],
    root: true,
  });
  if (reason !== false) return reason; // said by missing()
  let root: string;
  try {
    root = cachedDebianRoot("trixie", "haproxy");
  } catch (err) {
    const first = (err as Error).message.split("\n")[0];
    return unavailable(`HAProxy 3.0: the Debian 13 root could not be made (${first})`);
  }
  const loader = join(root, "usr/lib64/ld-linux-x86-64.so.2");
  const libraries = join(root, "usr/lib/x86_64-linux-gnu");
  const haproxy = join(root, "usr/sbin/haproxy");
  return (
    build(loader, ["--library-path", libraries, haproxy], " (Debian 13)") ??
    unavailable(`the HAProxy of ${root} does not run (on ${process.arch}; it is amd64's)`)
  );
}

/**
 * The HAProxy builds the suite judges. $HAPGENT_TEST_HAPROXY, when set, names them (commands or
 * paths, separated by ":"): a user's own builds. Otherwise every version the project supports:
 * the machine's HAProxy (`haproxy` on PATH, else Debian's /usr/sbin/haproxy, which is off an
 * ordinary user's PATH: Debian 12's 2.6 here) and Debian 13's 3.0 from a cached Debian 13 root.
 * A build of the same version as one already listed is not run twice.
 */
export const { HAPROXIES, NOT_JUDGED } = (() => {
  const builds: HaproxyBuild[] = [];
  const notJudged: string[] = [];
  const add = (found: HaproxyBuild | string | undefined) => {
    if (typeof found === "string") notJudged.push(found);
    else if (found && !builds.some((b) => b.version === found.version)) builds.push(found);
  };
  const chosen = process.env.HAPGENT_TEST_HAPROXY;
  if (chosen) {
    for (const command of chosen.split(":").filter(Boolean)) {
      add(build(command) ?? unavailable(`HAPGENT_TEST_HAPROXY: ${command} does not run`));
    }
  } else {
    const machine = ["haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
      .map((command) => build(command))
      .find((found) => found !== undefined);
    add(machine ?? unavailable("HAProxy is not installed (apt-get install haproxy)"));
    add(debian13Haproxy());
  }
  return { HAPROXIES: builds as readonly HaproxyBuild[], NOT_JUDGED: notJudged };
})();

/** Without any HAProxy (outside CI: unavailable() has thrown in CI) the suite is skipped. */
export const SKIP_HAPROXY = HAPROXIES.length === 0 ? NOT_JUDGED.join("; ") : false;

/** A loopback listener that accepts and closes, for HAProxy's regular TCP check. */
export async function startCheckTarget(t: {
  after: (fn: () => Promise<void>) => void;
}): Promise<number> {
  const server: Server = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const address = server.address();
  return typeof address === "object" && address ? address.port : 0;
}

interface HaproxySpec {
  agentPort: number;
  backends: readonly BackendSpec[];
  agentInterMs?: number;
  /** The address its checks and agent checks leave from (a loopback address of its own). */
  source?: string;
}

/** Starts every build of HAPROXIES on the same configuration, polling the same agent. */
export async function startHaproxy(
  t: { after: (fn: () => Promise<void>) => void },
  spec: HaproxySpec,
): Promise<Haproxies> {
  const each = await Promise.all(HAPROXIES.map((build) => startOne(t, build, spec)));
  return {
    each,
    views: () => Promise.all(each.map((h) => h.view())),
    waitUntil: (what, predicate, timeoutMs) =>
      Promise.all(
        each.map((h) =>
          h.waitUntil(what, predicate, timeoutMs).catch((err: Error) => {
            throw new Error(`${h.build.label}: ${err.message}`, { cause: err });
          }),
        ),
      ),
    restart: async () => {
      await Promise.all(each.map((h) => h.restart()));
    },
    log: () => each.map((h) => `--- ${h.build.label}\n${h.log()}`).join("\n"),
  };
}

/** One HAProxy process of `build`. */
export async function startOne(
  t: { after: (fn: () => Promise<void>) => void },
  build: HaproxyBuild,
  { agentPort, backends, agentInterMs = 100, source }: HaproxySpec,
): Promise<Haproxy> {
  const dir = await tempDir(t);
  const socketPath = join(dir, "admin.sock");
  const checkPort = await startCheckTarget(t);
  const frontendPort = await freePort();
  const lines = [
    "global",
    `    stats socket ${socketPath} level admin`,
    "defaults",
    "    mode tcp",
    "    timeout connect 1s",
    "    timeout client 5s",
    "    timeout server 5s",
    "    timeout check 1s",
    "frontend fe",
    `    bind 127.0.0.1:${frontendPort}`,
    `    default_backend ${backends[0]?.name ?? "none"}`,
  ];
  for (const backend of backends) {
    lines.push(`backend ${backend.name}`);
    for (const server of backend.servers) {
      const parts = [
        `    server ${server.name} 127.0.0.1:${checkPort} weight ${server.weight}`,
        server.check ? "check inter 100ms" : "",
        server.maxconn === undefined ? "" : `maxconn ${server.maxconn}`,
        `agent-check agent-addr 127.0.0.1 agent-port ${agentPort} agent-inter ${agentInterMs}ms`,
        source === undefined ? "" : `source ${source}`,
        server.send === undefined ? "" : `agent-send "${server.send}\\n"`,
      ];
      lines.push(parts.filter(Boolean).join(" "));
    }
  }
  const config = join(dir, "haproxy.cfg");
  await writeFile(config, `${lines.join("\n")}\n`);

  let output = "";
  let child: ReturnType<typeof spawn> | undefined;
  let exited: Promise<void> = Promise.resolve();

  const command = (line: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const socket = connect({ path: socketPath });
      let received = "";
      socket.setEncoding("utf8");
      socket.on("connect", () => socket.end(`${line}\n`));
      socket.on("data", (chunk: string) => {
        received += chunk;
      });
      socket.on("close", () => resolve(received));
      socket.on("error", reject);
      socket.setTimeout(3000, () => socket.destroy(new Error(`HAProxy did not answer ${line}`)));
    });

  const start = async () => {
    const process_ = spawn(build.file, [...build.args, "-db", "-f", config], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    child = process_;
    process_.stdout?.on("data", (d) => {
      output += d;
    });
    process_.stderr?.on("data", (d) => {
      output += d;
    });
    exited = new Promise((resolve) => process_.on("exit", () => resolve()));
    await waitFor("HAProxy's runtime API", async () =>
      (await command("show info").catch(() => "")).includes("Name: HAProxy") ? true : undefined,
    );
  };

  const stop = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child?.kill("SIGKILL"), 2000);
      await exited;
      clearTimeout(timer);
    }
  };

  const view = async (): Promise<View> => {
    const result: Record<string, Partial<ServerView>> = {};
    const stat = parseTable((await command("show stat")).replace(/^# /, ""), ",");
    for (const row of stat) {
      if (row.svname === "FRONTEND" || row.svname === "BACKEND") continue;
      result[`${row.pxname}/${row.svname}`] = {
        status: row.status ?? "",
        weight: Number(row.weight),
        maxconn: row.slim ?? "",
        agentStatus: row.agent_status ?? "",
        agentDesc: row.agent_desc ?? "",
        lastAgent: row.last_agt ?? "",
      };
    }
    const state = (await command("show servers state"))
      .split("\n")
      .slice(1)
      .join("\n")
      .replace(/^# /, "");
    for (const row of parseTable(state, " ")) {
      const entry = result[`${row.be_name}/${row.srv_name}`];
      if (!entry) continue;
      Object.assign(entry, {
        opState: Number(row.srv_op_state),
        adminState: Number(row.srv_admin_state),
        userWeight: Number(row.srv_uweight),
      });
    }
    return result as View;
  };

  await start();
  t.after(stop);

  return {
    build,
    dir,
    config,
    command,
    view,
    async waitUntil(what, predicate, timeoutMs = 5000) {
      let last: View = {};
      return waitFor(
        what,
        async () => {
          last = await view();
          return predicate(last) ? last : undefined;
        },
        timeoutMs,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; HAProxy shows ${JSON.stringify(last, null, 1)}`);
      });
    },
    stop,
    async restart() {
      await stop();
      await start();
    },
    log: () => output,
  };
}

function parseTable(text: string, separator: string): Record<string, string>[] {
  const lines = text.split("\n").filter((line) => line.trim() !== "");
  const header = lines.shift()?.split(separator) ?? [];
  return lines.map((line) => {
    const cells = line.split(separator);
    return Object.fromEntries(header.map((name, i) => [name, cells[i] ?? ""]));
  });
}
