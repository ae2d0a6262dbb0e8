/**
 * A state file that cannot be read for a reason other than the file itself: the process has no
 * descriptor left (EMFILE, made real by lowering the running daemon's RLIMIT_NOFILE with
 * prlimit), or the kernel answers the read with EIO (/proc/self/mem at offset 0, behind the state
 * file's symlink). The state is never lost to it: the agent keeps what it answers, changes keep
 * the file's services, and the file is read again as soon as it can be.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import {
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import { type AddressInfo, connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CLI_EXIT } from "../../src/cli/exit.js";
import {
  execOk,
  freePort,
  missing,
  probe,
  runHapgent,
  startDaemon,
  tempDir,
  waitFor,
  withoutRecord,
} from "../helpers.js";

const SKIP_PRLIMIT = missing("descriptors exhausted with prlimit", { commands: ["prlimit"] });

/** A control connection opened now, for requests made once no descriptor can be opened. */
async function controlConnection(t: { after: (fn: () => void) => void }, path: string) {
  const socket = connect(path);
  t.after(() => socket.destroy());
  await once(socket, "connect");
  socket.setEncoding("utf8");
  let buffered = "";
  const waiting: ((line: string) => void)[] = [];
  socket.on("data", (chunk: string) => {
    buffered += chunk;
    for (let end = buffered.indexOf("\n"); end >= 0; end = buffered.indexOf("\n")) {
      waiting.shift()?.(buffered.slice(0, end));
      buffered = buffered.slice(end + 1);
    }
  });
  // biome-ignore lint/suspicious/noExplicitAny: a reply as JSON.parse gives it, read by the test
  const ask = (request: object): Promise<any> =>
    new Promise((resolve) => {
      waiting.push((line) => resolve(JSON.parse(line)));
      socket.write(`${JSON.stringify(request)}\n`);
    });
  // Answered: the daemon has accepted the connection (connect() alone says the kernel has).
  assert.equal((await ask({ op: "status" })).ok, true);
  return { ask };
}

/**
 * Lowers the process's soft limit on descriptors to its lowest free descriptor: its next open(),
 * accept() or socket() fails with EMFILE, as under a flood of clients. A descriptor open at the
 * first look (a check's socket, a pipe) may close just after it and leave a slot free below the
 * limit: the limit is lowered again until a second look a while later finds none. Returns the
 * way back.
 */
async function exhaustDescriptors(pid: number): Promise<() => Promise<void>> {
  const limits = await readFile(`/proc/${pid}/limits`, "utf8");
  const [, soft, hard] = /^Max open files\s+(\d+)\s+(\d+)/m.exec(limits) ?? [];
  assert.ok(soft && hard, limits);
  const lowestFree = async () => {
    const open = new Set((await readdir(`/proc/${pid}/fd`)).map(Number));
    let lowest = 0;
    while (open.has(lowest)) lowest++;
    return lowest;
  };
  let limit = await lowestFree();
  await execOk("prlimit", [`--pid=${pid}`, `--nofile=${limit}:${hard}`]);
  for (let settled = 0; settled < 3; ) {
    await sleep(100);
    const free = await lowestFree();
    if (free >= limit) {
      settled++;
      continue;
    }
    limit = free;
    settled = 0;
    await execOk("prlimit", [`--pid=${pid}`, `--nofile=${limit}:${hard}`]);
  }
  let restored = false;
  return async () => {
    if (restored) return;
    restored = true;
    await execOk("prlimit", [`--pid=${pid}`, `--nofile=${soft}:${hard}`]);
  };
}

/** Replaces the state file at once (rename), with `content` or a symlink to `target`. */
async function replaceFile(path: string, with_: { content: string } | { target: string }) {
  const temporary = `${path}.new`;
  if ("content" in with_) await writeFile(temporary, with_.content);
  else await symlink(with_.target, temporary);
  await rename(temporary, path);
}

