/** The control socket beside another process: a stale socket it left, and the real daemon's. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { lstat, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { createControlServer } from "../../src/daemon/control.js";
import { exchange, startDaemon, tempDir } from "../helpers.js";

describe("control socket", () => {
  test("a stale socket is replaced; a live one or another file is never taken", async (t) => {
    const dir = await tempDir(t);
    const stale = join(dir, "stale.sock");
    // A socket whose server is gone: left behind by a killed daemon.
    const holder = spawn(process.execPath, [
      "-e",
      `require("node:net").createServer().listen(${JSON.stringify(stale)}, () => console.log("up"))`,
    ]);
    await new Promise((resolve) => holder.stdout.once("data", resolve));
    holder.kill("SIGKILL");
    await new Promise((resolve) => holder.on("close", resolve));
    assert.ok((await lstat(stale)).isSocket());
    const handlers = { handle: async () => ({ ok: true }) };
    const fresh = createControlServer({ path: stale, handlers });
    await fresh.listen();
    t.after(() => fresh.close());

    const live = createControlServer({ path: stale, handlers });
    await assert.rejects(live.listen(), /is in use by another process/);
    const file = join(dir, "file");
    await writeFile(file, "x");
    await assert.rejects(
      createControlServer({ path: file, handlers }).listen(),
      /exists and is not a socket/,
    );
  });
});

describe("control socket of the daemon", () => {
  test("status and changes; junk, floods and half-closed clients leave it unharmed", async (t) => {
    const dir = await tempDir(t);
    const socket = join(dir, "run", "control.sock");
    await mkdir(join(dir, "run"));
    const d = await startDaemon(t, {
      state: '{"status":"UP","weight":30}',
      env: { HAPGENT_CONTROL_SOCKET: socket },
    });
    await d.waitForLog(/control socket .*control\.sock/);
    const [status] = await exchange(socket, '{"op":"status"}\n');
    assert.deepEqual(JSON.parse(status ?? ""), {
      ok: true,
      state: { status: "UP", weight: 30 },
      pollers: [],
      checks: [],
      checksProblem: null,
      fleet: null,
    });
    const junk = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        exchange(socket, i % 2 === 0 ? Buffer.alloc(100_000, "{") : "\u0000\u00ff\n", 500),
      ),
    );
    assert.ok(junk.flat().every((line) => JSON.parse(line).ok === false));
    const [changed] = await exchange(
      socket,
      '{"op":"change","status":"DRAIN","maxconn":7}\n',
      3000,
    );
    const reply = JSON.parse(changed ?? "");
    assert.match(reply.state.changed.at, /^20[0-9-]+T[0-9:.]+Z$/);
    assert.deepEqual(reply, {
      ok: true,
      state: {
        status: "DRAIN",
        weight: 30,
        maxconn: 7,
        // A client that does not say who it is is recorded as the command line, nobody named.
        changed: { at: reply.state.changed.at, via: "cli" },
      },
      replaced: null,
      unsaved: null,
      cancelled: null,
      pollers: [],
      checks: [],
      checksProblem: null,
      fleet: null,
    });
    assert.equal(await d.readState(), '{"status":"DRAIN","weight":30,"maxconn":7}\n');
    assert.equal(await d.probe(), "up drain 30% maxconn:7\n");
    await d.waitForLog(
      /control: state \{"status":"UP","weight":30\} -> \{"status":"DRAIN","weight":30,"maxconn":7,"changed":\{"at":"[^"]+","via":"cli"\}\}/,
    );
    const [twice] = await exchange(socket, '{"op":"change","status":"DOWN","status":"UP"}\n');
    assert.deepEqual(JSON.parse(twice ?? ""), {
      ok: false,
      error: '"status" appears more than once; expected each key once',
    });
    const [refused] = await exchange(socket, '{"op":"change","status":"UP","weight":900}\n');
    assert.deepEqual(JSON.parse(refused ?? ""), {
      ok: false,
      code: "invalid",
      error: "weight must be an integer 0-255, got 900",
    });
    assert.equal(d.child.exitCode, null, "still running");
    d.signal("SIGTERM");
    assert.equal((await d.exited).code, 0);
    await assert.rejects(lstat(socket), { code: "ENOENT" }, "the socket is removed at exit");
  });
});
