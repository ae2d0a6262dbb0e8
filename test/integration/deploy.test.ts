/**
 * The deploy drill: real HAProxy in front of two real HTTP backends (each request takes 50 ms),
 * steady client load through HAProxy, one backend taken out, stopped, restarted and put back, as
 * operators do it. Two HAProxy processes poll the same agents from their own source addresses,
 * with pooled keep-alive server connections (http-reuse): one of each supported version (2.6 and
 * 3.0) when both are there. Failed requests are counted.
 *
 * (a) The signal flow (`pkill -USR2 hapgent`, stop at once) loses requests: the drill can fail.
 * (b) `hapgent drain --wait --idle PORT`, stop, restart, `hapgent up --wait` loses none.
 * (c) A load balancer that stops polling during `--wait` is reported and does not hang it.
 * (d) At the README's `agent-inter 2s`, every step of a run of deploys hears its state, though
 *     HAProxy closes most agent checks with a reset.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { Agent, createServer, request, type Server } from "node:http";
import type { Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CLI_EXIT } from "../../src/cli/exit.js";
import { HAPROXIES, type HaproxyBuild, SKIP_HAPROXY, startOne, type View } from "../haproxy.js";
import { cliFor, type Daemon, freePort, startDaemon, tempDir, waitFor } from "../helpers.js";

const AGENT_INTER_MS = 200;
const REQUEST_MS = 50;
const WORKERS = 6;

/** An HTTP service whose every request takes REQUEST_MS; stopped as a process exits: at once. */
async function service(name: string, port: number) {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  const start = async () => {
    const s = createServer((_request, res) => {
      setTimeout(() => res.end(`ok from ${name}\n`), REQUEST_MS);
    });
    s.on("connection", (socket) => {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => s.listen(port, "127.0.0.1", resolve));
    server = s;
  };
  await start();
  return {
    port,
    start,
    /** Stops listening and drops every connection, requests in flight included. */
    stop() {
      server?.close();
      for (const socket of sockets) socket.destroy();
      server = undefined;
    },
  };
}

/** An HAProxy of `build` in HTTP mode whose checks and agent checks leave from `source`. */
async function haproxy(
  t: { after: (fn: () => Promise<void>) => void },
  build: HaproxyBuild,
  source: string,
  servers: { name: string; port: number; agentPort: number }[],
) {
  const dir = await tempDir(t);
  const frontend = await freePort();
  const lines = [
    "global",
    `    stats socket ${join(dir, "admin.sock")} level admin`,
    "defaults",
    "    mode http",
    "    timeout connect 1s",
    "    timeout client 10s",
    "    timeout server 10s",
    "    timeout check 1s",
    "    retries 3",
    "    option redispatch",
    "frontend fe",
    `    bind 127.0.0.1:${frontend}`,
    "    default_backend be",
    "backend be",
    "    balance roundrobin",
    "    http-reuse always",
    `    default-server check inter ${AGENT_INTER_MS}ms source ${source} pool-purge-delay 1s agent-check agent-addr 127.0.0.1 agent-inter ${AGENT_INTER_MS}ms`,
    ...servers.map((s) => `    server ${s.name} 127.0.0.1:${s.port} agent-port ${s.agentPort}`),
  ];
  const config = join(dir, "haproxy.cfg");
  await writeFile(config, `${lines.join("\n")}\n`);
  const child = spawn(build.file, [...build.args, "-db", "-f", config], { stdio: "ignore" });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  };
  t.after(stop);
  return { frontend, stop };
}