describe("a state file that cannot be read for a moment", { skip: SKIP_PRLIMIT }, () => {
  test("a HUP that meets EMFILE keeps the state, and the file is read once descriptors are back", async (t) => {
    const dir = await tempDir(t);
    const socket = join(dir, "control.sock");
    const d = await startDaemon(t, {
      state: '{"status":"DRAIN","weight":40}',
      env: { HAPGENT_CONTROL_SOCKET: socket },
    });
    const control = await controlConnection(t, socket);
    const restore = await exhaustDescriptors(d.pid);
    t.after(restore);
    // An edit the agent is asked to read while it cannot open anything.
    await writeFile(d.stateFile, '{"status":"UP","weight":60}');
    d.signal("SIGHUP");
    await d.waitForLog(/SIGHUP: state file .*EMFILE.*/);
    const during = await control.ask({ op: "status" });
    assert.deepEqual(during.state, { status: "DRAIN", weight: 40 }, d.stderr());
    // A few attempts (0.1 s, then 0.2 s apart) fail meanwhile; the log says it once.
    await sleep(500);
    await restore();
    await d.waitForReply("up ready 60%\n", 10_000);
    const failures = d.stderr().match(/SIGHUP: state file .*EMFILE.*/g) ?? [];
    assert.equal(failures.length, 1, d.stderr());
    assert.match(failures[0] ?? "", /keeping state \{"status":"DRAIN","weight":40\}/);
    assert.match(d.stderr(), /SIGHUP: read the state file .* after \d+ failed attempts/);
    assert.doesNotMatch(d.stderr(), /MAINT/);
  });

  test("a change made during EMFILE keeps the file's services, and is saved once it can be", async (t) => {
    const dir = await tempDir(t);
    const socket = join(dir, "control.sock");
    const d = await startDaemon(t, {
      state: '{"status":"UP","services":{"web":{"status":"DRAIN"}}}',
      env: { HAPGENT_CONTROL_SOCKET: socket },
    });
    const control = await controlConnection(t, socket);
    const restore = await exhaustDescriptors(d.pid);
    t.after(restore);
    const reply = await control.ask({ op: "change", status: "UP", weight: 50 });
    assert.equal(reply.ok, true, JSON.stringify(reply));
    assert.deepEqual(
      JSON.parse(withoutRecord(JSON.stringify(reply.state))),
      { status: "UP", weight: 50, services: { web: { status: "DRAIN" } } },
      d.stderr(),
    );
    assert.equal(reply.replaced, null, "the file was not invalid");
    assert.match(reply.unsaved ?? "", /EMFILE/, "no temporary file can be made either");
    await restore();
    await waitFor("the change saved", async () => {
      const file = JSON.parse(await d.readState());
      return file.weight === 50 ? file : undefined;
    }).then((file) =>
      assert.deepEqual(file, { status: "UP", weight: 50, services: { web: { status: "DRAIN" } } }),
    );
    assert.equal(await d.probe({ payload: "web\n" }), "up drain 100%\n");
  });
});

describe("a state file whose read fails with EIO", () => {
  test("at start-up the agent waits, then answers MAINT until it reads; a HUP keeps the state", async (t) => {
    const home = await mkdtemp(join(tmpdir(), "hapgent-eio-"));
    const stateFile = join(home, "state.json");
    // Reading /proc/self/mem at offset 0 fails with EIO: a real read error of the kernel's.
    await symlink("/proc/self/mem", stateFile);
    const d = await startDaemon(t, { dir: home, state: null, ready: false });
    t.after(() => rm(home, { recursive: true, force: true }));
    await d.waitForLog(/start-up: state file .*EIO.*/);
    // It does not answer MAINT for a moment's fault: not listening, HAProxy's view stays.
    await assert.rejects(d.probe(), { code: "ECONNREFUSED" });
    await d.waitForLog(/could not be read within 5 s; answering \{"status":"MAINT"\}/, 15_000);
    await d.waitForLog(/listening on/);
    assert.equal(await d.probe(), "maint 100%\n");
    // The file can be read: the agent switches to it by itself.
    await replaceFile(stateFile, { content: '{"status":"DRAIN","weight":30}' });
    await d.waitForReply("up drain 30%\n", 10_000);
    assert.match(d.stderr(), /start-up: read the state file .* after \d+ failed attempts?/);

    await replaceFile(stateFile, { target: "/proc/self/mem" });
    d.signal("SIGHUP");
    await d.waitForLog(/SIGHUP: state file .*EIO.*/);
    assert.equal(await d.probe(), "up drain 30%\n");
    await replaceFile(stateFile, { content: '{"status":"UP"}' });
    await d.waitForReply("up ready 100%\n", 10_000);
  });
});

