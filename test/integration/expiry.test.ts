/**
 * Reasons, expiring changes and the audit record, with the real daemon and command line: who
 * changed what, why and until when is in the file and the journal; an expiring change returns by
 * itself, across a `kill -9` and a restart; a later change cancels it.
 */
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { userInfo } from "node:os";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CLI_EXIT } from "../../src/cli/exit.js";
import { cliFor as cli, runHapgent, startDaemon, tempDir, waitFor } from "../helpers.js";

const ME = userInfo().username;

async function rawState(d: { readRawState(): Promise<string> }) {
  return JSON.parse(await d.readRawState());
}

test("drain --reason --for: the file says who, why and until when; status shows it; it returns by itself", async (t) => {
  const d = await startDaemon(t, { state: '{"status":"UP","weight":40}' });
  const before = Date.now();
  // Long enough that a slow machine still reads status before the deadline.
  const result = await cli(d, "drain", "--reason", "deploy 1.4.2", "--for", "5s");
  assert.equal(result.code, CLI_EXIT.OK, result.stderr);
  assert.equal(await d.probe(), "up drain 40% # deploy 1.4.2\n");
  const file = await rawState(d);
  assert.equal(file.status, "DRAIN");
  assert.equal(file.reason, "deploy 1.4.2");
  assert.deepEqual(
    { ...file.changed, at: undefined },
    { at: undefined, via: "cli", by: ME, reason: "deploy 1.4.2" },
  );
  assert.deepEqual(file.expires.returns, { status: "UP", weight: 40 });
  const due = Date.parse(file.expires.at);
  assert.ok(due >= before + 5000 && due <= Date.now() + 5000, file.expires.at);

  const status = await cli(d, "status");
  assert.match(
    status.stdout,
    new RegExp(
      `^changed     DRAIN since [0-9]{2}:[0-9]{2} by ${ME}: deploy 1\\.4\\.2; returns to UP at [0-9]{2}:[0-9]{2} \\(in [0-5]s\\)$`,
      "m",
    ),
  );
  const json = JSON.parse((await cli(d, "status", "--json")).stdout);
  assert.deepEqual(json.expires, file.expires);
  assert.deepEqual(json.changed, file.changed);
  // The journal line of the change holds the whole record.
  assert.match(
    d.stderr(),
    /control: state \{"status":"UP","weight":40\} -> \{"status":"DRAIN","weight":40,"reason":"deploy 1\.4\.2","changed":\{"at":"[^"]+","via":"cli","by":"[^"]+","reason":"deploy 1\.4\.2"\},"expires":\{"at":"[^"]+","returns":\{"status":"UP","weight":40\}\}\}/,
  );

  await d.waitForReply("up ready 40%\n", 10_000);
  assert.ok(Date.now() >= due, "not before the deadline");
  await d.waitForFile('{"status":"UP","weight":40}\n');
  const returned = await rawState(d);
  assert.equal(returned.status, "UP");
  assert.equal(returned.reason, undefined, "the reason went with its change");
  assert.equal(returned.expires, undefined);
  assert.equal(returned.changed.via, "expiry");
  await d.waitForLog(/expiry: the change expired \(due [^)]+\): state \{"status":"DRAIN"/);
});

test("kill -9 in the expiry window: restarted before the deadline it still returns; after it, it starts returned", async (t) => {
  const dir = await tempDir(t);
  const first = await startDaemon(t, { dir, state: '{"status":"UP"}' });
  assert.equal((await cli(first, "maint", "--for", "6s")).code, CLI_EXIT.OK);
  first.child.kill("SIGKILL");
  await first.exited;
  // Restarted before the deadline: MAINT until it, then UP without anyone's help.
  const second = await startDaemon(t, { dir, state: null, port: first.port });
  assert.equal(await second.probe(), "maint 100%\n");
  await second.waitForReply("up ready 100%\n", 12_000);
  await waitFor("the expiry saved", async () =>
    (await rawState(second)).changed.via === "expiry" ? true : undefined,
  );

  // Killed well before its deadline, restarted well after it.
  assert.equal((await cli(second, "down", "--for", "3s")).code, CLI_EXIT.OK);
  second.child.kill("SIGKILL");
  await second.exited;
  await sleep(3500);
  // Restarted after it: the first answer is already the returned state.
  const third = await startDaemon(t, { dir, state: null, port: first.port });
  assert.equal(await third.probe(), "up ready 100%\n");
  assert.match(third.stderr(), /start-up: the change expired \(due /);
  await third.waitForFile('{"status":"UP"}\n');
});

test("a later change cancels a pending expiry: the command line's and a signal's", async (t) => {
  const d = await startDaemon(t, { state: '{"status":"UP"}' });
  assert.equal((await cli(d, "maint", "--for", "6s")).code, CLI_EXIT.OK);
  const drained = await cli(d, "drain");
  assert.equal(drained.code, CLI_EXIT.OK);
  assert.match(
    drained.stdout,
    /^note: this replaces the pending expiry: UP would have returned at 20[0-9-]+T[0-9:.]+Z$/m,
  );
  assert.equal((await rawState(d)).expires, undefined);
  assert.equal((await cli(d, "down", "--for", "2s")).code, CLI_EXIT.OK);
  d.signal("SIGUSR2");
  await waitFor("the signal's record", async () =>
    (await rawState(d)).changed.via === "signal" ? true : undefined,
  );
  await sleep(3000);
  assert.equal(await d.probe(), "down ready 100%\n");
  const file = await rawState(d);
  assert.equal(file.expires, undefined);
  assert.equal(file.changed.signal, "SIGUSR2");
  assert.doesNotMatch(d.stderr(), /expired/);
});

test("a deadline already past at start-up (a clock set forward, a file copied) is applied before the first probe", async (t) => {
  const state = JSON.stringify({
    status: "MAINT",
    reason: "disk swap",
    changed: { at: "2020-01-01T10:00:00.000Z", via: "cli", by: "alice", reason: "disk swap" },
    expires: { at: "2020-01-01T11:00:00.000Z", returns: { status: "UP", weight: 80 } },
  });
  const d = await startDaemon(t, { state });
  assert.equal(await d.probe(), "up ready 80%\n");
  await d.waitForFile('{"status":"UP","weight":80}\n');
});

test("a deadline in a bad format makes the file invalid, with the reason, as any bad field", async (t) => {
  const state = '{"status":"DRAIN","expires":{"at":"tomorrow","returns":{"status":"UP"}}}';
  const d = await startDaemon(t, { state });
  assert.equal(await d.probe(), "maint 100%\n");
  assert.match(
    d.stderr(),
    /expires: at must be a UTC time such as "2026-11-25T14:32:00\.000Z", got "tomorrow"/,
  );
  const checked = await runHapgent(["check", d.stateFile], {});
  assert.equal(checked.code, CLI_EXIT.INVALID_FILE);
  assert.match(checked.stderr + checked.stdout, /expires: at must be a UTC time/);
});

test("bad --reason and --for are refused before anything is written", async (t) => {
  const d = await startDaemon(t, { state: '{"status":"UP"}' });
  const cases: [string[], RegExp][] = [
    [
      ["drain", "--for", "0s"],
      /--for must be a duration above zero and at most a year, such as 90s/,
    ],
    [["drain", "--for", "30"], /--for must be a duration/],
    [["drain", "--for", "400d"], /--for must be a duration/],
    [
      ["drain", "--reason", "two\nlines"],
      /--reason is the description HAProxy shows: 1-200 characters/,
    ],
    [["drain", "--reason", ""], /--reason is the description HAProxy shows/],
  ];
  for (const [args, message] of cases) {
    const result = await cli(d, ...args);
    assert.equal(result.code, CLI_EXIT.USAGE, args.join(" "));
    assert.match(result.stderr, message, args.join(" "));
  }
  assert.equal(await d.readRawState(), '{"status":"UP"}');
});

test("without a daemon the command line writes the record and the expiry; the next start applies it", async (t) => {
  const dir = await tempDir(t);
  const stateFile = `${dir}/state.json`;
  await writeFile(stateFile, '{"status":"UP","weight":60}');
  const result = await runHapgent(["maint", "--reason", "kernel update", "--for", "1s"], {
    HAPGENT_STATE_FILE: stateFile,
    HAPGENT_PORT: "1",
  });
  assert.equal(result.code, CLI_EXIT.NO_AGENT, result.stderr);
  const written = JSON.parse(await (await import("node:fs/promises")).readFile(stateFile, "utf8"));
  assert.equal(written.changed.by, ME);
  assert.equal(written.changed.reason, "kernel update");
  assert.deepEqual(written.expires.returns, { status: "UP", weight: 60 });
  await sleep(1200);
  const d = await startDaemon(t, { dir, state: null });
  assert.equal(await d.probe(), "up ready 60%\n");
});

test("signals are recorded with their name", async (t) => {
  const d = await startDaemon(t, { state: '{"status":"UP","description":"canary"}' });
  d.signal("SIGUSR2");
  await d.waitForFile('{"status":"DOWN","description":"canary"}\n');
  const file = await rawState(d);
  assert.equal(file.changed.via, "signal");
  assert.equal(file.changed.signal, "SIGUSR2");
  assert.ok(Math.abs(Date.parse(file.changed.at) - Date.now()) < 10_000);
  const status = await cli(d, "status");
  assert.match(status.stdout, /^changed {5}DOWN since [0-9]{2}:[0-9]{2} by SIGUSR2$/m);
});
