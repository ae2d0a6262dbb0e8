/**
 * SIGUSR1 at every moment of start-up: nobody may reach a debugger the signal opens, it must never
 * stay open, and the signal must still mean UP. An attacker watches for the debugger and connects
 * the moment Node announces it. The flags of main.js's first line give the debugger a random port
 * on an address no TCP connection can reach, so runs can overlap.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { connect } from "node:net";
import { test } from "node:test";
import { startDaemon } from "../helpers.js";

const RUNS = 48;
const PARALLEL = 4;

/** Resolves with the error code of a connection attempt, or "connected". */
function attempt(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.on("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

const ANNOUNCED = /Debugger listening on ws:\/\/([^/]+):(\d+)\//g;

test("SIGUSR1 during start-up never leaves the debugger open and still sets UP", async (t) => {
  const outcomes = { handler: 0, guard: 0, killed: 0, attacks: 0 };
  // Signals are spread from the first moment to past the time the handlers take to appear, as
  // measured now with the same parallelism: a loaded machine starts Node more slowly.
  const calibrate = async () => {
    const started = Date.now();
    const d = await startDaemon(t);
    const took = Date.now() - started;
    d.signal("SIGTERM");
    await d.exited;
    return took;
  };
  const startUpMs = Math.max(...(await Promise.all(Array.from({ length: PARALLEL }, calibrate))));
  const maxDelayMs = Math.ceil(startUpMs * 1.5);
  const one = async (run: number) => {
    const d = await startDaemon(t, { state: '{"status":"DOWN","weight":7}', ready: false });
    // The attacker: every debugger Node announces is tried at once, where it listens and on
    // loopback, before the guard can close it.
    const attacks: Promise<string>[] = [];
    let seen = "";
    d.child.stderr?.on("data", (chunk: Buffer) => {
      seen += chunk.toString();
      for (const [, host = "", port = ""] of seen.matchAll(ANNOUNCED)) {
        attacks.push(attempt(host, Number(port)), attempt("127.0.0.1", Number(port)));
      }
      seen = seen.slice(seen.lastIndexOf("\n") + 1);
    });
    await new Promise((r) => setTimeout(r, (run * maxDelayMs) / RUNS));
    try {
      d.signal("SIGUSR1");
    } catch (err) {
      // Only a daemon that ended by itself is gone before the signal: say how it ended.
      const ended = await d.exited;
      assert.fail(
        `run ${run}: the daemon ended before the signal (${(err as Error).message}): ${JSON.stringify(ended)}\n${d.stderr()}`,
      );
    }
    const settled = await Promise.race([
      d.waitForReply("up ready 7%\n", 10_000).then(() => "up" as const),
      d.exited.then(() => "exited" as const),
    ]);
    if (settled === "exited") {
      // Before Node's own SIGUSR1 handler exists the default action ends the process: nothing is
      // left listening, and the operator sees the command fail.
      assert.equal((await d.exited).signal, "SIGUSR1", d.stderr());
      outcomes.killed++;
      return;
    }
    // Logged when the USR1 is applied, after the guard's own line when the guard closed a debugger.
    await d.waitForLog(/SIGUSR1: state/);
    const closed = d.stderr().match(/closed the Node debugger \(ws:\/\/([^/]+):(\d+)\//);
    if (closed) {
      assert.equal(closed[1], "255.255.255.255", "the debugger listens where no one can connect");
      // Really closed: nothing listens on its port any more.
      const port = Number(closed[2]).toString(16).toUpperCase().padStart(4, "0");
      const table = await readFile("/proc/net/tcp", "utf8");
      assert.doesNotMatch(table, new RegExp(`: FFFFFFFF:${port} 00000000:0000 0A `), table);
      outcomes.guard++;
    } else {
      outcomes.handler++;
    }
    await d.waitForFile('{"status":"UP","weight":7}\n');
    d.signal("SIGTERM");
    assert.equal((await d.exited).code, 0);
    // With stderr read to its end: every debugger Node opened is one the guard closed, and
    // no attempt to reach it connected.
    for (const [, , port] of d.stderr().matchAll(ANNOUNCED)) {
      assert.equal(port, closed?.[2], d.stderr());
    }
    for (const outcome of await Promise.all(attacks)) {
      assert.notEqual(outcome, "connected", d.stderr());
      outcomes.attacks++;
    }
  };
  for (let run = 0; run < RUNS; run += PARALLEL) {
    await Promise.all(Array.from({ length: PARALLEL }, (_, i) => one(run + i)));
  }
  t.diagnostic(
    `start-up to listening ${startUpMs} ms; signals spread over 0-${maxDelayMs} ms; USR1 taken by the handler ${outcomes.handler}, debugger closed by the guard ${outcomes.guard} (attempts to connect to it ${outcomes.attacks}, none connected), killed before Node's handler ${outcomes.killed}`,
  );
  assert.ok(outcomes.guard > 0, "some signals arrived before the handler: the guard was exercised");
  assert.ok(outcomes.handler > 0, "some signals reached the handler");
});