describe("a fleet cache whose read fails with EIO for a moment", () => {
  test("is read again at start-up, and its word followed while etcd is unreachable", async (t) => {
    const home = await mkdtemp(join(tmpdir(), "hapgent-eio-"));
    const cacheFile = join(home, "state.fleet.json");
    const key = "/hapgent/host/h1";
    await symlink("/proc/self/mem", cacheFile);
    // Nothing listens there: the cache is all the agent has of the fleet's word.
    const endpoint = `http://127.0.0.1:${await freePort()}`;
    const d = await startDaemon(t, {
      dir: home,
      ready: false,
      env: { HAPGENT_ETCD_ENDPOINTS: endpoint, HAPGENT_ETCD_KEYS: key },
    });
    // Added after startDaemon's: after-hooks run in the order they were added, and the
    // directory is removed only once the daemon, which writes there, is gone.
    t.after(() => rm(home, { recursive: true, force: true }));
    await d.waitForLog(/fleet: the cache .*EIO.*; trying again/);
    await replaceFile(cacheFile, {
      content: JSON.stringify({
        format: 1,
        keys: [key],
        heardAt: new Date().toISOString(),
        word: { key, revision: 7, state: { status: "DRAIN", reason: "zone b" } },
      }),
    });
    await d.waitForLog(/fleet: read the cache .* after \d+ failed attempts?/);
    await d.waitForLog(/following the cached word until etcd answers: \/hapgent\/host\/h1/);
    await d.waitForLog(/listening on/);
    assert.equal(await d.probe(), "up drain 100% # fleet /hapgent/host/h1: zone b\n");
    assert.doesNotMatch(d.stderr(), /not used/);
  });
});

describe("a state file that keeps failing to read (EIO)", () => {
  test("a HUP holds the commands behind it 3 s at most; a change then keeps the services", async (t) => {
    const dir = await tempDir(t);
    const socket = join(dir, "control.sock");
    const d = await startDaemon(t, {
      state: '{"status":"UP","services":{"web":{"status":"DRAIN"}}}',
      env: { HAPGENT_CONTROL_SOCKET: socket },
    });
    await replaceFile(d.stateFile, { target: "/proc/self/mem" });
    d.signal("SIGHUP");
    await d.waitForLog(/SIGHUP: state file .*EIO.*reading it again/);
    // The operator's change, through the command line with its default timeout (5 s): it is
    // applied to the state answered once the HUP gave way, services kept. Its save, beside where
    // the link leads (/proc), fails and is retried.
    const began = Date.now();
    const down = await runHapgent(["up", "--weight", "50", "--no-confirm"], {
      HAPGENT_STATE_FILE: d.stateFile,
      HAPGENT_CONTROL_SOCKET: socket,
      HAPGENT_PORT: String(d.port),
    });
    assert.equal(down.code, CLI_EXIT.CANNOT_WRITE, `${down.stderr}\n${d.stderr()}`);
    assert.match(down.stderr, /answers the new state but cannot save .*; it keeps trying/);
    assert.ok(Date.now() - began < 5000, `answered after ${Date.now() - began} ms`);
    assert.match(
      d.stderr(),
      /SIGHUP: state file .*EIO.*: keeping state .*the commands behind go on/,
    );
    assert.equal(await d.probe({ payload: "web\n" }), "up drain 100%\n");
    // The file comes back as a file: the save retried lands there, and the HUP's read in the
    // background does not undo the change with what the file held.
    await replaceFile(d.stateFile, { content: '{"status":"MAINT"}' });
    await waitFor("the change saved", async () => {
      const file = JSON.parse(await d.readState());
      return file.weight === 50 ? file : undefined;
    }).then((file) =>
      assert.deepEqual(file, { status: "UP", weight: 50, services: { web: { status: "DRAIN" } } }),
    );
    await sleep(6000);
    assert.equal(await d.probe({ payload: "web\n" }), "up drain 100%\n", d.stderr());
    // A signal after it is not held either.
    d.signal("SIGUSR2");
    await d.waitForReply("down ready 50%\n", 5000);
  });

  test("before anything was read, a change is refused (exit 5) and the file left as it is", async (t) => {
    const home = await mkdtemp(join(tmpdir(), "hapgent-eio-"));
    const stateFile = join(home, "state.json");
    await symlink("/proc/self/mem", stateFile);
    const socket = join(home, "control.sock");
    const d = await startDaemon(t, {
      dir: home,
      state: null,
      ready: false,
      env: { HAPGENT_CONTROL_SOCKET: socket },
    });
    // After startDaemon's hook: the daemon, which writes there, is gone first.
    t.after(() => rm(home, { recursive: true, force: true }));
    await d.waitForLog(/listening on/, 15_000);
    // Past the start-up's hold: the read goes on in the background, the queue is free.
    await d.waitForLog(
      /start-up: state file .*EIO.*: answering MAINT; the commands behind go on/,
      15_000,
    );
    const up = await runHapgent(["up", "--weight", "50", "--no-confirm", "--timeout", "15"], {
      HAPGENT_STATE_FILE: stateFile,
      HAPGENT_CONTROL_SOCKET: socket,
      HAPGENT_PORT: String(d.port),
    });
    assert.equal(up.code, CLI_EXIT.CANNOT_WRITE, `${up.stderr}\n${d.stderr()}`);
    assert.match(up.stderr, /EIO.*no state read before can stand in for it: nothing was changed/);
    assert.equal(await readlink(stateFile), "/proc/self/mem");
    assert.equal(await d.probe(), "maint 100%\n");
  });
});

