import assert from "node:assert/strict";
import { describe, type TestContext, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type State,
  type StateResult,
  serialiseState,
  withRecords,
} from "../../../src/core/state.js";
import { createOperator, defaultRetryDelayMs } from "../../../src/daemon/operator.js";
import { createLogger } from "../../../src/log.js";

/** A store in memory whose saves take a while, so commands can pile up behind them. */
function fakeStore(initial: StateResult, saveMs = 5) {
  const saves: string[] = [];
  let file: StateResult = initial;
  let saving = 0;
  let overlapped = false;
  let failSaves = false;
  return {
    path: "/fake/state.json",
    saves,
    get overlapped() {
      return overlapped;
    },
    setFile(result: StateResult) {
      file = result;
    },
    failSaves(on: boolean) {
      failSaves = on;
    },
    async load(): Promise<StateResult> {
      await sleep(1);
      return file;
    },
    async save(state: State): Promise<void> {
      if (++saving > 1) overlapped = true;
      await sleep(saveMs);
      saving--;
      if (failSaves) throw new Error("EROFS: read-only file system");
      // What is answered; the audit records are checked by the tests made for them.
      saves.push(serialiseState(answered(state)).trim());
      file = { ok: true, state };
    },
  };
}

/** The state without its audit record and pending expiry: what probes are answered. */
function answered(state: State): State {
  return withRecords(state, undefined, undefined);
}

async function waitUntil(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await sleep(2);
  }
}

/**
 * Lets `ms` pass on the test's mocked timers, `stepMs` at a time, the commands a timer queued run
 * to their end after each step, as they would between real timers.
 */
async function elapse(
  t: TestContext,
  agent: { settled(): Promise<void> },
  ms: number,
  stepMs = 10,
): Promise<void> {
  for (let passed = 0; passed < ms; passed += stepMs) {
    t.mock.timers.tick(stepMs);
    await agent.settled();
  }
}

function capture() {
  const lines: string[] = [];
  return { lines, log: createLogger({ write: (l) => lines.push(l.trim()), journal: true }) };
}

