/**
 * `--wait` and `--idle` against the real daemon, with load balancers played by pollers that behave
 * as HAProxy does (connect from their own address, read the line, close), each from its own
 * loopback address.
 */
import assert from "node:assert/strict";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CLI_EXIT } from "../../src/cli/exit.js";
import {
  cliFor,
  collect,
  type Daemon,
  type Finished,
  poller,
  spawnHapgent,
  startDaemon,
  tempDir,
  waitFor,
} from "../helpers.js";

/** One probe as HAProxy makes it, from `address`: read the line, close. */
function probeOnce(port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, localAddress: address });
    socket.on("end", () => socket.end());
    socket.on("close", () => resolve());
    socket.on("error", reject);
    socket.resume();
  });
}

/**
 * A load balancer the test drives: three probes LEARN_GAP_MS apart teach the ledger its interval,
 * so the command counts it as stopped only 9 s after its last probe: time for a loaded machine to
 * start the command, fill the socket or restart the daemon before the next probe.
 */
const LEARN_GAP_MS = 3000;
async function learnt(d: Daemon, address: string): Promise<void> {
  for (let i = 0; i < 3; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, LEARN_GAP_MS));
    await probeOnce(d.port, address);
  }
}

/** `hapgent ARGS` against `d`, its output watched as it comes. */
function watched(d: Daemon, args: string[]) {
  const child = spawnHapgent(args, {
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HAPGENT_STATE_FILE: d.stateFile,
      HAPGENT_IP: "127.0.0.1",
      HAPGENT_PORT: String(d.port),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    output += chunk;
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    output += chunk;
  });
  const done: Promise<Finished> = collect(child, 40_000);
  return {
    done,
    until: (pattern: RegExp) =>
      waitFor(`${args.join(" ")} to say ${pattern}`, () => pattern.exec(output)?.[0], 20_000).catch(
        (err: Error) => {
          throw new Error(`${err.message}; it said:\n${output}`);
        },
      ),
  };
}

/**
 * A socket in front of the daemon's control socket that passes every client through, or answers
 * each with the busy reply the daemon gives when all its clients wait for changes to be saved.
 * That state needs 16 changes held unsaved at once, which a real daemon cannot be brought to on
 * demand; what is tested here is the command's answer to the reply, which is the daemon's own.
 */