/** A checks file of checks that run a program once an hour: nothing runs during the test. */
function checksOf(...names: string[]): string {
  return JSON.stringify({
    checks: names.map((name) => ({ name, exec: ["/bin/true"], interval: "1h" })),
  });
}

describe("a checks file that cannot be read for a moment", { skip: SKIP_PRLIMIT }, () => {
  test("a HUP that meets EMFILE keeps the checks running, and the file is read once descriptors are back", async (t) => {
    const dir = await tempDir(t);
    const socket = join(dir, "control.sock");
    const checksFile = join(dir, "checks.json");
    await writeFile(checksFile, checksOf("one"), { mode: 0o644 });
    const d = await startDaemon(t, {
      state: '{"status":"UP","weight":40}',
      env: { HAPGENT_CONTROL_SOCKET: socket, HAPGENT_CHECKS_FILE: checksFile },
    });
    await d.waitForLog(/start-up: loaded checks file .*: 1 check \(one\)/);
    const control = await controlConnection(t, socket);
    // The check's first run is over, its process and pipes gone: no descriptor it holds comes
    // free once the limit is down, which would let the file be read after all.
    await waitFor("the check's first run", async () => {
      const status = await control.ask({ op: "status" });
      return status.checks[0]?.runs >= 1 ? true : undefined;
    });
    const restore = await exhaustDescriptors(d.pid);
    t.after(restore);
    await writeFile(checksFile, checksOf("one", "two"));
    d.signal("SIGHUP");
    await d.waitForLog(/SIGHUP: checks file .*EMFILE.*/);
    const during = await control.ask({ op: "status" });
    assert.equal(during.checksProblem, null, d.stderr());
    assert.deepEqual(
      during.checks.map((check: { name: string }) => check.name),
      ["one"],
      d.stderr(),
    );
    await sleep(500);
    await restore();
    await d.waitForLog(/SIGHUP: loaded checks file .*: 2 checks \(one, two\)/, 10_000);
    const failures = d.stderr().match(/SIGHUP: checks file .*EMFILE.*/g) ?? [];
    assert.equal(failures.length, 1, d.stderr());
    assert.match(failures[0] ?? "", /keeping its checks running/);
    assert.match(d.stderr(), /SIGHUP: read the checks file .* after \d+ failed attempts/);
    assert.doesNotMatch(d.stderr(), /MAINT/);
    // Not a probe: the new check's first run may have met the limit, if the file was read as a
    // descriptor came free.
    const after = await control.ask({ op: "status" });
    assert.equal(after.checksProblem, null, d.stderr());
    assert.deepEqual(
      after.checks.map((check: { name: string }) => check.name),
      ["one", "two"],
    );
  });
});

