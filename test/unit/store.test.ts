import assert from "node:assert/strict";
import {
  chmod,
  chown,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { createLogger, silentLogger } from "../../src/log.js";
import { createStateStore, isTransientReadError } from "../../src/store.js";
import { IS_ROOT, NOBODY, SELF, tempDir } from "../helpers.js";

describe("store load", () => {
  test("a valid file", async (t) => {
    const dir = await tempDir(t);
    await writeFile(join(dir, "s.json"), '{"status":"DRAIN","weight":20}');
    const result = await createStateStore(join(dir, "s.json"), silentLogger, SELF).load();
    assert.deepEqual(result, { ok: true, state: { status: "DRAIN", weight: 20 } });
  });

  const failures: [string, (dir: string, file: string) => Promise<unknown>, string, string?][] = [
    ["missing", async () => {}, "does not exist", "ENOENT"],
    ["a directory", (_dir, file) => mkdir(file), "is a directory, expected a file", "EISDIR"],
    ["empty", (_dir, file) => writeFile(file, ""), "file is empty"],
    ["not JSON", (_dir, file) => writeFile(file, "status: UP"), "file is not valid JSON ("],
    [
      "too large",
      (_dir, file) => writeFile(file, " ".repeat(200 * 1024)),
      "file is larger than 65536 bytes",
    ],
    [
      "under a file",
      (dir) => writeFile(join(dir, "f"), "x"),
      "has a path component that is not a directory",
      "ENOTDIR",
    ],
    ["a symlink loop", (_dir, file) => symlink(file, file), "is a symlink loop", "ELOOP"],
  ];
  for (const [name, make, reason, code] of failures) {
    test(name, async (t) => {
      const dir = await tempDir(t);
      const file = name === "under a file" ? join(dir, "f", "s.json") : join(dir, "s.json");
      await make(dir, file);
      const result = await createStateStore(file, silentLogger, SELF).load();
      assert.equal(result.ok, false);
      assert.ok(!result.ok && result.reason.startsWith(reason), !result.ok ? result.reason : "");
      // A file that could not be read says why with Node's code; a file read but invalid has none.
      assert.equal(!result.ok && result.code, code);
    });
  }
});

describe("read errors: the file's or the moment's", () => {
  // About the file: the operator must change it or its path; the file counts as invalid (MAINT).
  const aboutTheFile = [
    "ENOENT",
    "ENOTDIR",
    "EISDIR",
    "ENAMETOOLONG",
    "ELOOP",
    "EACCES",
    "EPERM",
    "EINVAL",
    "ENXIO",
    "ENODEV",
    "EFBIG",
    "EOVERFLOW",
  ];
  // Descriptors, memory, the device or the network for a moment: the same file may read fine later.
  const ofTheMoment = [
    "EMFILE",
    "ENFILE",
    "ENOMEM",
    "EIO",
    "EAGAIN",
    "EINTR",
    "ESTALE",
    "ETIMEDOUT",
    "ENOBUFS",
    "EBUSY",
    "EUNKNOWNTOTHISTABLE",
  ];
  for (const code of aboutTheFile) {
    test(`${code} is about the file`, () => assert.equal(isTransientReadError(code), false));
  }
  for (const code of ofTheMoment) {
    test(`${code} is a fault of the moment`, () => assert.equal(isTransientReadError(code), true));
  }
  test("a file that was read and is invalid has no code: never transient", () =>
    assert.equal(isTransientReadError(undefined), false));
});

describe("store save", () => {
  test("creates the file and reads it back", async (t) => {
    const dir = await tempDir(t);
    const store = createStateStore(join(dir, "s.json"), silentLogger, SELF);
    await store.save({ status: "UP", weight: 77, maxconn: 300 });
    assert.equal(
      await readFile(join(dir, "s.json"), "utf8"),
      '{"status":"UP","weight":77,"maxconn":300}\n',
    );
    assert.deepEqual(await store.load(), {
      ok: true,
      state: { status: "UP", weight: 77, maxconn: 300 },
    });
    assert.deepEqual(await readdir(dir), ["s.json"], "no temporary file is left");
  });

  for (const mode of [0o600, 0o640, 0o664]) {
    test(`keeps mode ${mode.toString(8)}`, async (t) => {
      const dir = await tempDir(t);
      const file = join(dir, "s.json");
      await writeFile(file, '{"status":"UP"}');
      await chmod(file, mode);
      await createStateStore(file, silentLogger, SELF).save({ status: "DOWN" });
      assert.equal((await stat(file)).mode & 0o7777, mode);
      assert.equal(await readFile(file, "utf8"), '{"status":"DOWN"}\n');
    });
  }

  test("keeps the owner when running as root", {
    skip: !IS_ROOT && "needs root to give files away",
  }, async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, "s.json");
    await writeFile(file, '{"status":"UP"}');
    await chown(file, NOBODY, NOBODY);
    await createStateStore(file, silentLogger, SELF).save({ status: "DOWN" });
    const stats = await stat(file);
    assert.deepEqual([stats.uid, stats.gid], [NOBODY, NOBODY]);
  });

  test("replaces a symlink's target, keeping the link", async (t) => {
    const dir = await tempDir(t);
    await mkdir(join(dir, "real"));
    await writeFile(join(dir, "real", "s.json"), '{"status":"UP"}');
    await symlink("real/s.json", join(dir, "s.json"));
    await createStateStore(join(dir, "s.json"), silentLogger, SELF).save({ status: "DRAIN" });
    assert.ok((await lstat(join(dir, "s.json"))).isSymbolicLink());
    assert.equal(await readlink(join(dir, "s.json")), "real/s.json");
    assert.equal(await readFile(join(dir, "real", "s.json"), "utf8"), '{"status":"DRAIN"}\n');
    assert.deepEqual(await readdir(join(dir, "real")), ["s.json"]);
  });

  test("creates the target of a dangling symlink", async (t) => {
    const dir = await tempDir(t);
    await symlink(join(dir, "target.json"), join(dir, "s.json"));
    await createStateStore(join(dir, "s.json"), silentLogger, SELF).save({ status: "UP" });
    assert.ok((await lstat(join(dir, "s.json"))).isSymbolicLink());
    assert.equal(await readFile(join(dir, "target.json"), "utf8"), '{"status":"UP"}\n');
  });

  test("fails with Node's error when the directory is gone, leaving nothing behind", async (t) => {
    const dir = await tempDir(t);
    const store = createStateStore(join(dir, "gone", "s.json"), silentLogger, SELF);
    await assert.rejects(store.save({ status: "UP" }), { code: "ENOENT" });
    await mkdir(join(dir, "gone"));
    await rm(join(dir, "gone"), { recursive: true });
    await assert.rejects(store.save({ status: "UP" }), { code: "ENOENT" });
  });

  test("removes only its own stale temporaries: not another file's, nor a live process's save", async (t) => {
    const dir = await tempDir(t);
    // A pid no process has (above the kernel's pid_max), and one that lives: this test's parent.
    const gone = 4_194_305;
    const names = [
      ".s.json.tmp-0123456789ab",
      `.s.json.tmp-${gone}-0123456789ab`,
      `.s.json.tmp-${process.pid}-0123456789ab`,
      `.s.json.tmp-${process.ppid}-0123456789ab`,
      ".s.json.tmp-zzz",
      ".other.json.tmp-0123456789ab",
      "s.json",
    ];
    for (const name of names) await writeFile(join(dir, name), "x");
    await createStateStore(
      join(dir, "s.json"),
      createLogger({ write: () => {}, journal: false }),
      SELF,
    ).removeStaleTemporaries();
    assert.deepEqual((await readdir(dir)).sort(), [
      ".other.json.tmp-0123456789ab",
      `.s.json.tmp-${process.ppid}-0123456789ab`,
      ".s.json.tmp-zzz",
      "s.json",
    ]);
  });
});
