/**
 * Prometheus metrics: the real daemon serving its registry on HAPGENT_METRICS beside the agent
 * port, against well-behaved and hostile HTTP clients.
 */
import assert from "node:assert/strict";
import { cp, mkdir, readdir, readFile, readlink, writeFile } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { METRICS_LIMITS } from "../../src/daemon/metrics.js";
import {
  DIST_SRC,
  freePort,
  HAPGENT_BINARY,
  NODE_FLAGS,
  startDaemon,
  tempDir,
  waitFor,
} from "../helpers.js";

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
