/**
 * The agent's own checks, run for real: a local HTTP service the test makes healthy, 503, 500,
 * slow and dead; real commands; a real TCP port. Rise and fall are counted against what the
 * service really served.
 */
import assert from "node:assert/strict";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import { type AddressInfo, createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { parseChecks } from "../../../../src/core/checks.js";
import { loadChecksFile } from "../../../../src/daemon/checks/file.js";
import { type Checks, createChecks } from "../../../../src/daemon/checks/runner.js";
import { createLogger } from "../../../../src/log.js";
import { tempDir, waitFor } from "../../../helpers.js";

/** What the daemon gives its checks from its process: who it runs as, and kill(2). */
const agentProcess = {
  uid: process.getuid?.() ?? 0,
  kill: (pid: number, signal: NodeJS.Signals) => process.kill(pid, signal),
};

function checksOf(value: unknown) {
  const parsed = parseChecks(new TextEncoder().encode(JSON.stringify(value)));
  assert.ok(parsed.ok, parsed.ok ? "" : parsed.reason);
  return parsed.checks;
}

function capture() {
  const lines: string[] = [];
  return { lines, log: createLogger({ write: (l) => lines.push(l.trim()), journal: true }) };
}

/** An HTTP service whose answer the test sets; it counts what it served, by answer. */
async function service(t: { after: (fn: () => Promise<void>) => void }) {
  let mode: "ok" | "503" | "500" | "slow" = "ok";
  const served = new Map<string, number>();
  const server = createHttpServer((_req, res) => {
    const now = mode;
    served.set(now, (served.get(now) ?? 0) + 1);
    if (now === "slow") {
      setTimeout(() => res.end("late"), 400).unref();
      return;
    }
    res.statusCode = now === "ok" ? 200 : Number(now);
    res.end(now);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  t.after(close);
  return {
    url: `http://127.0.0.1:${port}/health`,
    served: (m: string) => served.get(m) ?? 0,
    set(m: typeof mode) {
      mode = m;
    },
    close,
  };
}

test("an HTTP check: 503 drains after exactly `fall` answers, 2xx brings it back after exactly `rise`, 500, slow and dead take it down", async (t) => {
  const app = await service(t);
  const { log, lines } = capture();
  // When each verdict changed, what the service had served by then.
  const flips: { verdict: string; served: Record<string, number> }[] = [];
  let checks: Checks | undefined;
  const snapshot = () => ({
    ok: app.served("ok"),
    "503": app.served("503"),
    "500": app.served("500"),
  });
  checks = createChecks({
    ...agentProcess,
    checks: checksOf({
      checks: [
        // A timeout a loaded machine still meets for a healthy answer, well under "slow"'s 400 ms.
        { name: "web", http: app.url, interval: "250ms", timeout: "200ms", rise: 2, fall: 3 },
      ],
    }),
    log,
    onChange: () => {
      const [view] = checks?.views() ?? [];
      flips.push({ verdict: view?.verdict?.status ?? "passing", served: snapshot() });
    },
  });
  t.after(() => checks?.stop());
  await waitFor("two runs", async () => ((checks?.views()[0]?.runs ?? 0) >= 2 ? true : undefined));
  assert.equal(checks.views()[0]?.passing, true);
  assert.ok(app.served("ok") >= 2);

  app.set("503");
  await waitFor("the drain", async () => (flips.length >= 1 ? true : undefined));
  assert.deepEqual(flips[0]?.verdict, "DRAIN");
  assert.equal(flips[0]?.served["503"], 3, "after exactly three 503s");
  const { instance } = checks.verdicts();
  assert.deepEqual(instance, [
    { status: "DRAIN", description: `check web: ${app.url}: 503 for 3 checks` },
  ]);

  const okBefore = app.served("ok");
  app.set("ok");
  await waitFor("the return", async () => (flips.length >= 2 ? true : undefined));
  assert.equal(flips[1]?.verdict, "passing");
  assert.equal((flips[1]?.served.ok ?? 0) - okBefore, 2, "after exactly two passes");

  app.set("500");
  await waitFor("down on 500", async () =>
    checks?.views()[0]?.verdict?.status === "DOWN" ? true : undefined,
  );
  const down = checks.views()[0]?.verdict;
  app.set("slow");
  await waitFor("a timeout", async () =>
    /no answer within 200 ms/.test(checks?.views()[0]?.last?.detail ?? "") ? true : undefined,
  );
  await app.close();
  await waitFor("refused", async () =>
    /ECONNREFUSED/.test(checks?.views()[0]?.last?.detail ?? "") ? true : undefined,
  );
  // Still DOWN: the reply's words stay those of the failure that took it down.
  assert.equal(checks.views()[0]?.verdict, down);
  const view = checks.views()[0];
  assert.ok(view && view.runs > 10 && view.failedRuns > 5, JSON.stringify(view));
  assert.ok(
    lines.some((l) => l.startsWith("<4>check web: failing (DRAIN) after 3 failures in a row")),
    lines.join("\n"),
  );
  assert.ok(
    lines.some((l) => l.startsWith("<5>check web: passing again after 2 passes in a row")),
    lines.join("\n"),
  );
});

test("a command check: exit codes as mapped, its first line as the reason, killed with what it started at its timeout", async (t) => {
  const dir = await tempDir(t);
  const script = join(dir, "check-disk");
  const code = join(dir, "code");
  await writeFile(code, "0");
  await writeFile(
    script,
    `#!/bin/sh\necho "disk $(cat ${code}) says hello"\necho second line\nexit $(cat ${code})\n`,
  );
  await chmod(script, 0o755);
  const slow = join(dir, "slow");
  await writeFile(slow, `#!/bin/sh\nsleep 30 &\necho $! > ${dir}/child\nwait\n`);
  await chmod(slow, 0o755);
  const checks = createChecks({
    ...agentProcess,
    checks: checksOf({
      checks: [
        {
          name: "disk",
          exec: [script],
          interval: "1s",
          timeout: "900ms",
          rise: 1,
          fall: 1,
          results: { "1": "DRAIN", "2": "MAINT" },
        },
        { name: "slow", exec: [slow], interval: "1s", timeout: "100ms", fall: 1 },
        { name: "sh", shell: `test "$(cat ${code})" = 0`, interval: "1s", fall: 1, rise: 1 },
      ],
    }),
    log: capture().log,
  });
  t.after(() => checks.stop());
  const verdict = (name: string) => checks.views().find((c) => c.name === name)?.verdict;
  await writeFile(code, "1");
  await waitFor("DRAIN on exit 1", async () =>
    verdict("disk")?.status === "DRAIN" ? true : undefined,
  );
  assert.equal(verdict("disk")?.description, "check disk: exit 1: disk 1 says hello for 1 check");
  await waitFor("the shell check down too", async () =>
    verdict("sh")?.status === "DOWN" ? true : undefined,
  );
  await writeFile(code, "2");
  await waitFor("MAINT on exit 2", async () =>
    verdict("disk")?.status === "MAINT" ? true : undefined,
  );
  await writeFile(code, "0");
  await waitFor("passing on exit 0", async () =>
    verdict("disk") === undefined && verdict("sh") === undefined ? true : undefined,
  );
  await waitFor("the slow one killed", async () =>
    /no exit within 100 ms \(killed\)/.test(verdict("slow")?.description ?? "") ? true : undefined,
  );
  // What the command started went with it: the whole process group was killed.
  const child = Number((await readFile(join(dir, "child"), "utf8")).trim());
  await waitFor("its child gone", async () =>
    (await readFile(`/proc/${child}/stat`, "utf8").catch(() => "")).split(" ")[2] === "Z" ||
    !(await readFile(`/proc/${child}/stat`, "utf8").catch(() => ""))
      ? true
      : undefined,
  );
});

test("a command that exits while something it started holds its output is judged by its exit, and what it left is ended", async (t) => {
  const dir = await tempDir(t);
  const script = join(dir, "leaves-a-child");
  await writeFile(script, `#!/bin/sh\necho fine\nsleep 30 &\necho $! > ${dir}/child\nexit 0\n`);
  await chmod(script, 0o755);
  const checks = createChecks({
    ...agentProcess,
    checks: checksOf({ checks: [{ name: "c", exec: [script], interval: "1s", timeout: "800ms" }] }),
    log: capture().log,
  });
  t.after(() => checks.stop());
  await waitFor("a result", async () => (checks.views()[0]?.last === undefined ? undefined : true));
  assert.equal(checks.views()[0]?.last?.detail, "exit 0: fine");
  assert.ok((checks.views()[0]?.last?.durationMs ?? 1000) < 700, "not held until its timeout");
  const child = Number((await readFile(join(dir, "child"), "utf8")).trim());
  await waitFor("its child ended", async () => {
    const stat = await readFile(`/proc/${child}/stat`, "utf8").catch(() => "");
    return stat === "" || stat.split(" ")[2] === "Z" ? true : undefined;
  });
});

test("a TCP check: a port that accepts passes, a closed one fails", async (t) => {
  const server = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const checks = createChecks({
    ...agentProcess,
    checks: checksOf({
      checks: [{ name: "db", tcp: `127.0.0.1:${port}`, interval: "100ms", fall: 2, rise: 1 }],
    }),
    log: capture().log,
  });
  t.after(() => checks.stop());
  await waitFor("a pass", async () => ((checks.views()[0]?.runs ?? 0) >= 2 ? true : undefined));
  assert.equal(checks.views()[0]?.passing, true);
  assert.match(checks.views()[0]?.last?.detail ?? "", /connected$/);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await waitFor("down", async () =>
    checks.views()[0]?.verdict?.status === "DOWN" ? true : undefined,
  );
  assert.match(
    checks.views()[0]?.verdict?.description ?? "",
    /^check db: tcp 127\.0\.0\.1:\d+: ECONNREFUSED for 2 checks$/,
  );
});

test("stop() ends the checks: no run after it", async (t) => {
  const app = await service(t);
  const checks = createChecks({
    ...agentProcess,
    checks: checksOf({ checks: [{ name: "web", http: app.url, interval: "100ms" }] }),
    log: capture().log,
  });
  await waitFor("a run", async () => (app.served("ok") > 0 ? true : undefined));
  checks.stop();
  await sleep(50);
  const after = app.served("ok");
  await sleep(400);
  assert.equal(app.served("ok"), after);
});

test("the checks file: what cannot run is a reason, before anything runs", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, "checks.json");
  const write = (value: unknown) => writeFile(file, JSON.stringify(value), { mode: 0o644 });
  await write({ checks: [{ name: "x", exec: [join(dir, "missing")] }] });
  let result = await loadChecksFile(file, process.getuid?.() ?? 0);
  assert.ok(!result.ok);
  assert.match(
    result.reason,
    /^x: .*missing: not found \(ENOENT\)|^x: .*missing cannot be run \(ENOENT\)/,
  );
  await write({ checks: [{ name: "web", http: "http://127.0.0.1:1/" }] });
  result = await loadChecksFile(file, process.getuid?.() ?? 0);
  assert.ok(result.ok, result.ok ? "" : result.reason);
  await chmod(file, 0o666);
  result = await loadChecksFile(file, process.getuid?.() ?? 0);
  assert.ok(!result.ok);
  assert.match(result.reason, /its group or every user may write it \(mode 666\)/);
  result = await loadChecksFile(join(dir, "none.json"), process.getuid?.() ?? 0);
  assert.ok(!result.ok);
  assert.match(result.reason, /not found \(ENOENT\)/);
});

test("as HAProxy starts a server: a check that never passed fails at its first failure; one that passed needs `fall`", async () => {
  const results: string[] = [];
  const checks = createChecks({
    ...agentProcess,
    checks: checksOf({
      checks: [{ name: "c", tcp: "127.0.0.1:1", interval: "100ms", rise: 2, fall: 3 }],
    }),
    log: capture().log,
    run: async () => {
      const next = results.shift() ?? "UP";
      return { status: next === "UP" ? "UP" : "DOWN", detail: next, durationMs: 1 };
    },
  });
  try {
    results.push("first");
    await waitFor("failing at once", async () =>
      checks.views()[0]?.passing === false ? true : undefined,
    );
    assert.equal(checks.views()[0]?.runs, 1);
    results.push("UP", "UP", "x", "x");
    await waitFor("five runs", async () =>
      (checks.views()[0]?.runs ?? 0) >= 5 ? true : undefined,
    );
    assert.equal(
      checks.views()[0]?.passing,
      true,
      "back after two passes, still up after two failures",
    );
    results.push("x");
    await waitFor("the third failure", async () =>
      checks.views()[0]?.passing === false ? true : undefined,
    );
    assert.equal(checks.views()[0]?.verdict?.description, "check c: x for 3 checks");
  } finally {
    checks.stop();
  }
});

test("runs the agent cannot make leave the verdict as it was for 30 s, then count as failures", async () => {
  let clock = 1_000_000;
  let fault = false;
  const { log, lines } = capture();
  const checks = createChecks({
    ...agentProcess,
    checks: checksOf({
      checks: [{ name: "c", tcp: "127.0.0.1:1", interval: "100ms", rise: 1, fall: 1 }],
    }),
    log,
    now: () => clock,
    run: async () =>
      fault
        ? { status: "DOWN", detail: "not run: EMFILE", durationMs: 0, agentFault: true }
        : { status: "UP", detail: "connected", durationMs: 1 },
  });
  const view = () => checks.views()[0];
  const ranAt = (atMs: number) =>
    waitFor(`a run at ${atMs}`, async () => ((view()?.last?.atMs ?? 0) >= atMs ? true : undefined));
  try {
    await waitFor("a pass", async () => ((view()?.runs ?? 0) >= 1 ? true : undefined));
    fault = true;
    await waitFor("the fault logged", async () =>
      lines.some((l) => l.includes("check c: not run: EMFILE; its verdict stands"))
        ? true
        : undefined,
    );
    const runs = view()?.runs;
    clock += 29_000;
    await ranAt(clock);
    assert.equal(view()?.passing, true, JSON.stringify(view()));
    assert.equal(view()?.runs, runs, "not counted");
    clock += 2_000;
    await waitFor("failing", async () => (view()?.passing === false ? true : undefined));
    assert.equal(view()?.verdict?.description, "check c: not run: EMFILE (31 s) for 1 check");
    fault = false;
    await waitFor("passing again", async () => (view()?.passing ? true : undefined));
    assert.ok(
      lines.some((l) => l.includes("check c: runs again: connected")),
      lines.join("\n"),
    );
    assert.equal(lines.filter((l) => l.includes("its verdict stands")).length, 1, lines.join("\n"));
  } finally {
    checks.stop();
  }
});

test("a check defined as before keeps its counters and verdict across a reload", async () => {
  const definition = { checks: [{ name: "c", tcp: "127.0.0.1:1", interval: "1h", fall: 1 }] };
  const first = createChecks({ ...agentProcess, checks: checksOf(definition), log: capture().log });
  await waitFor("the first run", async () => (first.views()[0]?.runs === 1 ? true : undefined));
  assert.equal(first.views()[0]?.passing, false);
  const verdict = first.views()[0]?.verdict;
  first.stop();
  const again = createChecks({
    ...agentProcess,
    checks: checksOf(definition),
    log: capture().log,
    previous: first,
  });
  try {
    // Failing from the start, before its own first run, with the same words.
    assert.equal(again.views()[0]?.passing, false);
    assert.equal(again.views()[0]?.verdict, verdict);
    assert.deepEqual(again.verdicts().instance, [verdict]);
  } finally {
    again.stop();
  }
  const changed = createChecks({
    ...agentProcess,
    checks: checksOf({ checks: [{ ...definition.checks[0], fall: 2 }] }),
    log: capture().log,
    previous: first,
  });
  changed.stop();
  assert.equal(changed.views()[0]?.passing, true, "a changed definition starts afresh");
});