describe("checks that cannot run for a moment", { skip: SKIP_PRLIMIT }, () => {
  test("a check the agent cannot start for EMFILE keeps its verdict, and runs once it can", async (t) => {
    const dir = await tempDir(t);
    const socket = join(dir, "control.sock");
    const checksFile = join(dir, "checks.json");
    // A listener the tcp check reaches, in this process: it needs no descriptor of the agent's.
    const server = createServer((client) => client.destroy());
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    t.after(() => server.close());
    const { port } = server.address() as AddressInfo;
    const checks = [
      { name: "cmd", exec: ["/bin/true"], interval: "1s", fall: 1 },
      { name: "port", tcp: `127.0.0.1:${port}`, interval: "200ms", fall: 1 },
    ];
    await writeFile(checksFile, JSON.stringify({ checks }), { mode: 0o644 });
    const d = await startDaemon(t, {
      state: '{"status":"UP"}',
      env: { HAPGENT_CONTROL_SOCKET: socket, HAPGENT_CHECKS_FILE: checksFile },
    });
    const control = await controlConnection(t, socket);
    const runs = async () =>
      Object.fromEntries(
        (await control.ask({ op: "status" })).checks.map((c: { name: string; runs: number }) => [
          c.name,
          c.runs,
        ]),
      );
    await waitFor("both checks' first runs", async () => {
      const now = await runs();
      return now.cmd >= 1 && now.port >= 1 ? true : undefined;
    });
    const restore = await exhaustDescriptors(d.pid);
    t.after(restore);
    // No process, pipe or socket can be made: neither check runs, and neither fails.
    await d.waitForLog(
      /check cmd: not run: EMFILE; its verdict stands until it runs, for 30 s at most/,
      10_000,
    );
    await d.waitForLog(
      /check port: not run: EMFILE; its verdict stands until it runs, for 30 s at most/,
      10_000,
    );
    // Several more runs of each (every 200 ms and 1 s), none made, none counted.
    const lastRuns = async () =>
      Object.fromEntries(
        (await control.ask({ op: "status" })).checks.map(
          (c: { name: string; last: { atMs: number } }) => [c.name, c.last.atMs],
        ),
      );
    const first = await lastRuns();
    await waitFor(
      "more runs of both checks",
      async () => {
        const now = await lastRuns();
        return now.port >= first.port + 800 && now.cmd >= first.cmd + 2000 ? true : undefined;
      },
      15_000,
    );
    const during = await control.ask({ op: "status" });
    for (const check of during.checks) {
      assert.equal(check.passing, true, JSON.stringify(check));
      assert.equal(check.verdict, undefined, JSON.stringify(check));
      assert.equal(check.fails, 0, JSON.stringify(check));
      assert.equal(check.last.detail, "not run: EMFILE", JSON.stringify(check));
    }
    assert.doesNotMatch(d.stderr(), /failing/);
    const before = await runs();
    await restore();
    await d.waitForLog(/check cmd: runs again: exit 0/, 10_000);
    await d.waitForLog(/check port: runs again: tcp 127\.0\.0\.1:\d+: connected/, 10_000);
    await waitFor("both checks to run again", async () => {
      const now = await runs();
      return now.cmd > before.cmd && now.port > before.port ? true : undefined;
    });
    // Logged once a streak, not once a run.
    assert.equal(d.stderr().match(/check port: not run: EMFILE/g)?.length, 1, d.stderr());
    assert.equal(await probe(d.port), "up ready 100%\n");
  });
});

