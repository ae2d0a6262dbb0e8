/**
 * Prometheus metrics: the registry as it renders (real prom-client), and the real daemon serving
 * it on HAPGENT_METRICS beside the agent port, against well-behaved and hostile HTTP clients.
 */
import assert from "node:assert/strict";
import { readdir, readFile, readlink } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as client from "prom-client";
import type { State } from "../src/core/state.js";
import type { CommandStats } from "../src/daemon/commands.js";
import type { Poller } from "../src/daemon/ledger.js";
import { createRegistry, METRICS_LIMITS, type MetricsSource } from "../src/daemon/metrics.js";
import { freePort, startDaemon, waitFor } from "./helpers.js";

function source(state: State, overrides: Partial<MetricsSource> = {}): MetricsSource {
  const stats: CommandStats = {
    changes: { signal: 3, reload: 1, control: 2 },
    fileValid: true,
    saveFailures: 0,
  };
  return {
    state: () => state,
    stats: () => stats,
    probes: () => new Map(),
    pollers: () => [],
    ...overrides,
  };
}

/** The hapgent_ samples of a rendering, without comments and blank lines. */
async function hapgentLines(metrics: MetricsSource): Promise<string[]> {
  const text = await createRegistry(client, metrics).metrics();
  return text.split("\n").filter((line) => line.startsWith("hapgent_"));
}

function poller(address: string, service: string, lastSeenMs: number, intervalMs?: number): Poller {
  return {
    address,
    service,
    firstSeenMs: lastSeenMs - 10_000,
    lastSeenMs,
    intervalMs,
    probes: 5,
    lastGiven: undefined,
    lastHeard: undefined,
    lastHeardMs: undefined,
  };
}

describe("the metrics registry", () => {
  test("the instance's state: one status at 1, the weight answered, no maxconn unless set", async () => {
    const lines = await hapgentLines(source({ status: "DRAIN" }));
    assert.deepEqual(
      lines.filter((l) => !l.startsWith("hapgent_build_info")),
      [
        'hapgent_status{status="UP"} 0',
        'hapgent_status{status="DOWN"} 0',
        'hapgent_status{status="READY"} 0',
        'hapgent_status{status="DRAIN"} 1',
        'hapgent_status{status="FAIL"} 0',
        'hapgent_status{status="MAINT"} 0',
        'hapgent_status{status="STOPPED"} 0',
        "hapgent_weight_percent 100",
        "hapgent_state_file_valid 1",
        'hapgent_state_changes_total{cause="signal"} 3',
        'hapgent_state_changes_total{cause="reload"} 1',
        'hapgent_state_changes_total{cause="control"} 2',
        "hapgent_save_failures_total 0",
        "hapgent_probes_total 0",
        "hapgent_load_balancers 0",
      ],
    );
    assert.match(
      lines.find((l) => l.startsWith("hapgent_build_info")) ?? "",
      /^hapgent_build_info\{version="\d+\.\d+\.\d+",nodejs="v\d+\.\d+\.\d+"\} 1$/,
    );
  });

  test("services as HAProxy hears them: the instance's DOWN is every service's answer", async () => {
    const state: State = {
      status: "DOWN",
      weight: 50,
      maxconn: 10,
      services: {
        "be_web/srv1": { status: "UP", weight: 7, maxconn: 3 },
        api: { status: "DRAIN" },
      },
    };
    const lines = await hapgentLines(source(state));
    const ones = lines.filter((l) => l.startsWith("hapgent_status") && l.endsWith(" 1"));
    assert.deepEqual(ones, [
      'hapgent_status{status="DOWN"} 1',
      'hapgent_status{service="be_web/srv1",status="DOWN"} 1',
      'hapgent_status{service="api",status="DOWN"} 1',
    ]);
    assert.equal(lines.filter((l) => l.startsWith("hapgent_status")).length, 21);
    // The services are answered the instance's whole line, weight and maxconn too.
    assert.deepEqual(
      lines.filter((l) => /^hapgent_(weight|maxconn)/.test(l)),
      [
        "hapgent_weight_percent 50",
        'hapgent_weight_percent{service="be_web/srv1"} 50',
        'hapgent_weight_percent{service="api"} 50',
        "hapgent_maxconn 10",
        'hapgent_maxconn{service="be_web/srv1"} 10',
        'hapgent_maxconn{service="api"} 10',
      ],
    );
    // With the instance UP, each service its own.
    const up = await hapgentLines(source({ ...state, status: "UP" }));
    assert.deepEqual(
      up.filter(
        (l) =>
          /^hapgent_(weight|maxconn)/.test(l) ||
          (l.startsWith("hapgent_status") && l.endsWith(" 1")),
      ),
      [
        'hapgent_status{status="UP"} 1',
        'hapgent_status{service="be_web/srv1",status="UP"} 1',
        'hapgent_status{service="api",status="DRAIN"} 1',
        "hapgent_weight_percent 50",
        'hapgent_weight_percent{service="be_web/srv1"} 7',
        'hapgent_weight_percent{service="api"} 100',
        "hapgent_maxconn 10",
        'hapgent_maxconn{service="be_web/srv1"} 3',
      ],
    );
  });

  test("probes by service, the ledger's load balancers by address, an invalid file, failed saves", async () => {
    const at = Date.UTC(2026, 10, 25, 12, 0, 0);
    const lines = await hapgentLines(
      source(
        { status: "MAINT" },
        {
          stats: () => ({
            changes: { signal: 0, reload: 0, control: 0 },
            fileValid: false,
            saveFailures: 4,
          }),
          probes: () =>
            new Map([
              ["be_web/srv1", 12],
              ["", 30],
            ]),
          pollers: () => [
            poller("192.0.2.1", "be_web/srv1", at, 2000),
            poller("192.0.2.1", "", at + 500, 2000),
            poller("2001:db8::2", "", at + 1500),
          ],
        },
      ),
    );
    const pick = (prefix: string) => lines.filter((l) => l.startsWith(prefix));
    assert.deepEqual(pick("hapgent_state_file_valid"), ["hapgent_state_file_valid 0"]);
    assert.deepEqual(pick("hapgent_save_failures_total"), ["hapgent_save_failures_total 4"]);
    assert.deepEqual(pick("hapgent_probes_total"), [
      "hapgent_probes_total 30",
      'hapgent_probes_total{service="be_web/srv1"} 12',
    ]);
    assert.deepEqual(pick("hapgent_load_balancers "), ["hapgent_load_balancers 2"]);
    assert.deepEqual(pick("hapgent_load_balancer_last_probe_seconds"), [
      `hapgent_load_balancer_last_probe_seconds{address="192.0.2.1",service="be_web/srv1"} ${at / 1000}`,
      `hapgent_load_balancer_last_probe_seconds{address="192.0.2.1"} ${at / 1000 + 0.5}`,
      `hapgent_load_balancer_last_probe_seconds{address="2001:db8::2"} ${at / 1000 + 1.5}`,
    ]);
    assert.deepEqual(pick("hapgent_load_balancer_interval_seconds"), [
      'hapgent_load_balancer_interval_seconds{address="192.0.2.1",service="be_web/srv1"} 2',
      'hapgent_load_balancer_interval_seconds{address="192.0.2.1"} 2',
    ]);
  });

  test("the process metrics Prometheus users expect are there", async () => {
    const text = await createRegistry(client, source({ status: "UP" })).metrics();
    for (const name of [
      "process_resident_memory_bytes",
      "process_cpu_seconds_total",
      "process_open_fds",
      "process_max_fds",
      "process_start_time_seconds",
      "nodejs_eventloop_lag_seconds",
      "nodejs_heap_size_used_bytes",
    ]) {
      assert.match(text, new RegExp(`^${name}(\\{[^}]*\\})? \\S+$`, "m"), name);
    }
  });
});

