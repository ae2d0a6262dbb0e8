/**
 * Runs the real HAProxy (Debian's haproxy package) in the foreground against the agent under
 * test, and reads its view of each server through the runtime API.
 */
import { execFileSync, spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { join } from "node:path";
import { freePort, tempDir, waitFor } from "./helpers.js";

export interface ServerSpec {
  readonly name: string;
  /** Weight configured in haproxy.cfg. */
  readonly weight: number;
  /** Adds HAProxy's own TCP health check against a loopback listener that accepts. */
  readonly check?: boolean;
  /** Text sent with agent-send (a `\n` is appended). */
  readonly send?: string;
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

export interface Haproxy {
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

/**
 * The HAProxy the suite runs: $HAPGENT_TEST_HAPROXY (a path or a command), else `haproxy` on
 * PATH, else Debian's /usr/sbin/haproxy, which is off an ordinary user's PATH.
 */
export const HAPROXY = (() => {
  const candidates = process.env.HAPGENT_TEST_HAPROXY
    ? [process.env.HAPGENT_TEST_HAPROXY]
    : ["haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"];
  for (const command of candidates) {
    try {
      execFileSync(command, ["-v"], { stdio: "ignore" });
      return command;
    } catch {
      // Not this one.
    }
  }
  return undefined;
})();

/** Outside CI a missing HAProxy skips, loudly; in CI it fails. */
export const SKIP_HAPROXY = (() => {
  if (HAPROXY !== undefined) return false;
  const which = process.env.HAPGENT_TEST_HAPROXY
    ? `HAPGENT_TEST_HAPROXY=${process.env.HAPGENT_TEST_HAPROXY} does not run`
    : "HAProxy is not installed";
  if (process.env.CI === "true") {
    throw new Error(`${which}, and CI must run the HAProxy suite: apt-get install haproxy`);
  }
  process.stderr.write(
    `\n*** ${which}: the HAProxy suite is SKIPPED (apt-get install haproxy) ***\n\n`,
  );
  return which;
})();

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

export async function startHaproxy(
  t: { after: (fn: () => Promise<void>) => void },
  {
    agentPort,
    backends,
    agentInterMs = 100,
  }: { agentPort: number; backends: readonly BackendSpec[]; agentInterMs?: number },
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
        `agent-check agent-addr 127.0.0.1 agent-port ${agentPort} agent-inter ${agentInterMs}ms`,
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
    const process_ = spawn(HAPROXY ?? "haproxy", ["-db", "-f", config], {
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