/** Clients sending requests one after another through `frontends`; counts the ones that fail. */
function load(frontends: number[]) {
  let running = true;
  const counts = { ok: 0, failed: 0, errors: [] as string[] };
  const agent = new Agent({ keepAlive: true, maxSockets: WORKERS * 2 });
  const one = (port: number) =>
    new Promise<void>((resolve) => {
      const req = request({ host: "127.0.0.1", port, path: "/", agent }, (res) => {
        res.resume();
        res.on("end", () => {
          if (res.statusCode === 200) counts.ok++;
          else {
            counts.failed++;
            counts.errors.push(`HTTP ${res.statusCode}`);
          }
          resolve();
        });
      });
      req.on("error", (err) => {
        counts.failed++;
        counts.errors.push(err.message);
        resolve();
      });
      req.setTimeout(5000, () => req.destroy(new Error("timed out")));
      req.end();
    });
  const workers = frontends.flatMap((port) =>
    Array.from({ length: WORKERS }, async () => {
      while (running) await one(port);
    }),
  );
  return {
    counts,
    /** The failures counted since the last call. */
    take() {
      const taken = { ok: counts.ok, failed: counts.failed, errors: counts.errors.splice(0) };
      counts.ok = 0;
      counts.failed = 0;
      return taken;
    },
    async stop() {
      running = false;
      await Promise.all(workers);
      agent.destroy();
    },
  };
}

/** Waits until `d` has seen both load balancers poll it (the ledger learnt them). */
async function polledByBoth(d: Daemon) {
  await waitFor(
    "both HAProxy processes polling",
    async () => {
      const status = await cliFor(d, "status", "--json");
      const pollers = (JSON.parse(status.stdout).loadBalancers ?? []) as { address: string }[];
      const addresses = new Set(pollers.map((p) => p.address));
      return addresses.has("127.0.0.2") && addresses.has("127.0.0.3") ? true : undefined;
    },
    10_000,
  );
}

describe("deploys through real HAProxy", { skip: SKIP_HAPROXY }, () => {
  test("the signal flow loses requests; drain --wait --idle loses none over five deploys", async (t) => {
    const [portA, portB, agentA, agentB] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    const a = await service("a", portA);
    const b = await service("b", portB);
    t.after(async () => {
      a.stop();
      b.stop();
    });
    const daemonA = await startDaemon(t, { port: agentA });
    await startDaemon(t, { port: agentB });
    const servers = [
      { name: "a", port: portA, agentPort: agentA },
      { name: "b", port: portB, agentPort: agentB },
    ];
    // Two supported versions, when there are two: one deploy, both load balancers lossless.
    const [first, second = first] = HAPROXIES as [HaproxyBuild, ...HaproxyBuild[]];
    const lb2 = await haproxy(t, first, "127.0.0.2", servers);
    const lb3 = await haproxy(t, second, "127.0.0.3", servers);
    t.diagnostic(`load balancers: ${first.label} from 127.0.0.2, ${second.label} from 127.0.0.3`);
    await polledByBoth(daemonA);
    const clients = load([lb2.frontend, lb3.frontend]);
    t.after(() => clients.stop());
    await waitFor("traffic", () => (clients.counts.ok > 200 ? true : undefined), 10_000);
    clients.take();

    // (a) As deploy scripts long did: USR2, and stop the service at once.
    let naive = 0;
    for (let round = 0; round < 2; round++) {
      daemonA.signal("SIGUSR2");
      a.stop();
      await new Promise((resolve) => setTimeout(resolve, 3 * AGENT_INTER_MS));
      await a.start();
      daemonA.signal("SIGUSR1");
      await new Promise((resolve) => setTimeout(resolve, 5 * AGENT_INTER_MS));
      naive += clients.take().failed;
    }
    t.diagnostic(`signal flow: ${naive} failed requests in 2 deploys`);
    assert.ok(naive > 0, "the drill sees what a deploy loses");

    // (b) Drain, wait until both load balancers heard it and the service is idle, stop, start,
    // put back and wait until both heard it.
    const outcomes: string[] = [];
    for (let round = 0; round < 5; round++) {
      clients.take();
      const drained = await cliFor(daemonA, "drain", "--wait", "--idle", String(portA));
      assert.equal(drained.code, CLI_EXIT.OK, drained.stdout + drained.stderr);
      assert.match(drained.stdout, /127\.0\.0\.2 (heard|hears) "up drain 100%"/);
      assert.match(drained.stdout, /127\.0\.0\.3 (heard|hears) "up drain 100%"/);
      assert.match(drained.stdout, new RegExp(`port ${portA}: 0 connections open`));
      a.stop();
      await new Promise((resolve) => setTimeout(resolve, 2 * AGENT_INTER_MS));
      await a.start();
      const up = await cliFor(daemonA, "up", "--wait");
      assert.equal(up.code, CLI_EXIT.OK, up.stdout + up.stderr);
      // Traffic comes back to a before the next round.
      await new Promise((resolve) => setTimeout(resolve, 3 * AGENT_INTER_MS));
      const taken = clients.take();
      outcomes.push(`${taken.ok} ok, ${taken.failed} failed`);
      assert.equal(
        taken.failed,
        0,
        `round ${round}: ${taken.errors.join("; ")}\n${drained.stdout}`,
      );
    }
    t.diagnostic(`drain --wait --idle: ${outcomes.join("; ")}`);

    // (c) A load balancer that stops polling during --wait is reported, and does not hang it.
    await lb3.stop();
    const began = Date.now();
    const drained = await cliFor(daemonA, "drain", "--wait");
    assert.equal(drained.code, CLI_EXIT.OK, drained.stdout + drained.stderr);
    assert.match(drained.stdout, /127\.0\.0\.3 stopped polling/);
    assert.ok(Date.now() - began < 8000, `took ${Date.now() - began} ms`);
    await clients.stop();
  });
});

