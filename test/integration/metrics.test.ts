/**
 * Prometheus metrics: the registry as it renders (real prom-client), and the real daemon serving
 * it on HAPGENT_METRICS beside the agent port, against well-behaved and hostile HTTP clients.
 */
import assert from "node:assert/strict";
import { cp, mkdir, readdir, readFile, readlink, writeFile } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as client from "prom-client";
import type { State } from "../../src/core/state.js";
import type { Poller } from "../../src/daemon/ledger.js";
import {
  COUNTERS_REUSE_MS,
  createMetrics,
  METRICS_LIMITS,
  type MetricsSource,
} from "../../src/daemon/metrics.js";
import type { OperatorStats } from "../../src/daemon/operator.js";
import {
  DIST_SRC,
  freePort,
  HAPGENT_BINARY,
  NODE_FLAGS,
  startDaemon,
  tempDir,
  waitFor,
} from "../helpers.js";

const FLEET_VIEW = {
  keys: ["/a"],
  endpoint: "http://127.0.0.1:2379",
  connected: true,
  word: null,
  problem: null,
  heardAt: null,
  heardAgoMs: null,
  lostAt: null,
  lostReason: null,
  fromCache: false,
};

function source(state: State, overrides: Partial<MetricsSource> = {}): MetricsSource {
  const stats: OperatorStats = {
    changes: { signal: 3, reload: 1, control: 2, expiry: 5 },
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
  const text = (await createMetrics(client, metrics).render()).toString();
  return text.split("\n").filter((line) => line.startsWith("hapgent_"));
}

function poller(
  address: string,
  service: string,
  lastSeenMs: number,
  intervalMs?: number,
  established = true,
): Poller {
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
    heldMaxconn: undefined,
    established,
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
        'hapgent_state_changes_total{cause="expiry"} 5',
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
            changes: { signal: 0, reload: 0, control: 0, expiry: 0 },
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
            // Seen once: a scan or a curl, not a load balancer.
            poller("198.51.100.7", "", at + 1600, undefined, false),
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

  test("a scrape right after a change shows it; between changes every scrape gets the same bytes", async () => {
    let state: State = { status: "UP", services: { api: { status: "UP" } } };
    let verdicts = 0;
    let probes = 1;
    let failures = 0;
    let clockMs = 1_000_000;
    const metrics = createMetrics(
      client,
      source(state, {
        state: () => state,
        // A check's verdict: the same state, another answer.
        answer: (s, name) => ({
          ...s,
          status: verdicts > 0 && name === "api" ? "DRAIN" : s.status,
        }),
        version: () => verdicts,
        probes: () => new Map([["", probes]]),
        stats: () => ({
          changes: { signal: 0, reload: 0, control: 0, expiry: 0 },
          fileValid: true,
          saveFailures: failures,
        }),
      }),
      () => clockMs,
    );
    const line = async (series: string) =>
      (await metrics.render())
        .toString()
        .split("\n")
        .find((l) => l.startsWith(`${series} `));
    const first = await metrics.render();
    assert.equal(await metrics.render(), first, "the same bytes, not a rendering per scrape");
    assert.equal(await line('hapgent_status{status="UP"}'), 'hapgent_status{status="UP"} 1');

    state = { ...state, status: "DOWN" };
    assert.equal(await line('hapgent_status{status="DOWN"}'), 'hapgent_status{status="DOWN"} 1');
    assert.equal(
      await line('hapgent_status{service="api",status="DOWN"}'),
      'hapgent_status{service="api",status="DOWN"} 1',
    );
    const afterChange = await metrics.render();
    assert.notEqual(afterChange, first);
    assert.equal(await metrics.render(), afterChange);

    verdicts++;
    state = { ...state, status: "UP" };
    assert.equal(
      await line('hapgent_status{service="api",status="DRAIN"}'),
      'hapgent_status{service="api",status="DRAIN"} 1',
    );
    failures++;
    assert.equal(await line("hapgent_save_failures_total"), "hapgent_save_failures_total 1");

    // Counters move with every probe: they are rendered again at most once per interval.
    const counted = await metrics.render();
    probes = 5;
    clockMs += COUNTERS_REUSE_MS - 1;
    assert.equal(await metrics.render(), counted);
    clockMs += 1;
    assert.equal(await line("hapgent_probes_total"), "hapgent_probes_total 5");
  });

  test("the parts join as one registry's text: help, type, labels escaped, a blank line between", async () => {
    const text = (
      await createMetrics(
        client,
        source(
          { status: "UP", services: { 'be"web\\x': { status: "DOWN", maxconn: 3 } } },
          { fleet: () => FLEET_VIEW },
        ),
      ).render()
    ).toString();
    const from = text.indexOf("# HELP hapgent_build_info");
    assert.ok(from > 0 && text.slice(0, from).endsWith("\n\n"), "after the process's metrics");
    const hapgent = text.slice(from);
    assert.match(
      hapgent,
      /^# HELP hapgent_build_info Always 1; the labels say which hapgent runs on which Node\.js\.\n# TYPE hapgent_build_info gauge\nhapgent_build_info\{version="[^"]+",nodejs="v[^"]+"\} 1\n\n# HELP hapgent_status /,
    );
    assert.ok(
      hapgent.includes(
        '\nhapgent_status{service="be\\"web\\\\x",status="DOWN"} 1\nhapgent_status{service="be\\"web\\\\x",status="READY"} 0\n',
      ),
    );
    assert.ok(
      hapgent.includes(
        '# TYPE hapgent_maxconn gauge\nhapgent_maxconn{service="be\\"web\\\\x"} 3\n\n# HELP hapgent_state_file_valid',
      ),
    );
    // The state's part, then the counters', each rendered on its own.
    assert.ok(hapgent.includes("\nhapgent_save_failures_total 0\n\n# HELP hapgent_probes_total "));
    // A metric without labels and without a sample shows 0, as prom-client's gauges do.
    assert.ok(
      hapgent.includes("# TYPE hapgent_fleet_heard_seconds gauge\nhapgent_fleet_heard_seconds 0\n"),
    );
    assert.ok(hapgent.endsWith("hapgent_fleet_value_valid 1\n"), hapgent.slice(-200));
  });

  test("the process metrics Prometheus users expect are there", async () => {
    const text = (await createMetrics(client, source({ status: "UP" })).render()).toString();
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
    // A probe is counted once the agent sees its connection close, which the test cannot see:
    // scrape until the change and the probes are there.
    const after = await waitFor("the change in the metrics", async () => {
      const scrape = await request(metricsPort, "/metrics?debug=1");
      return sample(scrape.body, 'hapgent_status{status="DOWN"}') === 1 &&
        (sample(scrape.body, "hapgent_probes_total") ?? 0) >= 2
        ? scrape
        : undefined;
    });
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

  test("the plain agent never loads prom-client: it runs where prom-client is not installed", {
    skip: HAPGENT_BINARY !== undefined && "the binary carries prom-client inside",
  }, async (t) => {
    // The compiled agent alone, beside a prom-client that cannot be loaded (its main file is
    // missing), which Node finds before any other installed above the directory.
    const dir = await tempDir(t);
    await cp(DIST_SRC, join(dir, "src"), { recursive: true });
    await writeFile(join(dir, "package.json"), '{"type":"module"}\n');
    await mkdir(join(dir, "node_modules/prom-client"), { recursive: true });
    await writeFile(
      join(dir, "node_modules/prom-client/package.json"),
      '{"name":"prom-client","main":"gone.js"}\n',
    );
    const exec = process.execPath;
    const argv = [...NODE_FLAGS, join(dir, "src/main.js")];
    const plain = await startDaemon(t, { exec, args: argv });
    assert.equal(await plain.probe(), "up ready 100%\n");
    const metricsPort = await freePort();
    const withMetrics = await startDaemon(t, {
      exec,
      args: argv,
      ready: false,
      env: { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` },
    });
    // Exit 2, as for invalid configuration: restarting cannot fix it.
    const exited = await Promise.race([withMetrics.exited, sleep(10_000).then(() => "running")]);
    assert.deepEqual(exited, { code: 2, signal: null }, withMetrics.stderr());
    assert.match(
      withMetrics.stderr(),
      /error: HAPGENT_METRICS="127\.0\.0\.1:\d+": prom-client, which serves the metrics, is not installed; expected hapgent installed with its dependencies \(npm install\), or HAPGENT_METRICS unset\n$/,
    );
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

  test("bad requests get their HTTP error; one address holds at most 4 connections", async (t) => {
    const metricsPort = await freePort();
    const d = await startDaemon(t, { env: { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` } });
    const oversized = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, {
      headers: { "x-junk": "j".repeat(2 * METRICS_LIMITS.maxHeaderBytes) },
    });
    assert.equal(oversized.status, 431);
    const junk = await rawExchange(metricsPort, "\x16\x03\x01 not http at all\r\n\r\n");
    assert.match(junk, /^HTTP\/1\.1 400 Bad Request\r\n/);

    // Ten from one address: four stay open, the others are closed at once.
    const held = await Promise.all(
      Array.from({ length: 10 }, () => openFrom(t, metricsPort, "127.0.0.2")),
    );
    await sleep(200);
    assert.equal(held.filter((s) => !s.destroyed && !s.readableEnded).length, 4);
    // Another address is served meanwhile.
    assert.equal((await request(metricsPort)).status, 200);
    assert.equal(d.child.exitCode, null);
  });

  test("hostile HTTP clients never disturb the agent port, and are cut off by their own limits", async (t) => {
    const metricsPort = await freePort();
    const d = await startDaemon(t, { env: { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` } });
    await request(metricsPort);
    const sockets = async () =>
      (
        await Promise.all(
          (
            await readdir(`/proc/${d.pid}/fd`)
          ).map((fd) => readlink(`/proc/${d.pid}/fd/${fd}`).catch(() => "")),
        )
      ).filter((link) => link.startsWith("socket:")).length;
    const socketsBefore = await sockets();
    // Slow clients sending their headers a line at a time, never finishing them, from one address,
    // and idle connections from four more: more than the listener's 16 places.
    const opened = Date.now();
    const slow = await Promise.all(
      Array.from({ length: 4 }, () => openFrom(t, metricsPort, "127.0.0.2")),
    );
    for (const socket of slow) socket.write("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    const drip = setInterval(() => {
      for (const socket of slow) if (!socket.destroyed) socket.write("X-Slow: y\r\n");
    }, 200);
    t.after(() => clearInterval(drip));
    const idle = await Promise.all(
      ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"].flatMap((address) =>
        Array.from({ length: 4 }, () => openFrom(t, metricsPort, address)),
      ),
    );

    // Meanwhile every probe of the agent port is answered.
    for (let i = 0; i < 50; i++) assert.equal(await d.probe(), "up ready 100%\n");
    const held = (await sockets()) - socketsBefore;
    assert.ok(
      held <= METRICS_LIMITS.maxConnections,
      `20 clients, of which the listener holds at most ${METRICS_LIMITS.maxConnections}: ${held}`,
    );

    // The slow clients are cut off once their request is overdue, not before.
    const cut = (socket: Socket) => socket.destroyed || socket.readableEnded;
    await waitFor(
      "slow clients cut off",
      () => (slow.every(cut) ? true : undefined),
      METRICS_LIMITS.requestTimeoutMs + 10_000,
    );
    const after = Date.now() - opened;
    assert.ok(after >= METRICS_LIMITS.requestTimeoutMs - 500, `cut off after ${after} ms`);
    t.diagnostic(`slow clients cut off ${after} ms after they connected`);
    clearInterval(drip);
    for (const socket of idle) socket.destroy();
    const scrape = await waitFor("a scrape once the idle clients left", async () => {
      const answer = await request(metricsPort).catch(() => undefined);
      return answer?.status === 200 ? answer : undefined;
    });
    assert.equal(sample(scrape.body, 'hapgent_status{status="UP"}'), 1);
    assert.equal(d.child.exitCode, null);
  });
});

/** A connection from a loopback address of the test's choice; destroyed after the test. */
function openFrom(
  t: { after: (fn: () => void) => void },
  port: number,
  localAddress: string,
): Promise<Socket> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port, localAddress });
    t.after(() => socket.destroy());
    socket.on("error", () => {});
    socket.on("data", () => {});
    socket.once("connect", () => resolve(socket));
    socket.once("close", () => resolve(socket));
  });
}

/** Sends `bytes` and returns everything received until the server closes. */
function rawExchange(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port }, () => socket.write(bytes));
    let received = "";
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(received));
  });
}