describe("agent", () => {
  test("starts in MAINT until the file is loaded", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP", weight: 3 } });
    const agent = createOperator({ store, log: capture().log });
    assert.deepEqual(answered(agent.state), { status: "MAINT" });
    await agent.command("reload", "start-up");
    assert.deepEqual(answered(agent.state), { status: "UP", weight: 3 });
    assert.deepEqual(store.saves, [], "loading never writes");
  });

  test("up and down apply before the call returns, keeping weight and maxconn", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP", weight: 3, maxconn: 4 } });
    const agent = createOperator({ store, log: capture().log });
    await agent.command("reload", "start-up");
    void agent.command("down", "SIGUSR2");
    assert.deepEqual(answered(agent.state), { status: "DOWN", weight: 3, maxconn: 4 });
    void agent.command("up", "SIGUSR1");
    assert.deepEqual(answered(agent.state), { status: "UP", weight: 3, maxconn: 4 });
    await agent.settled();
    assert.equal(store.saves.at(-1), '{"status":"UP","weight":3,"maxconn":4}');
  });

  test("a burst ends with the last command in memory and in the file; saves never overlap", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP" } }, 3);
    const agent = createOperator({ store, log: capture().log });
    await agent.command("reload", "start-up");
    let last: "up" | "down" = "up";
    for (let i = 0; i < 200; i++) {
      last = i % 3 === 0 ? "up" : "down";
      void agent.command(last, "test");
      if (i % 17 === 0) await sleep(1);
    }
    await agent.settled();
    const want = last === "up" ? '{"status":"UP"}' : '{"status":"DOWN"}';
    assert.equal(serialiseState(answered(agent.state)).trim(), want);
    assert.equal(store.saves.at(-1), want);
    assert.equal(store.overlapped, false);
    assert.ok(store.saves.length < 200, `saves coalesce: ${store.saves.length}`);
  });

  test("a reload waits for pending saves, so it reads what came before it", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP", weight: 9 } }, 20);
    const agent = createOperator({ store, log: capture().log });
    await agent.command("reload", "start-up");
    void agent.command("down", "SIGUSR2");
    await agent.command("reload", "SIGHUP");
    assert.deepEqual(answered(agent.state), { status: "DOWN", weight: 9 });
  });

  test("commands behind a reload wait for it and apply after it, in order", async () => {
    const store = fakeStore({ ok: true, state: { status: "DRAIN" } }, 5);
    const agent = createOperator({ store, log: capture().log });
    await agent.command("reload", "start-up");
    void agent.command("reload", "SIGHUP");
    void agent.command("up", "SIGUSR1");
    assert.deepEqual(answered(agent.state), { status: "DRAIN" }, "up waits behind the reload");
    await agent.settled();
    assert.deepEqual(answered(agent.state), { status: "UP" });
    assert.equal(store.saves.at(-1), '{"status":"UP"}');
  });

  test("a reload that meets EMFILE keeps the state, holds what follows, and reads again", async () => {
    const store = fakeStore({ ok: true, state: { status: "DRAIN", weight: 7 } });
    const { log, lines } = capture();
    let attempts = 0;
    const agent = createOperator({
      store,
      log,
      readRetryDelayMs: () => {
        attempts++;
        return 1;
      },
    });
    await agent.command("reload", "start-up");
    const emfile = { ok: false, reason: "cannot be read: EMFILE", code: "EMFILE" };
    store.setFile(emfile as unknown as StateResult);
    void agent.command("reload", "SIGHUP");
    const up = agent.command("up", "SIGUSR1");
    await waitUntil(() => attempts >= 3);
    assert.deepEqual(answered(agent.state), { status: "DRAIN", weight: 7 }, "kept, and up waits");
    store.setFile({ ok: true, state: { status: "DOWN", weight: 3 } });
    await up;
    // The file as read, then the signal that came after the HUP: their order is kept.
    assert.deepEqual(answered(agent.state), { status: "UP", weight: 3 });
    assert.equal(lines.filter((line) => line.includes("EMFILE")).length, 1, lines.join("\n"));
    assert.ok(!lines.some((line) => line.includes("MAINT")), lines.join("\n"));
    assert.equal(agent.stats.fileValid, true);
  });

  test("a bad file gives exactly MAINT, and a later up gives exactly UP", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP", weight: 5, maxconn: 6 } });
    const { log, lines } = capture();
    const agent = createOperator({ store, log });
    await agent.command("reload", "start-up");
    store.setFile({ ok: false, reason: "weight must be an integer 0-255, got 1.5" });
    await agent.command("reload", "SIGHUP");
    assert.deepEqual(answered(agent.state), { status: "MAINT" });
    assert.ok(
      lines.includes(
        '<4>SIGHUP: state file /fake/state.json: weight must be an integer 0-255, got 1.5; state {"status":"UP","weight":5,"maxconn":6} -> {"status":"MAINT"}',
      ),
      lines.join("\n"),
    );
    await agent.command("up", "SIGUSR1");
    await agent.settled();
    assert.deepEqual(answered(agent.state), { status: "UP" });
    assert.equal(store.saves.at(-1), '{"status":"UP"}');
  });

  test("a failed save is logged and the new state is still answered", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP" } });
    const { log, lines } = capture();
    const agent = createOperator({ store, log });
    await agent.command("reload", "start-up");
    store.failSaves(true);
    await agent.command("down", "SIGUSR2");
    await agent.settled();
    assert.deepEqual(answered(agent.state), { status: "DOWN" });
    assert.ok(
      lines.includes(
        '<3>cannot save state file /fake/state.json: EROFS: read-only file system; still answering {"status":"DOWN"}; trying again in 1 s',
      ),
      lines.join("\n"),
    );
    store.failSaves(false);
    await agent.command("up", "SIGUSR1");
    await agent.settled();
    assert.equal(store.saves.at(-1), '{"status":"UP"}');
  });

  test("an invalid file is said to be replaced only once the save is done", async () => {
    const store = fakeStore({ ok: false, reason: "not JSON" });
    const { log, lines } = capture();
    const agent = createOperator({ store, log, retryDelayMs: () => 60_000 });
    await agent.command("reload", "start-up");
    store.failSaves(true);
    const failed = await agent.change({ status: "DRAIN" }, "control");
    assert.ok(failed.ok && failed.unsaved !== undefined);
    const said = (ending: string) =>
      lines.filter((line) => line.includes(`state.json was invalid (not JSON); ${ending}`));
    assert.deepEqual(said("replaced"), [], lines.join("\n"));
    assert.equal(said("not replaced yet: the save failed, and is retried").length, 1);
    store.failSaves(false);
    const saved = await agent.change({ status: "UP" }, "control");
    assert.ok(saved.ok && saved.unsaved === undefined);
    assert.equal(store.saves.at(-1), '{"status":"UP"}');
  });

  test("a failed save is tried again, backing off, until the file holds the state", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP" } }, 1);
    const { log, lines } = capture();
    const delays: number[] = [];
    const agent = createOperator({
      store,
      log,
      retryDelayMs: (failures) => {
        delays.push(failures);
        return 15;
      },
    });
    await agent.command("reload", "start-up");
    store.failSaves(true);
    await agent.command("down", "SIGUSR2");
    await waitUntil(() => delays.length >= 3);
    assert.deepEqual(store.saves, []);
    store.failSaves(false);
    await waitUntil(() => store.saves.length > 0);
    assert.deepEqual(store.saves, ['{"status":"DOWN"}'], "saved once, with no new command");
    assert.deepEqual(delays.slice(0, 3), [1, 2, 3], "each failure counted");
    assert.ok(
      lines.some((line) =>
        /^<5>saved state file \/fake\/state\.json after \d+ failed attempts: \{"status":"DOWN"\}$/.test(
          line,
        ),
      ),
      lines.join("\n"),
    );
    await sleep(50);
    assert.equal(store.saves.length, 1, "no retry once saved");
  });

  test("retries wait 1, 2, 4 … seconds, at most 30", () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 7, 20].map((failures) => defaultRetryDelayMs(failures)),
      [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000],
    );
  });

  test("a reload gives the file precedence over a save still to be retried", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP", weight: 5 } }, 1);
    const { log, lines } = capture();
    const agent = createOperator({ store, log, retryDelayMs: () => 30 });
    await agent.command("reload", "start-up");
    store.failSaves(true);
    await agent.command("down", "SIGUSR2");
    await agent.settled();
    store.failSaves(false);
    await agent.command("reload", "SIGHUP");
    assert.deepEqual(answered(agent.state), { status: "UP", weight: 5 });
    await sleep(80);
    assert.deepEqual(store.saves, [], "the abandoned state is not written later");
    assert.ok(
      lines.includes(
        '<4>SIGHUP: the state file /fake/state.json was never saved with {"status":"DOWN","weight":5}; reading it as it is',
      ),
      lines.join("\n"),
    );
  });

  test("a new command saves at once, and settled() gives a waiting retry its last chance", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP" } }, 1);
    const agent = createOperator({ store, log: capture().log, retryDelayMs: () => 60_000 });
    await agent.command("reload", "start-up");
    store.failSaves(true);
    await agent.command("down", "SIGUSR2");
    await agent.settled();
    store.failSaves(false);
    await agent.command("up", "SIGUSR1");
    await agent.settled();
    assert.deepEqual(store.saves, ['{"status":"UP"}']);
    store.failSaves(true);
    await agent.command("down", "SIGUSR2");
    await agent.settled();
    store.failSaves(false);
    // TERM's path: the retry is a minute away, but settled() tries now.
    await agent.settled();
    assert.deepEqual(store.saves, ['{"status":"UP"}', '{"status":"DOWN"}']);
  });

  test("every change is logged with its cause, old and new", async () => {
    const store = fakeStore({ ok: true, state: { status: "READY" } });
    const { log, lines } = capture();
    const agent = createOperator({ store, log, now: () => Date.parse("2026-11-25T14:02:00.000Z") });
    await agent.command("reload", "start-up");
    await agent.command("down", "SIGUSR2");
    await agent.command("down", "SIGUSR2");
    await agent.settled();
    assert.deepEqual(lines, [
      '<5>start-up: loaded state file /fake/state.json: {"status":"READY"}',
      '<5>SIGUSR2: state {"status":"READY"} -> {"status":"DOWN","changed":{"at":"2026-11-25T14:02:00.000Z","via":"signal","signal":"SIGUSR2"}}',
      '<5>SIGUSR2: state {"status":"DOWN","changed":{"at":"2026-11-25T14:02:00.000Z","via":"signal","signal":"SIGUSR2"}} (unchanged)',
    ]);
  });

  test("stats: changes by cause (an unchanged state is none), file validity, failed saves", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP" } });
    const agent = createOperator({ store, log: capture().log, retryDelayMs: () => 60_000 });
    const stats = () => ({ ...agent.stats, changes: { ...agent.stats.changes } });
    await agent.command("reload", "start-up");
    await agent.settled();
    // The file read at start-up is not a change.
    assert.deepEqual(stats(), {
      changes: { signal: 0, reload: 0, control: 0, expiry: 0 },
      fileValid: true,
      saveFailures: 0,
    });
    await agent.command("down", "SIGUSR2");
    await agent.command("down", "SIGUSR2");
    await agent.command("up", "SIGUSR1");
    const changed = await agent.change({ status: "DRAIN" }, "control");
    assert.ok(changed.ok);
    await agent.change({ status: "DRAIN" }, "control");
    await agent.settled();
    assert.deepEqual(stats().changes, { signal: 2, reload: 0, control: 1, expiry: 0 });

    store.setFile({ ok: false, reason: "not JSON" });
    await agent.command("reload", "SIGHUP");
    assert.deepEqual(stats(), {
      changes: { signal: 2, reload: 1, control: 1, expiry: 0 },
      fileValid: false,
      saveFailures: 0,
    });
    // A save that fails leaves the file as it was: still invalid, and counted.
    store.failSaves(true);
    await agent.command("up", "SIGUSR1");
    await agent.settled();
    assert.equal(stats().fileValid, false);
    assert.equal(stats().saveFailures, 1);
    // A save that succeeds makes it valid.
    store.failSaves(false);
    await agent.command("down", "SIGUSR2");
    await agent.settled();
    assert.deepEqual(stats(), {
      changes: { signal: 4, reload: 1, control: 1, expiry: 0 },
      fileValid: true,
      saveFailures: 1,
    });
  });
});