/** GET (or another method) on the daemon's metrics listener, with Node's fetch. */
async function request(port: number, path = "/metrics", method = "GET") {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  return { status: response.status, headers: response.headers, body: await response.text() };
}

/** The value of one sample in a scrape, or undefined. */
function sample(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** The TCP ports the process listens on, from its socket descriptors and /proc/net/tcp{,6}. */
async function listeningPorts(pid: number): Promise<number[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const link = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1];
    if (inode !== undefined) inodes.add(inode);
  }
  const ports: number[] = [];
  for (const table of ["tcp", "tcp6"]) {
    const text = await readFile(`/proc/${pid}/net/${table}`, "utf8");
    for (const row of text.split("\n").slice(1)) {
      const fields = row.trim().split(/\s+/);
      // st 0A is LISTEN; the local address is ADDR:PORT in hex.
      if (fields[3] === "0A" && inodes.has(fields[9] ?? "")) {
        ports.push(Number.parseInt(fields[1]?.split(":")[1] ?? "", 16));
      }
    }
  }
  return ports.sort((a, b) => a - b);
}

describe("the daemon's metrics listener", () => {
  test("unset: no listener but the agent's", async (t) => {
    const d = await startDaemon(t);
    assert.deepEqual(await listeningPorts(d.pid), [d.port]);
    assert.doesNotMatch(d.stderr(), /metrics/);
  });

  test("GET /metrics follows the state; HEAD, 404 and 405 as HTTP says", async (t) => {
    const metricsPort = await freePort();
    const d = await startDaemon(t, {
      state: '{"status":"UP","weight":60,"maxconn":300}',
      env: { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` },
    });
    await d.waitForLog(new RegExp(`metrics on http://127\\.0\\.0\\.1:${metricsPort}/metrics`));
    assert.deepEqual(
      await listeningPorts(d.pid),
      [d.port, metricsPort].sort((a, b) => a - b),
    );

    const first = await request(metricsPort);
    assert.equal(first.status, 200);
    assert.match(first.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    assert.equal(sample(first.body, 'hapgent_status{status="UP"}'), 1);
    assert.equal(sample(first.body, "hapgent_weight_percent"), 60);
    assert.equal(sample(first.body, "hapgent_maxconn"), 300);
    assert.equal(sample(first.body, "hapgent_probes_total"), 0);

    assert.equal(await d.probe(), "up ready 60% maxconn:300\n");
    d.signal("SIGUSR2");
    await d.waitForReply("down ready 60% maxconn:300\n");
    const after = await request(metricsPort, "/metrics?debug=1");
    assert.equal(sample(after.body, 'hapgent_status{status="UP"}'), 0);
    assert.equal(sample(after.body, 'hapgent_status{status="DOWN"}'), 1);
    assert.equal(sample(after.body, 'hapgent_state_changes_total{cause="signal"}'), 1);
    // The probe of the test and those of waitForReply, once their connections closed.
    assert.ok((sample(after.body, "hapgent_probes_total") ?? 0) >= 2, after.body);

    const head = await request(metricsPort, "/metrics", "HEAD");
    assert.deepEqual([head.status, head.body], [200, ""]);
    const elsewhere = await request(metricsPort, "/");
    assert.deepEqual(
      [elsewhere.status, elsewhere.body],
      [404, "not found: metrics are at /metrics\n"],
    );
    const post = await request(metricsPort, "/metrics", "POST");
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
  });

  test("a port in use, or a bad address, stops the start with the variable named", async (t) => {
    const taken = createServer().listen(0, "127.0.0.1");
    t.after(() => taken.close());
    await new Promise((resolve) => taken.once("listening", resolve));
    const port = (taken.address() as { port: number }).port;
    const inUse = await startDaemon(t, {
      ready: false,
      env: { HAPGENT_METRICS: `127.0.0.1:${port}` },
    });
    assert.deepEqual(await inUse.exited, { code: 1, signal: null });
    assert.match(
      inUse.stderr(),
      new RegExp(
        `error: HAPGENT_METRICS="127\\.0\\.0\\.1:${port}": the port is already in use; expected a free port for metrics\\n$`,
      ),
    );
    const bad = await startDaemon(t, { ready: false, env: { HAPGENT_METRICS: "localhost:9100" } });
    assert.deepEqual(await bad.exited, { code: 2, signal: null });
    assert.match(
      bad.stderr(),
      /HAPGENT_METRICS="localhost:9100" is invalid; expected ADDRESS:PORT/,
    );
    assert.doesNotMatch(inUse.stderr() + bad.stderr(), /\n\s+at /, "no stack trace");
  });

  test("hostile HTTP clients never disturb the agent port, and are cut off by their own limits", async (t) => {
    const metricsPort = await freePort();
    const d = await startDaemon(t, { env: { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` } });
    await request(metricsPort);
    const held: Socket[] = [];
    t.after(() => {
      for (const socket of held) socket.destroy();
    });
    const open = () =>
      new Promise<Socket>((resolve) => {
        const socket = connect({ host: "127.0.0.1", port: metricsPort });
        socket.on("error", () => {});
        socket.once("connect", () => resolve(socket));
        socket.once("close", () => resolve(socket));
        held.push(socket);
      });
    // Slow clients sending a request line a byte at a time, never finishing their headers, then
    // idle connections, many more than the listener keeps (those past its limit are closed).
    const slow = await Promise.all(Array.from({ length: 8 }, open));
    for (const socket of slow) socket.write("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    const drip = setInterval(() => {
      for (const socket of slow) if (!socket.destroyed) socket.write("X-Slow: y\r\n");
    }, 200);
    t.after(() => clearInterval(drip));
    const idle = await Promise.all(Array.from({ length: 64 }, open));
    // Headers far past the limit, and junk that is not HTTP.
    const oversized = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, {
      headers: { "x-junk": "j".repeat(4 * METRICS_LIMITS.maxHeaderBytes) },
    }).catch((err: Error) => err);
    assert.ok(oversized instanceof Error || oversized.status === 431, String(oversized));
    const junk = await open();
    junk.write("\x16\x03\x01 not http at all\r\n\r\n");

    // Meanwhile every probe of the agent port is answered at once.
    for (let i = 0; i < 50; i++) assert.equal(await d.probe(), "up ready 100%\n");
    const sockets = (await readdir(`/proc/${d.pid}/fd`)).length;
    assert.ok(sockets < 64, `the listener holds at most its limit: ${sockets} descriptors`);

    // The slow clients are cut off when their request is overdue, not before.
    const cut = (s: Socket) => s.destroyed || s.readableEnded;
    const started = Date.now();
    assert.equal(slow.filter(cut).length, 0, "slow clients are still served while in time");
    await waitFor(
      "slow clients cut off",
      () => (slow.every(cut) ? true : undefined),
      METRICS_LIMITS.requestTimeoutMs + 5000,
    );
    t.diagnostic(`slow clients cut off after ${Date.now() - started} ms more`);
    clearInterval(drip);
    for (const socket of idle) socket.destroy();
    await sleep(100);
    const scrape = await request(metricsPort);
    assert.equal(scrape.status, 200);
    assert.equal(sample(scrape.body, 'hapgent_status{status="UP"}'), 1);
    assert.equal(d.child.exitCode, null);
  });
});
