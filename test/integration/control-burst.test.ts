/**
 * Many command lines at once against one daemon, as a deploy's parallel shells run them: every one
 * is answered through the control socket, none falls back or fails. For the changes the daemon is
 * stopped (SIGSTOP) while they connect, so that it accepts them all in one tick, as libuv does a
 * burst.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { collect, type Daemon, run, spawnHapgent, startDaemon, tempDir } from "../helpers.js";

/** One command line; 60 at once on a busy machine are slow to start, hence the wide limit. */
function hapgent(args: string[], env: Record<string, string>) {
  const child = spawnHapgent(args, {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return collect(child, 120_000);
}

/** Connections waiting in the listening socket's queue, not yet accepted. */
async function queued(path: string): Promise<number> {
  const line = (await run("ss", ["-xlnH"])).split("\n").find((l) => l.includes(` ${path} `));
  return Number(line?.trim().split(/\s+/)[2] ?? 0);
}

/**
 * Runs `start` with the daemon stopped, and lets it go once `count` clients wait to be accepted,
 * or `maxStopMs` after the first did. Returns how many it then accepted at once.
 */
async function burst(d: Daemon, path: string, count: number, maxStopMs: number): Promise<number> {
  d.signal("SIGSTOP");
  let firstAtMs: number | undefined;
  for (;;) {
    const waiting = await queued(path);
    if (waiting > 0) firstAtMs ??= Date.now();
    if (waiting >= count || (firstAtMs !== undefined && Date.now() - firstAtMs > maxStopMs)) {
      d.signal("SIGCONT");
      return waiting;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("40 status and 20 drain/up command lines at once are all answered by the daemon", async (t) => {
  const dir = await tempDir(t);
  const socket = join(dir, "control.sock");
  const d = await startDaemon(t, {
    state: '{"status":"UP","weight":30}',
    env: { HAPGENT_CONTROL_SOCKET: socket },
  });
  // Never left stopped, whatever fails; it may be gone already.
  t.after(() => {
    if (d.child.exitCode === null && d.child.signalCode === null) d.signal("SIGCONT");
  });
  const env = {
    HAPGENT_STATE_FILE: d.stateFile,
    HAPGENT_IP: "127.0.0.1",
    HAPGENT_PORT: String(d.port),
    HAPGENT_CONTROL_SOCKET: socket,
  };
  // A status waits only 2 s for the daemon, and probes the agent: not stopped for these.
  const statuses = Array.from({ length: 40 }, () => hapgent(["status", "--json"], env));
  for (const { code, stdout, stderr } of await Promise.all(statuses)) {
    assert.equal(code, 0, stderr);
    // The load balancers (none here) come from the daemon: null when it did not answer.
    assert.match(stdout, /"loadBalancers":\[/, stdout);
  }
  // Each change is saved by the daemon, in turn; one another overrides is not for it to confirm.
  const changes = Array.from({ length: 20 }, (_, i) =>
    hapgent([i % 2 === 0 ? "drain" : "up", "--no-wait", "--timeout", "60"], env),
  );
  assert.equal(await burst(d, socket, 20, 30_000), 20);
  for (const { code, stdout, stderr } of await Promise.all(changes)) {
    assert.equal(code, 0, stderr);
    assert.match(stdout, /^hapgent pid \d+ wrote /, stdout);
    assert.equal(stderr, "");
  }
});
