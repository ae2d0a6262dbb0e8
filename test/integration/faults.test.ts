/**
 * Faults under the state file, injected into a real daemon: a full file system, a read-only file
 * system, a removed directory. The daemon must keep answering the state it was given, log the
 * failure, and bring the file up to date by itself once the fault is gone.
 *
 * The full and read-only file systems are a small tmpfs mounted in a mount namespace of the
 * daemon's own (unshare), so nothing outside the test sees them; the test reads the file through
 * /proc/PID/root and changes the mount with nsenter. That needs root: without it those tests
 * are skipped, loudly, and fail under CI.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import {
  execOk,
  freePort,
  hapgentArgv,
  missing,
  privateMounts,
  probe,
  startDaemon,
  tempDir,
  waitFor,
  withoutRecord,
} from "../helpers.js";

const SKIP_MOUNTS = missing("fault injection with tmpfs mounts", {
  commands: ["unshare", "nsenter", "mount"],
  root: true,
});

/** A daemon whose state file lives on a tmpfs of `sizeKiB` in its own mount namespace. */
async function startOnTmpfs(
  t: { after: (fn: () => Promise<void>) => void },
  { sizeKiB, state }: { sizeKiB: number; state: string },
) {
  const home = await mkdtemp(join(tmpdir(), "hapgent-fault-"));
  const mnt = join(home, "mnt");
  await mkdir(mnt);
  const seed = join(home, "seed.json");
  await writeFile(seed, state);
  const port = await freePort();
  const child = spawn(
    "unshare",
    privateMounts(
      'mount -t tmpfs -o "size=$1" hapgent-test "$2" && cp "$3" "$2/state.json" && shift 3 && exec "$@"',
      ["sh", `${sizeKiB}k`, mnt, seed, ...hapgentArgv()],
    ),
    {
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HAPGENT_IP: "127.0.0.1",
        HAPGENT_PORT: String(port),
        HAPGENT_STATE_FILE: join(mnt, "state.json"),
        HAPGENT_CONTROL_SOCKET: join(home, "c.sock"),
      },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<void>((resolve) => child.on("close", () => resolve()));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
    await rm(home, { recursive: true, force: true });
  });
  const pid = child.pid ?? 0;
  // The daemon's view of its directory: the tmpfs, not the empty directory under it.
  const inside = `/proc/${pid}/root${mnt}`;
  const daemon = {
    child,
    pid,
    stderr: () => stderr,
    probe: () => probe(port),
    readState: async () => withoutRecord(await readFile(join(inside, "state.json"), "utf8")),
    entries: () => readdir(inside),
    remount: (options: string) =>
      execOk("nsenter", [
        `--target=${pid}`,
        "--mount",
        "--",
        "mount",
        "-o",
        `remount,${options}`,
        mnt,
      ]),
    async waitForLog(pattern: RegExp, timeoutMs = 5000) {
      return waitFor(`log ${pattern}`, () => stderr.match(pattern)?.[0], timeoutMs).catch(
        (err: Error) => {
          throw new Error(`${err.message}; stderr:\n${stderr}`);
        },
      );
    },
    async waitForReply(line: string) {
      await waitFor(`reply ${line}`, async () =>
        (await probe(port).catch(() => "")) === line ? true : undefined,
      );
    },
    async waitForFile(content: string, timeoutMs = 5000) {
      await waitFor(
        `file ${content}`,
        async () => ((await daemon.readState().catch(() => "")) === content ? true : undefined),
        timeoutMs,
      ).catch(async (err: Error) => {
        throw new Error(
          `${err.message}; file ${JSON.stringify(await daemon.readState())}; stderr:\n${stderr}`,
        );
      });
    },
  };
  await daemon.waitForLog(/listening on/);
  return daemon;
}

describe("faults under the state file", () => {
  test("a full file system: the new state is answered, logged, and saved once there is room", {
    skip: SKIP_MOUNTS,
  }, async (t) => {
    // One page, which the state file already fills: the temporary file cannot be written.
    const d = await startOnTmpfs(t, { sizeKiB: 4, state: '{"status":"UP","weight":50}\n' });
    d.child.kill("SIGUSR2");
    await d.waitForReply("down ready 50%\n");
    await d.waitForLog(
      /cannot save state file .*: ENOSPC: .*; still answering \{"status":"DOWN","weight":50\}; trying again in 1 s/,
    );
    assert.equal(await d.readState(), '{"status":"UP","weight":50}\n', "the old file is intact");
    assert.deepEqual(await d.entries(), ["state.json"], "no temporary file left behind");
    assert.equal(await d.probe(), "down ready 50%\n");
    await d.remount("size=64k");
    await d.waitForFile('{"status":"DOWN","weight":50}\n', 10_000);
    await d.waitForLog(
      /saved state file .* after \d+ failed attempts?: \{"status":"DOWN","weight":50\}/,
    );
    assert.equal(d.child.exitCode, null, "still running");
  });

  test("a read-only file system: the same, saved once it is writable again", {
    skip: SKIP_MOUNTS,
  }, async (t) => {
    const d = await startOnTmpfs(t, { sizeKiB: 64, state: '{"status":"UP"}\n' });
    await d.remount("ro");
    d.child.kill("SIGUSR2");
    await d.waitForReply("down ready 100%\n");
    await d.waitForLog(/cannot save state file .*: EROFS: .*; still answering \{"status":"DOWN"\}/);
    assert.equal(await d.readState(), '{"status":"UP"}\n');
    // Signals keep working while the file cannot follow.
    d.child.kill("SIGUSR1");
    await d.waitForReply("up ready 100%\n");
    d.child.kill("SIGUSR2");
    await d.waitForReply("down ready 100%\n");
    await d.remount("rw");
    await d.waitForFile('{"status":"DOWN"}\n', 10_000);
    assert.deepEqual(await d.entries(), ["state.json"]);
  });

  test("a removed directory: saved again once it is back", async (t) => {
    const dir = await tempDir(t);
    await mkdir(join(dir, "sub"));
    const d = await startDaemon(t, { dir: join(dir, "sub"), state: '{"status":"UP"}' });
    await rm(join(dir, "sub"), { recursive: true });
    d.signal("SIGUSR2");
    await d.waitForReply("down ready 100%\n");
    await d.waitForLog(/cannot save state file .*: ENOENT.*; still answering \{"status":"DOWN"\}/);
    await mkdir(join(dir, "sub"));
    await d.waitForFile('{"status":"DOWN"}\n', 10_000);
    await d.waitForLog(/saved state file .* after \d+ failed attempts?/);
  });

  test("HUP while a save waits to be retried reads the file as it is", {
    skip: SKIP_MOUNTS,
  }, async (t) => {
    const d = await startOnTmpfs(t, { sizeKiB: 64, state: '{"status":"UP","weight":9}\n' });
    await d.remount("ro");
    d.child.kill("SIGUSR2");
    await d.waitForLog(/EROFS/);
    d.child.kill("SIGHUP");
    await d.waitForReply("up ready 9%\n");
    await d.waitForLog(
      /SIGHUP: the state file .* was never saved with \{"status":"DOWN","weight":9\}/,
    );
    await d.remount("rw");
    // No retry of the abandoned state: the file stays as the operator left it.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.equal(await d.readState(), '{"status":"UP","weight":9}\n');
  });
});
