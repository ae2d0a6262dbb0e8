import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { watch } from "node:fs";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { silentLogger } from "../../src/log.js";
import { createStateStore } from "../../src/store.js";
import { run, runUnprivileged, SELF, tempDir } from "../helpers.js";

describe("store load", () => {
  test("a FIFO", async (t) => {
    const file = join(await tempDir(t), "s.json");
    await run("mkfifo", [file]);
    const result = await createStateStore(file, silentLogger, SELF).load();
    assert.equal(result.ok, false);
    assert.ok(
      !result.ok && result.reason.startsWith("is not a regular file"),
      !result.ok ? result.reason : "",
    );
    assert.equal(!result.ok && result.code, "EINVAL");
  });

  test("unreadable", async (t) => {
    const dir = await tempDir(t);
    await chmod(dir, 0o755);
    const file = join(dir, "s.json");
    await writeFile(file, '{"status":"UP"}');
    await chmod(file, 0o000);
    const result = await runUnprivileged(
      (src) => `
      import { createStateStore } from ${JSON.stringify(join(src, "store.js"))};
      const SELF = { pid: process.pid, kill: (p, s) => process.kill(p, s) };
      import { silentLogger } from ${JSON.stringify(join(src, "log.js"))};
      console.log(JSON.stringify(await createStateStore(${JSON.stringify(file)}, silentLogger, SELF).load()));`,
    );
    assert.equal(result.stderr, "");
    assert.deepEqual(JSON.parse(result.stdout), {
      ok: false,
      reason: "cannot be read: permission denied",
      code: "EACCES",
    });
  });
});

describe("store save", () => {
  test("in a directory it cannot write, rewrites a writable file in place and says so once", async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, "s.json");
    await writeFile(file, `{"status":"UP","weight":100,"maxconn":65535}`, { mode: 0o666 });
    await chmod(file, 0o666);
    await chmod(dir, 0o555);
    const result = await runUnprivileged(
      (src) => `
      import { createStateStore } from ${JSON.stringify(join(src, "store.js"))};
      const SELF = { pid: process.pid, kill: (p, s) => process.kill(p, s) };
      import { createLogger } from ${JSON.stringify(join(src, "log.js"))};
      const log = createLogger({ write: (l) => process.stdout.write(l), journal: true });
      const store = createStateStore(${JSON.stringify(file)}, log, SELF);
      await store.save({ status: "DOWN" });
      await store.save({ status: "DRAIN", weight: 5 });
      console.log(JSON.stringify(await store.load()));`,
    );
    assert.equal(result.stderr, "");
    const lines = result.stdout.trim().split("\n");
    assert.equal(lines.length, 2, result.stdout);
    assert.match(lines[0] ?? "", /^<4>directory .* is not writable; saving .*s\.json in place/);
    assert.deepEqual(JSON.parse(lines[1] ?? ""), {
      ok: true,
      state: { status: "DRAIN", weight: 5 },
    });
    assert.equal(
      await readFile(file, "utf8"),
      '{"status":"DRAIN","weight":5}\n',
      "shorter content truncates",
    );
  });

  test("fails when neither the directory nor the file is writable", async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, "s.json");
    await writeFile(file, '{"status":"UP"}');
    await chmod(file, 0o444);
    await chmod(dir, 0o555);
    const result = await runUnprivileged(
      (src) => `
      import { createStateStore } from ${JSON.stringify(join(src, "store.js"))};
      const SELF = { pid: process.pid, kill: (p, s) => process.kill(p, s) };
      import { silentLogger } from ${JSON.stringify(join(src, "log.js"))};
      try { await createStateStore(${JSON.stringify(file)}, silentLogger, SELF).save({ status: "DOWN" }); }
      catch (err) { console.log(err.code); }`,
    );
    assert.equal(result.stdout.trim(), "EACCES");
    assert.equal(await readFile(file, "utf8"), '{"status":"UP"}');
  });
});

test("an agent starting beside a save (its stale temporaries removed) leaves that save's temporary alone", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, "s.json");
  await writeFile(file, '{"status":"UP"}');
  const store = createStateStore(file, silentLogger, SELF);
  // The saver is another process, as the command line is beside a starting agent.
  const saver = spawn(
    process.execPath,
    [
      "--input-type=module",
      "-e",
      `import { createStateStore } from ${JSON.stringify(fileURLToPath(new URL("../../src/store.js", import.meta.url)))};
       const SELF = { pid: process.pid, kill: (p, s) => process.kill(p, s) };
       import { silentLogger } from ${JSON.stringify(fileURLToPath(new URL("../../src/log.js", import.meta.url)))};
       const store = createStateStore(${JSON.stringify(file)}, silentLogger, SELF);
       for (let i = 0; i < 200; i++) await store.save({ status: "DOWN", weight: i });`,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  saver.stderr?.on("data", (chunk) => {
    stderr += chunk;
  });
  // What an agent's start does, each time a temporary file appears.
  let seen = 0;
  const watcher = watch(dir, (_event, name) => {
    if (typeof name !== "string" || !name.startsWith(".s.json.tmp-")) return;
    seen++;
    void store.removeStaleTemporaries();
  });
  t.after(() => watcher.close());
  const code = await new Promise((resolve) => saver.on("close", resolve));
  assert.equal(code, 0, stderr);
  assert.ok(seen > 0, "temporary files appeared under the removals");
  assert.equal(await readFile(file, "utf8"), '{"status":"DOWN","weight":199}\n');
});