describe("--wait at the README's agent-inter 2s", { skip: SKIP_HAPROXY }, () => {
  test("14 alternating drain --wait --idle / up --wait steps all exit 0; HAProxy agrees after each", async (t) => {
    const d = await startDaemon(t);
    // Every supported version, each from its own address, so the ledger tells them apart.
    const sources = HAPROXIES.map((_, i) => `127.0.0.${i + 2}`);
    const each = await Promise.all(
      HAPROXIES.map((build, i) =>
        startOne(t, build, {
          agentPort: d.port,
          agentInterMs: 2000,
          source: sources[i] as string,
          backends: [{ name: "be", servers: [{ name: "web1", weight: 100 }] }],
        }),
      ),
    );
    t.diagnostic(
      `load balancers: ${HAPROXIES.map((b, i) => `${b.label} from ${sources[i]}`).join(", ")}`,
    );
    await waitFor(
      "every HAProxy polling",
      async () => {
        const status = await cliFor(d, "status", "--json");
        const pollers = (JSON.parse(status.stdout).loadBalancers ?? []) as { address: string }[];
        return sources.every((a) => pollers.some((p) => p.address === a)) ? true : undefined;
      },
      15_000,
    );
    // Nothing listens on the service's port here: --idle runs, and finds it idle at once.
    const port = await freePort();
    const drained = (view: View) => (view["be/web1"]?.adminState ?? 0) & 0x08;
    for (let step = 0; step < 14; step++) {
      const draining = step % 2 === 0;
      // Four intervals: the command reports before the test's 10 s limit on a command's run.
      const wait = ["--wait", "--wait-timeout", "8"];
      const args = draining ? ["drain", ...wait, "--idle", String(port)] : ["up", ...wait];
      const result = await cliFor(d, ...args);
      assert.equal(
        result.code,
        CLI_EXIT.OK,
        `step ${step} (${args.join(" ")}): ${result.stdout}${result.stderr}`,
      );
      const word = draining ? "up drain 100%" : "up ready 100%";
      for (const source of sources) {
        assert.match(
          result.stdout,
          new RegExp(`${source.replaceAll(".", "\\.")} (heard|hears) "${word}"`),
        );
      }
      if (draining) assert.match(result.stdout, new RegExp(`port ${port}: 0 connections open`));
      // What --wait said heard, HAProxy shows at once: show servers state's admin bits.
      for (const h of each) {
        const view = await h.view();
        assert.equal(
          Boolean(drained(view)),
          draining,
          `step ${step}, ${h.build.label}: ${JSON.stringify(view["be/web1"])}`,
        );
        assert.equal(view["be/web1"]?.opState, 2, `${h.build.label}: ${JSON.stringify(view)}`);
      }
    }
  });
});