async function busyRelay(t: { after: (fn: () => Promise<void>) => void }, daemonPath: string) {
  const path = `${daemonPath}.relay`;
  let busy = false;
  const open = new Set<Socket>();
  const server = createServer((client) => {
    open.add(client);
    client.on("close", () => open.delete(client));
    client.on("error", () => {});
    if (busy) {
      client.end(
        `${JSON.stringify({ ok: false, code: "busy", error: "busy: 16 clients wait for changes" })}\n`,
      );
      return;
    }
    const upstream = connect({ path: daemonPath });
    upstream.on("error", () => client.destroy());
    client.on("close", () => upstream.destroy());
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(async () => {
    for (const client of open) client.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    path,
    setBusy: (value: boolean) => {
      busy = value;
    },
  };
}

describe("--wait: every load balancer that polls has heard the change", () => {
  test("each is named as it hears, then the command returns", async (t) => {
    const d = await startDaemon(t);
    const a = poller(d.port, "127.0.0.2", 100);
    const b = poller(d.port, "127.0.0.3", 150);
    t.after(async () => Promise.all([a.stop(), b.stop()]));
    await waitFor("both learnt", () => (a.probes > 3 && b.probes > 3 ? true : undefined));
    const result = await cliFor(d, "drain", "--wait");
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.match(
      result.stdout,
      /127\.0\.0\.2 (heard "up drain 100%" after \d+\.\d s|hears "up drain 100%" already) \([12] of 2\)/,
    );
    assert.match(
      result.stdout,
      /127\.0\.0\.3 (heard "up drain 100%" after \d+\.\d s|hears "up drain 100%" already) \([12] of 2\)/,
    );
    const status = await cliFor(d, "status");
    assert.match(
      status.stdout,
      /polled by {3}127\.0\.0\.2: every 0\.1 s, last \d+\.\d s ago, heard "up drain 100%"\n/,
    );
    assert.doesNotMatch(
      status.stdout,
      /polled by {3}127\.0\.0\.1/,
      "the command's own probes are no load balancer",
    );
  });

  test("one that stops polling is reported and not waited for; nobody polling is said plainly", async (t) => {
    const d = await startDaemon(t);
    const a = poller(d.port, "127.0.0.2", 100);
    const b = poller(d.port, "127.0.0.3", 100);
    t.after(async () => Promise.all([a.stop(), b.stop()]));
    await waitFor("both learnt", () => (a.probes > 3 && b.probes > 3 ? true : undefined));
    await b.stop();
    const began = Date.now();
    const result = await cliFor(d, "down", "--wait", "--wait-timeout", "20");
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.match(result.stdout, /127\.0\.0\.2 (heard|hears) "down ready 100%"/);
    assert.match(
      result.stdout,
      /127\.0\.0\.3 stopped polling \(last probe \d+\.\d s ago\): not waited for/,
    );
    assert.ok(Date.now() - began < 10_000, "not held until the ledger forgets it");
    await a.stop();

    const alone = await startDaemon(t);
    const none = await cliFor(alone, "down", "--wait");
    assert.equal(none.code, CLI_EXIT.OK, none.stderr);
    assert.match(none.stdout, /no load balancer is polling this agent: nothing to wait for/);
  });

  test("one that resets each probe once it has read the line, as HAProxy does, has heard", async (t) => {
    const d = await startDaemon(t);
    const lb = poller(d.port, "127.0.0.5", 100, { reset: true });
    t.after(() => lb.stop());
    await waitFor("learnt", () => (lb.probes > 3 ? true : undefined));
    const result = await cliFor(d, "drain", "--wait", "--wait-timeout", "5");
    assert.equal(result.code, CLI_EXIT.OK, result.stdout + result.stderr);
    assert.match(result.stdout, /127\.0\.0\.5 (heard|hears) "up drain 100%"/);
  });

  test("one that never hears (it never closes a probe) is named at the timeout, exit 8", async (t) => {
    const d = await startDaemon(t);
    // The agent learns of a probe when it closes: here, when the agent cuts it at its 2 s linger,
    // so it polls slowly enough that a probe learnt that late is not one that stopped polling.
    const deaf = poller(d.port, "127.0.0.4", 1500, { deaf: true });
    t.after(() => deaf.stop());
    await waitFor("learnt", async () => {
      const status = JSON.parse((await cliFor(d, "status", "--json")).stdout);
      const pollers = (status.loadBalancers ?? []) as { address: string; intervalMs: number }[];
      return pollers.some((p) => p.address === "127.0.0.4" && p.intervalMs !== null)
        ? true
        : undefined;
    });
    const result = await cliFor(d, "maint", "--wait", "--wait-timeout", "3");
    assert.equal(result.code, CLI_EXIT.NOT_HEARD, result.stdout + result.stderr);
    assert.match(
      result.stderr,
      /1 of 1 load balancers did not hear the new state within 3\.0 s: 127\.0\.0\.4 \(polls every 1\.\d s\)/,
    );
    assert.equal(await d.readState(), '{"status":"MAINT"}\n', "the change itself was made");
  });

  test("a busy control socket is asked again until the load balancer has heard", async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, "control.sock");
    const d = await startDaemon(t, { env: { HAPGENT_CONTROL_SOCKET: path } });
    await learnt(d, "127.0.0.6");
    const relay = await busyRelay(t, path);
    const cli = watched(d, ["drain", "--wait", "--wait-timeout", "30", "--socket", relay.path]);
    await cli.until(/answers: up drain 100%/);
    relay.setBusy(true);
    await cli.until(/note: the control socket .* is busy \(.*busy.*\); still waiting\n/);
    relay.setBusy(false);
    await probeOnce(d.port, "127.0.0.6");
    const result = await cli.done;
    assert.equal(result.code, CLI_EXIT.OK, result.stdout + result.stderr);
    assert.match(result.stdout, /127\.0\.0\.6 heard "up drain 100%" after \d+\.\d s \(1 of 1\)/);
  });

  test("a daemon restarted during the wait is waited for; its new ledger says who heard", async (t) => {
    const dir = await tempDir(t);
    const env = { HAPGENT_CONTROL_SOCKET: join(dir, "control.sock") };
    const d = await startDaemon(t, { env });
    await learnt(d, "127.0.0.7");
    const cli = watched(d, ["drain", "--wait", "--wait-timeout", "30"]);
    await cli.until(/answers: up drain 100%/);
    d.child.kill("SIGKILL");
    await d.exited;
    await cli.until(
      /note: the control socket .* does not answer \(E[A-Z]+\): waiting for the daemon/,
    );
    const again = await startDaemon(t, { env, dir: d.dir, port: d.port, state: null });
    await again.waitForReply("up drain 100%\n");
    await probeOnce(again.port, "127.0.0.7");
    const result = await cli.done;
    assert.equal(result.code, CLI_EXIT.OK, result.stdout + result.stderr);
    assert.match(result.stdout, /note: the control socket answers again\n/);
    assert.match(result.stdout, /127\.0\.0\.7 heard "up drain 100%" after \d+\.\d s \(1 of 1\)/);
  });

  test("a daemon that does not come back by the deadline: exit 3, saying so", async (t) => {
    const dir = await tempDir(t);
    const d = await startDaemon(t, { env: { HAPGENT_CONTROL_SOCKET: join(dir, "control.sock") } });
    await learnt(d, "127.0.0.8");
    const cli = watched(d, ["drain", "--wait", "--wait-timeout", "3"]);
    await cli.until(/answers: up drain 100%/);
    d.child.kill("SIGKILL");
    const result = await cli.done;
    assert.equal(result.code, CLI_EXIT.NO_AGENT, result.stdout + result.stderr);
    assert.match(
      result.stderr,
      /hapgent: the control socket .* still does not answer \(E[A-Z]+\) after 3\.0 s: cannot tell whether 127\.0\.0\.8 \(polls every \d\.\d s\) heard the new state\n/,
    );
  });

  test("--wait needs the control socket: without one nothing is written", async (t) => {
    const dir = await tempDir(t);
    // Its directory's parent does not exist: the daemon makes only the socket's own directory.
    const d = await startDaemon(t, {
      env: { HAPGENT_CONTROL_SOCKET: join(dir, "missing", "dir", "c.sock") },
    });
    await d.waitForLog(/no control socket: /);
    const result = await cliFor(d, "down", "--wait");
    assert.equal(result.code, CLI_EXIT.NO_AGENT);
    assert.match(result.stderr, /--wait and --idle need the running daemon's control socket/);
    assert.equal(await d.readState(), '{"status":"UP"}');
  });
});

describe("--idle PORT: no connection to the service is left", () => {
  test("the count is said as it falls; a connection that stays gives exit 9 with the count", async (t) => {
    const d = await startDaemon(t);
    // The service: a listener whose clients stay connected until the test lets them go.
    const held: Socket[] = [];
    const service = createServer((socket) => {
      socket.on("error", () => {});
      held.push(socket);
    });
    await new Promise<void>((resolve) => service.listen(0, "127.0.0.1", resolve));
    t.after(() => new Promise((resolve) => service.close(resolve)));
    const port = (service.address() as { port: number }).port;
    const clients = Array.from({ length: 3 }, () => connect({ host: "127.0.0.1", port }));
    for (const client of clients) client.on("error", () => {});
    await waitFor("three connections", () => (held.length === 3 ? true : undefined));

    const stuck = await cliFor(d, "drain", "--idle", String(port), "--idle-timeout", "0.5");
    assert.equal(stuck.code, CLI_EXIT.NOT_IDLE, stuck.stderr);
    assert.match(stuck.stdout, new RegExp(`port ${port}: 3 connections open`));
    assert.match(stuck.stderr, new RegExp(`connections still open after 0\\.5 s: port ${port}: 3`));

    // Released only once the command has counted them, so it sees the count fall.
    const child = spawnHapgent(["drain", "--idle", String(port), "--idle-timeout", "10"], {
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HAPGENT_STATE_FILE: d.stateFile,
        HAPGENT_IP: "127.0.0.1",
        HAPGENT_PORT: String(d.port),
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let seen = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      seen += chunk;
      if (seen.includes(`port ${port}: 3 connections open`)) {
        for (const socket of held) socket.destroy();
      }
    });
    const idle = await collect(child);
    assert.equal(idle.code, CLI_EXIT.OK, idle.stderr);
    assert.match(
      idle.stdout,
      new RegExp(`port ${port}: 3 connections open\\n(.*\\n)*port ${port}: 0 connections open`),
    );
  });
});