describe("reasons and expiring changes", () => {
  test("a change --for returns the state from before by itself, saved and logged", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP", weight: 40 } });
    const { log, lines } = capture();
    const agent = createOperator({ store, log });
    await agent.command("reload", "start-up");
    const drained = await agent.change(
      { status: "DRAIN", reason: "deploy 1.4.2", forMs: 400 },
      "control",
      "alice",
    );
    assert.ok(drained.ok);
    assert.equal(agent.state.status, "DRAIN");
    assert.equal(agent.state.changed?.by, "alice");
    assert.equal(agent.state.changed?.reason, "deploy 1.4.2");
    assert.equal(store.saves.at(-1), '{"status":"DRAIN","weight":40,"reason":"deploy 1.4.2"}');
    await waitUntil(() => agent.state.status === "UP");
    await agent.settled();
    assert.deepEqual(answered(agent.state), { status: "UP", weight: 40 });
    assert.equal(agent.state.changed?.via, "expiry");
    assert.equal(agent.state.expires, undefined);
    assert.equal(store.saves.at(-1), '{"status":"UP","weight":40}');
    assert.equal(agent.stats.changes.expiry, 1);
    assert.ok(
      lines.some((line) =>
        /^<5>expiry: the change expired \(due \S+Z\): state \{"status":"DRAIN","weight":40,"reason":"deploy 1\.4\.2"\} -> \{"status":"UP","weight":40,"changed":\{"at":"\S+","via":"expiry"\}\}$/.test(
          line,
        ),
      ),
      lines.join("\n"),
    );
  });

  test("a later change cancels a pending expiry", async (t) => {
    // The agent's timers and wall clock, mocked: the store's own waits stay real.
    t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: Date.now() });
    const store = fakeStore({ ok: true, state: { status: "UP" } });
    const agent = createOperator({ store, log: capture().log });
    await agent.command("reload", "start-up");
    await agent.change({ status: "MAINT", forMs: 100 }, "control");
    await agent.command("down", "SIGUSR2");
    await elapse(t, agent, 300);
    await agent.settled();
    assert.deepEqual(answered(agent.state), { status: "DOWN" });
    assert.equal(agent.state.expires, undefined);
    // And a later change through the socket, with an expiry of its own.
    await agent.change({ status: "MAINT", forMs: 100 }, "control");
    await agent.change({ status: "DRAIN", forMs: 60_000 }, "control");
    await elapse(t, agent, 300);
    assert.equal(agent.state.status, "DRAIN", "the first expiry was replaced");
    assert.equal((agent.state as State).expires?.returns?.status, "MAINT");
  });

  test("a deadline that passed while the agent was stopped is applied at start-up", async () => {
    const file: State = {
      status: "MAINT",
      changed: { at: "2026-11-25T14:02:00.000Z", via: "cli", by: "alice" },
      expires: { at: "2026-11-25T14:32:00.000Z", returns: { status: "UP", weight: 70 } },
    };
    const store = fakeStore({ ok: true, state: file });
    const { log, lines } = capture();
    const now = () => Date.parse("2026-11-25T18:00:00.000Z");
    const agent = createOperator({ store, log, now });
    await agent.command("reload", "start-up");
    assert.deepEqual(answered(agent.state), { status: "UP", weight: 70 }, "before any probe");
    await agent.settled();
    assert.equal(store.saves.at(-1), '{"status":"UP","weight":70}');
    assert.deepEqual(agent.state.changed, { at: "2026-11-25T18:00:00.000Z", via: "expiry" });
    assert.ok(
      lines.some((line) =>
        line.startsWith("<5>start-up: the change expired (due 2026-11-25T14:32:00.000Z)"),
      ),
      lines.join("\n"),
    );
  });

  test("a wall clock set forward brings the expiry on time, not a timer's delay late", async (t) => {
    let clock = Date.parse("2026-11-25T14:02:00.000Z");
    // The agent's timers, mocked; its clock is `clock`.
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const store = fakeStore({ ok: true, state: { status: "UP" } });
    const agent = createOperator({
      store,
      log: capture().log,
      now: () => clock,
      expiryCheckMs: 50,
    });
    await agent.command("reload", "start-up");
    await agent.change({ status: "DRAIN", forMs: 3_600_000 }, "control");
    await elapse(t, agent, 200);
    assert.equal(agent.state.status, "DRAIN");
    // This clock stands still but where it is set: set to the deadline, the change runs out.
    clock += 3_600_000 + 300;
    t.mock.timers.tick(50);
    await waitUntil(() => agent.state.status === "UP");
    // Set back, the deadline is an hour further away: a timer set for the 300 ms the change
    // asked for has run out, and still nothing returns before the wall clock says so.
    await agent.change({ status: "DRAIN", forMs: 300 }, "control");
    clock -= 3_600_000;
    await elapse(t, agent, 600);
    assert.equal(agent.state.status, "DRAIN");
    // This clock stands still but where it is set: set to the deadline, the change runs out.
    clock += 3_600_000 + 300;
    t.mock.timers.tick(50);
    await waitUntil(() => agent.state.status === "UP");
  });

  test("a file edited by hand and read again is recorded as a reload, and saved with the next change", async () => {
    const store = fakeStore({ ok: true, state: { status: "UP" } });
    const now = () => Date.parse("2026-11-25T15:00:00.000Z");
    const agent = createOperator({ store, log: capture().log, now });
    await agent.command("reload", "start-up");
    assert.equal(agent.state.changed, undefined, "the file read at start-up is not a change");
    store.setFile({ ok: true, state: { status: "DRAIN" } });
    await agent.command("reload", "SIGHUP");
    assert.deepEqual(agent.state.changed, { at: "2026-11-25T15:00:00.000Z", via: "reload" });
    // Edited again: still a reload; read again unchanged: the record stands.
    store.setFile({ ok: true, state: { status: "MAINT" } });
    await agent.command("reload", "SIGHUP");
    assert.deepEqual(agent.state.changed, { at: "2026-11-25T15:00:00.000Z", via: "reload" });
    assert.equal(agent.state.status, "MAINT");
    await agent.command("reload", "SIGHUP");
    assert.deepEqual(agent.state.changed, { at: "2026-11-25T15:00:00.000Z", via: "reload" });
    // A hand edit that keeps the record the file had: a reload too.
    await agent.command("down", "SIGUSR2");
    await agent.settled();
    const saved = (agent.state as State).changed;
    assert.equal(saved?.via, "signal");
    store.setFile({
      ok: true,
      state: { status: "UP", ...(saved === undefined ? {} : { changed: saved }) },
    });
    await agent.command("reload", "SIGHUP");
    assert.equal((agent.state as State).changed?.via, "reload");
    // A file that brings its own record (the command line wrote it) keeps it.
    const written: State = {
      status: "MAINT",
      changed: { at: "2026-11-25T15:01:00.000Z", via: "cli", by: "bob", reason: "disk" },
      description: "disk",
    };
    store.setFile({ ok: true, state: written });
    await agent.command("reload", "SIGHUP");
    assert.deepEqual(agent.state.changed, written.changed);
  });
});
