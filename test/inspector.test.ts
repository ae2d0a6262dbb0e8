/**
 * SIGUSR1 at every moment of start-up: the Node debugger must never stay open, and the signal
 * must still mean UP. NODE_OPTIONS=--inspect-port=0 makes a debugger opened by the signal take a
 * random port, so runs can overlap; it does not open the debugger by itself.
 */
import assert from "node:assert/strict";
import { connect } from "node:net";
import { test } from "node:test";
import { startDaemon } from "./helpers.js";

const RUNS = 48;
const PARALLEL = 4;

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.on("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.on("error", () => resolve(true));
  });
}

test("SIGUSR1 during start-up never leaves the debugger open and still sets UP", async (t) => {
  const outcomes = { handler: 0, guard: 0, killed: 0 };
  // Signals are spread from the first moment to past the time the handlers take to appear, as
  // measured now with the same parallelism: a loaded machine starts Node more slowly.
  const calibrate = async () => {
    const started = Date.now();
    const d = await startDaemon(t, { env: { NODE_OPTIONS: "--inspect-port=0" } });
    const took = Date.now() - started;
    d.signal("SIGTERM");
    await d.exited;
    return took;
  };
  const startUpMs = Math.max(...(await Promise.all(Array.from({ length: PARALLEL }, calibrate))));
  const maxDelayMs = Math.ceil(startUpMs * 1.5);
  const one = async (run: number) => {
    const d = await startDaemon(t, {
      state: '{"status":"DOWN","weight":7}',
      env: { NODE_OPTIONS: "--inspect-port=0" },
      ready: false,
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
    const closed = d.stderr().match(/closed the Node debugger \(ws:\/\/127\.0\.0\.1:(\d+)\//)?.[1];
    if (closed) {
      assert.ok(await refused(Number(closed)), `debugger port ${closed} still open`);
      outcomes.guard++;
    } else {
      outcomes.handler++;
    }
    await d.waitForFile('{"status":"UP","weight":7}\n');
    d.signal("SIGTERM");
    assert.equal((await d.exited).code, 0);
    // With stderr read to its end: every debugger Node opened is one the guard closed.
    for (const [, port] of d
      .stderr()
      .matchAll(/Debugger listening on ws:\/\/127\.0\.0\.1:(\d+)\//g)) {
      assert.equal(port, closed, d.stderr());
    }
  };
  for (let run = 0; run < RUNS; run += PARALLEL) {
    await Promise.all(Array.from({ length: PARALLEL }, (_, i) => one(run + i)));
  }
  t.diagnostic(
    `start-up to listening ${startUpMs} ms; signals spread over 0-${maxDelayMs} ms; USR1 taken by the handler ${outcomes.handler}, debugger closed by the guard ${outcomes.guard}, killed before Node's handler ${outcomes.killed}`,
  );
  assert.ok(outcomes.guard > 0, "some signals arrived before the handler: the guard was exercised");
  assert.ok(outcomes.handler > 0, "some signals reached the handler");
});