describe("a checks file whose read fails with EIO", () => {
  test("at start-up the agent waits, then answers MAINT until it reads; a HUP keeps the checks", async (t) => {
    const dir = await tempDir(t);
    const checksFile = join(dir, "checks.json");
    // Reading /proc/self/mem at offset 0 fails with EIO: a real read error of the kernel's.
    await symlink("/proc/self/mem", checksFile);
    const d = await startDaemon(t, {
      state: '{"status":"UP"}',
      env: { HAPGENT_CHECKS_FILE: checksFile },
      ready: false,
    });
    await d.waitForLog(/start-up: checks file .*EIO.*/);
    // It does not answer MAINT for a moment's fault: not listening, HAProxy's view stays.
    await assert.rejects(d.probe(), { code: "ECONNREFUSED" });
    await d.waitForLog(/checks file .* could not be read within 5 s; answering MAINT/, 15_000);
    await d.waitForLog(/listening on/);
    assert.equal(await d.probe(), "maint 100% # hapgent: the checks file is invalid\n");
    // The file can be read: the agent switches to it by itself.
    await replaceFile(checksFile, { content: checksOf("one") });
    await d.waitForReply("up ready 100%\n", 10_000);
    assert.match(d.stderr(), /start-up: read the checks file .* after \d+ failed attempts?/);
    assert.match(d.stderr(), /start-up: loaded checks file .*: 1 check \(one\)/);

    await replaceFile(checksFile, { target: "/proc/self/mem" });
    d.signal("SIGHUP");
    await d.waitForLog(/SIGHUP: checks file .*EIO.*keeping its checks running/);
    assert.equal(await d.probe(), "up ready 100%\n");
    await replaceFile(checksFile, { content: checksOf("one", "two") });
    await d.waitForLog(/SIGHUP: loaded checks file .*: 2 checks \(one, two\)/, 10_000);
    assert.equal(await d.probe(), "up ready 100%\n");
  });
});

const SKIP_LEASE = missing("a file held under a kernel lease", { commands: ["perl"] });

/**
 * Takes a write lease on `path` (fcntl F_SETLEASE) in a perl process: until the lease holder lets
 * go, or the kernel breaks the lease after /proc/sys/fs/lease-break-time (45 s by default), an
 * open() with O_NONBLOCK fails with EAGAIN, as when Samba holds the file under an oplock. The
 * holder ignores the SIGIO that tells it of the break. Returns the way to let go.
 */
async function leaseFile(
  t: { after: (fn: () => void) => void },
  path: string,
): Promise<() => Promise<void>> {
  const holder = spawn(
    "perl",
    [
      "-e",
      'use Fcntl; $SIG{IO} = "IGNORE"; open(my $f, "+<", $ARGV[0]) or die "open: $!"; fcntl($f, 1024, F_WRLCK) or die "F_SETLEASE: $!"; $| = 1; print "leased\\n"; <STDIN>;',
      path,
    ],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  t.after(() => holder.kill());
  const [line] = (await once(holder.stdout, "data")) as [Buffer];
  assert.equal(line.toString(), "leased\n");
  return async () => {
    holder.stdin.end();
    await once(holder, "exit");
  };
}

describe("a command that writes the state file itself", { skip: SKIP_LEASE }, () => {
  test("when the file cannot be opened for a moment (EAGAIN) it writes nothing and exits 5", async (t) => {
    const dir = await tempDir(t);
    const stateFile = join(dir, "state.json");
    const content = '{"status":"UP","services":{"web":{"status":"DRAIN"}}}\n';
    await writeFile(stateFile, content);
    // No agent serves the file and no control socket answers: the command writes it itself.
    const env = {
      HAPGENT_STATE_FILE: stateFile,
      HAPGENT_CONTROL_SOCKET: join(dir, "control.sock"),
    };
    const letGo = await leaseFile(t, stateFile);
    const refused = await runHapgent(["up", "--weight", "50"], env);
    assert.equal(refused.code, CLI_EXIT.CANNOT_WRITE, refused.stderr);
    assert.match(
      refused.stderr,
      /^hapgent: the state file .*state\.json cannot be read: EAGAIN.*, a fault of the moment, not of the file; nothing was written: try again$/m,
    );
    assert.doesNotMatch(refused.stderr, /invalid|replac/);
    assert.equal(refused.stdout, "");
    // Read once the lease is gone: a blocking open() would wait out the lease-break time.
    await letGo();
    assert.equal(await readFile(stateFile, "utf8"), content);

    const done = await runHapgent(["up", "--weight", "50"], env);
    assert.equal(done.code, CLI_EXIT.NO_AGENT, done.stderr);
    assert.deepEqual(JSON.parse(withoutRecord(await readFile(stateFile, "utf8"))), {
      status: "UP",
      weight: 50,
      services: { web: { status: "DRAIN" } },
    });
  });
});
