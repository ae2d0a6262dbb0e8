/**
 * What other local users can make root's `hapgent` command do, tried with real users (created
 * here with useradd) against real daemons: a fake daemon naming a root file, a symlink swapped
 * under root's feet, the service account pointing its state file at a root file, a fake daemon
 * claiming the real one's file. Each must fail to harm; the legitimate uses keep working. Root
 * is needed to create users and act as them: without it the file is skipped, loudly, and fails
 * under CI.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { chmod, chown, lstat, mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { CLI_EXIT } from "../../src/cli/exit.js";
import {
  collect,
  type Finished,
  freePort,
  hapgentArgv,
  hapgentArgvForOthers,
  missing,
  privateMounts,
  reachableCopy,
  runHapgent,
  startDaemon,
  tempDir,
  waitFor,
  withoutRecord,
} from "../helpers.js";
import { createUser, type User } from "../users.js";

const SKIP = missing("attacks by other local users", {
  commands: ["useradd", "userdel", "unshare", "nsenter", "getent"],
  root: true,
});

const SECRET = "root:secret:do-not-touch\n";
const PATH = process.env.PATH ?? "/usr/bin:/bin";

/** A root-only file, as /etc/shadow is: its content, mode and owner must never change. */
async function rootFile(dir: string): Promise<{ path: string; intact: () => Promise<void> }> {
  const path = join(dir, "secret");
  await writeFile(path, SECRET, { mode: 0o600 });
  return {
    path,
    async intact() {
      assert.equal(await readFile(path, "utf8"), SECRET, "the root file is unchanged");
      const stats = await lstat(path);
      assert.deepEqual([stats.uid, stats.mode & 0o7777], [0, 0o600]);
    },
  };
}

/** A directory owned by `user`, inside a directory everyone may search. */
async function dirOf(base: string, user: User, name: string): Promise<string> {
  const dir = join(base, name);
  await mkdir(dir);
  await chown(dir, user.uid, user.gid);
  await chmod(dir, 0o755);
  return dir;
}

/** Runs a hapgent command as `user`. */
async function runAs(user: User, args: string[], env: Record<string, string>): Promise<Finished> {
  const [file, ...rest] = await hapgentArgvForOthers(args);
  return collect(
    spawn(file, rest, {
      env: { PATH, ...env },
      uid: user.uid,
      gid: user.gid,
      cwd: "/",
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
}

/** Runs a line of Node (with `fs`) as `user`. */
async function scriptAs(user: User, code: string): Promise<Finished> {
  const { node } = await reachableCopy();
  return collect(
    spawn(node, ["-e", `const fs = require("node:fs"); ${code}`], {
      uid: user.uid,
      gid: user.gid,
      cwd: "/",
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
}

/** Swaps `path` between a valid state file and a symlink to `target` until stopped, as `user`. */
async function swapper(user: User, path: string, target: string): Promise<() => Promise<void>> {
  const { node } = await reachableCopy();
  const script = `
    const fs = require("node:fs");
    const path = ${JSON.stringify(path)}, target = ${JSON.stringify(target)};
    const file = path + ".file", link = path + ".link";
    for (let i = 0; ; i++) {
      try {
        fs.writeFileSync(file, '{"status":"UP","description":"' + target + '"}');
        fs.renameSync(file, path);
        fs.rmSync(link, { force: true });
        fs.symlinkSync(target, link);
        fs.renameSync(link, path);
      } catch {}
    }`;
  const child = spawn(node, ["-e", script], { uid: user.uid, gid: user.gid, stdio: "ignore" });
  return async () => {
    child.kill("SIGKILL");
    await new Promise((resolve) => child.on("close", resolve));
  };
}

describe("attacks by other local users", { skip: SKIP }, () => {
  // One set of users for the file: useradd takes a lock of its own, so tests share them.
  const attacker = SKIP ? undefined : createUser({ after }, "atk");
  const service = SKIP ? undefined : createUser({ after }, "svc");
  const operator = SKIP ? undefined : createUser({ after }, "ops");
  const users = () => ({
    attacker: attacker as User,
    service: service as User,
    operator: operator as User,
  });

  test("a fake daemon of another user never names the file root's command reads or writes", async (t) => {
    const { attacker } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const secret = await rootFile(base);
    const ns = await pidNamespace(t);
    // Any process can take the name hapgent; this one is hapgent itself, run by the attacker.
    const fake = await ns.start(await hapgentArgvForOthers(), {
      user: attacker,
      env: {
        HAPGENT_STATE_FILE: secret.path,
        HAPGENT_PORT: String(await freePort()),
        HAPGENT_CONTROL_SOCKET: join(await dirOf(base, attacker, "sock"), "c.sock"),
      },
    });
    await fake.listening;

    // Alone, it names nothing: root's status looks at the default file, and shows no byte of it.
    const status = await ns.run(hapgentArgv(["status", "--json"]), { env: {} });
    assert.equal(JSON.parse(status.stdout).stateFile, "/etc/hapgent/state.json", status.stderr);
    assert.doesNotMatch(status.stdout + status.stderr, /secret/);

    // Beside root's own daemon, root's command drives that one.
    const rootDir = join(base, "r");
    await mkdir(rootDir);
    await writeFile(join(rootDir, "state.json"), '{"status":"UP"}');
    const real = await ns.start(hapgentArgv(), {
      env: {
        HAPGENT_STATE_FILE: join(rootDir, "state.json"),
        HAPGENT_PORT: String(await freePort()),
        HAPGENT_CONTROL_SOCKET: join(rootDir, "c.sock"),
      },
    });
    await real.listening;
    const up = await ns.run(hapgentArgv(["down"]), { env: {} });
    assert.equal(up.code, CLI_EXIT.OK, up.stderr);
    assert.equal(
      withoutRecord(await readFile(join(rootDir, "state.json"), "utf8")),
      '{"status":"DOWN"}\n',
    );
    await secret.intact();
  });

  test("no daemon and no file named: root's command finds the package's file and acts as its user", async (t) => {
    const { service } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    // The package's layout, in the namespace only: /var/lib/hapgent, the service user's, and no
    // /etc/hapgent/state.json (this host has none).
    const varLib = join(base, "var-lib");
    await mkdir(varLib, { mode: 0o755 });
    const dir = await dirOf(varLib, service, "hapgent");
    await writeFile(join(dir, "state.json"), '{"status":"UP"}');
    await chown(join(dir, "state.json"), service.uid, service.gid);
    const ns = await pidNamespace(t);
    const mounted = await ns.run(["mount", "--bind", varLib, "/var/lib"], { env: {} });
    assert.equal(mounted.code, 0, mounted.stderr);

    const status = await ns.run(hapgentArgv(["status", "--json"]), { env: {} });
    assert.equal(JSON.parse(status.stdout).stateFile, "/var/lib/hapgent/state.json", status.stderr);
    const down = await ns.run(hapgentArgv(["down"]), { env: {} });
    assert.equal(down.code, CLI_EXIT.NO_AGENT, down.stderr);
    assert.equal(
      withoutRecord(await readFile(join(dir, "state.json"), "utf8")),
      '{"status":"DOWN"}\n',
    );
    const saved = await lstat(join(dir, "state.json"));
    assert.deepEqual(
      [saved.uid, saved.gid],
      [service.uid, service.gid],
      "written as the service user",
    );
  });

  test("root acts on a file in another user's directory as that user: a swapped symlink never reaches root's file", async (t) => {
    const { attacker } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const secret = await rootFile(base);
    const dir = await dirOf(base, attacker, "a");
    const stateFile = join(dir, "state.json");
    const stop = await swapper(attacker, stateFile, secret.path);
    try {
      const codes = new Set<number | null>();
      for (let i = 0; i < 40; i++) {
        const args = i % 2 === 0 ? ["up", "--no-wait"] : ["status"];
        const result = await runHapgent([...args, "--state-file", stateFile], {
          HAPGENT_PORT: "1",
        });
        codes.add(result.code);
        assert.doesNotMatch(result.stdout + result.stderr, /root:secret/);
        assert.doesNotMatch(result.stderr, /\n\s+at /);
      }
      // Written as the attacker (the file existed), or refused as the attacker (the link did).
      assert.ok(codes.has(CLI_EXIT.NO_AGENT), `exit codes ${[...codes]}`);
    } finally {
      await stop();
    }
    await secret.intact();
    const left = await lstat(stateFile);
    if (left.isFile()) assert.equal(left.uid, attacker.uid, "root wrote it as the attacker");
  });

  test("the service account cannot make root write through its directory; root still drives its daemon", async (t) => {
    const { service } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const secret = await rootFile(base);
    // As the package installs it: /var/lib/hapgent belongs to the service user.
    const dir = await dirOf(base, service, "var-lib-hapgent");
    const stateFile = join(dir, "state.json");
    await writeFile(stateFile, '{"status":"UP"}');
    await chown(stateFile, service.uid, service.gid);
    const d = await startDaemon(t, {
      dir,
      state: null,
      user: service,
      env: { HAPGENT_STATE_FILE: stateFile },
    });

    const down = await runHapgent(["down", "--state-file", stateFile], {
      HAPGENT_PORT: String(d.port),
    });
    assert.equal(down.code, CLI_EXIT.OK, down.stderr);
    assert.equal(await d.probe(), "down ready 100%\n");
    const saved = await lstat(stateFile);
    assert.deepEqual([saved.uid, saved.gid], [service.uid, service.gid]);

    // The service account points its state file at a root file.
    const link = join(dir, "link");
    const replaced = await scriptAs(
      service,
      `fs.symlinkSync(${JSON.stringify(secret.path)}, ${JSON.stringify(link)}); fs.renameSync(${JSON.stringify(link)}, ${JSON.stringify(stateFile)});`,
    );
    assert.equal(replaced.code, 0, replaced.stderr);
    assert.ok((await lstat(stateFile)).isSymbolicLink());
    const up = await runHapgent(["up", "--state-file", stateFile], {
      HAPGENT_PORT: String(d.port),
    });
    assert.equal(up.code, CLI_EXIT.CANNOT_WRITE, up.stderr);
    // Written by the daemon through its socket, or by the command acting as the service user:
    // either way as the service user, who cannot write root's file.
    assert.match(up.stderr, /cannot (write|save) .*state\.json: EACCES/);
    const status = await runHapgent(["status", "--state-file", stateFile], {
      HAPGENT_PORT: String(d.port),
    });
    assert.match(status.stdout, /INVALID: cannot be read: permission denied/);
    assert.doesNotMatch(status.stdout, /root:secret/);
    await secret.intact();
  });

  test("a fake daemon claiming the real one's file neither blocks nor misleads root's command", async (t) => {
    const { attacker, service } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const dir = await dirOf(base, service, "etc-hapgent");
    const stateFile = join(dir, "state.json");
    await writeFile(stateFile, '{"status":"UP"}', { mode: 0o644 });
    await chown(stateFile, service.uid, service.gid);
    const real = await startDaemon(t, {
      dir,
      state: null,
      user: service,
      env: { HAPGENT_STATE_FILE: stateFile },
    });
    const fake = await startDaemon(t, {
      dir: base,
      state: null,
      user: attacker,
      env: { HAPGENT_STATE_FILE: stateFile },
    });
    const down = await runHapgent(["down", "--state-file", stateFile], {
      HAPGENT_PORT: String(real.port),
    });
    assert.equal(down.code, CLI_EXIT.OK, down.stderr);
    assert.match(down.stdout, new RegExp(`hapgent pid ${real.pid} answers: down ready 100%`));
    const status = await runHapgent(["status", "--state-file", stateFile], {});
    assert.match(
      status.stdout,
      new RegExp(`agent       hapgent pid ${real.pid} at 127\\.0\\.0\\.1:${real.port}`),
    );
    assert.match(
      status.stdout,
      new RegExp(
        `note        hapgent pid ${fake.pid} \\(uid ${attacker.uid} \\(${attacker.name}\\)\\) was not asked which file it serves: it runs as a user who cannot change this one`,
      ),
    );
  });

  test("a claimant who owns the file cannot block root's command to root's daemon", async (t) => {
    const { attacker } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    // Root's directory; the file belongs to the attacker, who may write it but not replace it.
    const dir = join(base, "r");
    await mkdir(dir);
    const stateFile = join(dir, "state.json");
    await writeFile(stateFile, '{"status":"UP"}', { mode: 0o644 });
    await chown(stateFile, attacker.uid, attacker.gid);
    const real = await startDaemon(t, { dir, state: null, env: { HAPGENT_STATE_FILE: stateFile } });
    const fake = await startDaemon(t, {
      dir: base,
      state: null,
      user: attacker,
      env: { HAPGENT_STATE_FILE: stateFile },
    });
    const down = await runHapgent(["down", "--state-file", stateFile], {
      HAPGENT_PORT: String(real.port),
    });
    assert.equal(down.code, CLI_EXIT.OK, down.stderr);
    assert.match(down.stdout, new RegExp(`hapgent pid ${real.pid} answers: down ready 100%`));
    const status = await runHapgent(["status", "--state-file", stateFile], {});
    assert.match(
      status.stdout,
      new RegExp(`note        ignored hapgent pid ${fake.pid} .*: it serves this file too`),
    );
  });

  test("an operator drives their own daemon; another user's directory is refused for changes", async (t) => {
    const { operator, service } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const mine = await dirOf(base, operator, "ops");
    const stateFile = join(mine, "state.json");
    const d = await startDaemon(t, {
      dir: mine,
      state: null,
      user: operator,
      env: { HAPGENT_STATE_FILE: stateFile },
    });
    const env = { HAPGENT_STATE_FILE: stateFile, HAPGENT_PORT: String(d.port) };
    const drain = await runAs(operator, ["drain"], env);
    assert.equal(drain.code, CLI_EXIT.OK, drain.stderr);
    assert.equal(await d.probe(), "up drain 100%\n");

    const theirs = await dirOf(base, service, "svc");
    await writeFile(join(theirs, "state.json"), '{"status":"UP"}', { mode: 0o644 });
    // Reading needs only read access: the operator reads it with no more rights than their own.
    const status = await runAs(operator, ["status", "--state-file", join(theirs, "state.json")], {
      HAPGENT_PORT: String(await freePort()),
    });
    assert.equal(status.code, CLI_EXIT.NO_AGENT, status.stderr);
    assert.match(status.stdout, /^state file {2}.*svc\/state\.json: \{"status":"UP"\}$/m);
    const check = await runAs(operator, ["check", join(theirs, "state.json")], {});
    assert.equal(check.code, CLI_EXIT.OK, check.stderr);
    // A link there to a file the operator may not read stays unread.
    const secret = await rootFile(base);
    await symlink(secret.path, join(theirs, "link.json"));
    const link = await runAs(operator, ["status", "--state-file", join(theirs, "link.json")], {});
    assert.match(link.stdout, /INVALID: cannot be read: permission denied/);
    assert.doesNotMatch(link.stdout + link.stderr, /root:secret/);

    const refused = await runAs(operator, ["up", "--state-file", join(theirs, "state.json")], {});
    assert.equal(refused.code, CLI_EXIT.UNSAFE_PATH, refused.stderr);
    assert.match(
      refused.stderr,
      new RegExp(
        `refusing to use .*svc/state\\.json as uid ${operator.uid} \\(${operator.name}\\): .*svc is owned by uid ${service.uid} \\(${service.name}\\)`,
      ),
    );
  });

  test("root refuses a directory that every user, or a group, may write", async (t) => {
    const base = await tempDir(t);
    await chmod(base, 0o755);
    for (const [mode, file, code, gid] of [
      [0o777, "state.json", CLI_EXIT.UNSAFE_PATH, 1],
      [0o775, "state.json", CLI_EXIT.UNSAFE_PATH, 1],
      // Root's own group: its members are not known (and an ACL's mask shows here too).
      [0o775, "state.json", CLI_EXIT.UNSAFE_PATH, 0],
      // Sticky, as /tmp: a missing file could be anyone's; root's own file is root's.
      [0o1777, "missing.json", CLI_EXIT.UNSAFE_PATH, 1],
      [0o1777, "state.json", CLI_EXIT.NO_AGENT, 1],
    ] as const) {
      const dir = join(base, `d${mode.toString(8)}-${gid}-${file}`);
      await mkdir(dir);
      await chown(dir, 0, gid);
      await chmod(dir, mode);
      await writeFile(join(dir, "state.json"), '{"status":"UP"}');
      const result = await runHapgent(["down", "--state-file", join(dir, file)], {
        HAPGENT_PORT: "1",
      });
      assert.equal(result.code, code, `${mode.toString(8)} ${file}: ${result.stderr}`);
      if (code === CLI_EXIT.UNSAFE_PATH) {
        assert.match(
          result.stderr,
          /refusing to use .* as root: .* is writable by (every user|group [01])/,
        );
        assert.equal(await readFile(join(dir, "state.json"), "utf8"), '{"status":"UP"}');
      }
    }
  });

  test("`..` in a symlink's target is resolved as the kernel does, where the walk looked", async (t) => {
    const { attacker } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const secret = await rootFile(base);
    // a/link -> b/c, and b/c/state.json -> ../d/state.json: the kernel reads b/d/state.json.
    // Read as text, the path would be a/d/state.json, in a directory of the attacker's, which
    // the attacker points at the root file.
    for (const dir of ["a", "b", "b/c"]) await mkdir(join(base, dir));
    await symlink(join(base, "b/c"), join(base, "a/link"));
    await symlink("../d/state.json", join(base, "b/c/state.json"));
    const theirs = await dirOf(base, attacker, "a/d");
    const planted = await scriptAs(
      attacker,
      `fs.symlinkSync(${JSON.stringify(secret.path)}, ${JSON.stringify(join(theirs, "state.json"))});`,
    );
    assert.equal(planted.code, 0, planted.stderr);
    const result = await runHapgent(
      ["up", "--no-wait", "--state-file", join(base, "a/link/state.json")],
      { HAPGENT_PORT: "1" },
    );
    assert.equal(result.code, CLI_EXIT.CANNOT_WRITE, result.stderr);
    assert.match(result.stderr, /cannot write .*: ENOENT/);
    await secret.intact();
    // Where the kernel resolves it, the file is written: the walk and the save agree.
    await mkdir(join(base, "b/d"));
    const written = await runHapgent(
      ["up", "--no-wait", "--state-file", join(base, "a/link/state.json")],
      { HAPGENT_PORT: "1" },
    );
    assert.equal(written.code, CLI_EXIT.NO_AGENT, written.stderr);
    assert.equal(
      withoutRecord(await readFile(join(base, "b/d/state.json"), "utf8")),
      '{"status":"UP"}\n',
    );
    await secret.intact();
  });

  test("a root daemon in a shared directory: a file another user puts in place of its own is never written or read", async (t) => {
    const { attacker } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const secret = await rootFile(base);
    const shared = join(base, "shared");
    await mkdir(shared);
    await chmod(shared, 0o1777);
    const stateFile = join(shared, "state.json");
    await writeFile(stateFile, '{"status":"UP"}\n');
    const d = await startDaemon(t, {
      dir: base,
      state: null,
      env: { HAPGENT_STATE_FILE: stateFile },
    });
    // A cleaner removes root's file; the attacker puts a link to a root file in its place.
    await rm(stateFile);
    const planted = await scriptAs(
      attacker,
      `fs.symlinkSync(${JSON.stringify(secret.path)}, ${JSON.stringify(stateFile)});`,
    );
    assert.equal(planted.code, 0, planted.stderr);
    d.signal("SIGUSR2");
    await d.waitForReply("down ready 100%\n");
    await d.waitForLog(
      /cannot save state file .*is not safe for a daemon running as root: .*state\.json is owned by uid/,
    );
    d.signal("SIGHUP");
    await d.waitForReply("maint 100%\n");
    await d.waitForLog(
      /SIGHUP: state file .*: HAPGENT_STATE_FILE=.* is not safe for a daemon running as root/,
    );
    assert.doesNotMatch(d.stderr(), /root:secret/);
    await secret.intact();
  });

  test("a daemon run as root refuses a state file in another user's directory", async (t) => {
    const { attacker } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const dir = await dirOf(base, attacker, "a");
    const d = await startDaemon(t, {
      dir: base,
      state: null,
      ready: false,
      env: { HAPGENT_STATE_FILE: join(dir, "state.json") },
    });
    assert.equal((await d.exited).code, 2);
    assert.match(
      d.stderr(),
      new RegExp(
        `HAPGENT_STATE_FILE=".*/a/state\\.json" is not safe for a daemon running as root: .*/a is owned by uid ${attacker.uid}`,
      ),
    );
  });
});

describe("the record names who ran the command", { skip: SKIP }, () => {
  const service = SKIP ? undefined : createUser({ after }, "svc");
  const operator = SKIP ? undefined : createUser({ after }, "ops");
  const users = () => ({ service: service as User, operator: operator as User });
  const by = async (file: string) => JSON.parse(await readFile(file, "utf8")).changed.by;

  test("root's change in another user's directory records root, and who ran sudo", async (t) => {
    const { service, operator } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    // Root acts on this file as its directory's owner, whose name must not be recorded.
    const dir = await dirOf(base, service, "svc");
    const stateFile = join(dir, "state.json");
    const cases: [Record<string, string>, string][] = [
      [{}, "root"],
      [{ SUDO_USER: operator.name }, `root (sudo by ${operator.name})`],
      [{ SUDO_USER: "root" }, "root"],
      // Anyone may set the variable: a name that is no account is not believed.
      [{ SUDO_USER: "hgt-nobody-such" }, "root"],
      [{ SUDO_USER: "two words" }, "root"],
    ];
    for (const [env, recorded] of cases) {
      const result = await runHapgent(["drain", "--state-file", stateFile], {
        HAPGENT_PORT: "1",
        ...env,
      });
      assert.equal(result.code, CLI_EXIT.NO_AGENT, result.stderr);
      assert.equal((await lstat(stateFile)).uid, service.uid, "written as the directory's owner");
      assert.equal(await by(stateFile), recorded, JSON.stringify(env));
    }

    // Through the control socket of a daemon of the directory's owner: the same record.
    const d = await startDaemon(t, {
      dir,
      state: null,
      user: service,
      env: { HAPGENT_STATE_FILE: stateFile },
    });
    const down = await runHapgent(["down", "--state-file", stateFile], {
      HAPGENT_PORT: String(d.port),
      SUDO_USER: operator.name,
    });
    assert.equal(down.code, CLI_EXIT.OK, down.stderr);
    assert.match(down.stdout, new RegExp(`hapgent pid ${d.pid} wrote`), "through the socket");
    assert.equal(await by(stateFile), `root (sudo by ${operator.name})`);
    await d.waitForLog(new RegExp(`"by":"root \\(sudo by ${operator.name}\\)"`));
  });

  test("a user's own change records that user, whatever SUDO_USER says", async (t) => {
    const { operator } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const stateFile = join(await dirOf(base, operator, "ops"), "state.json");
    const result = await runAs(operator, ["up", "--state-file", stateFile], {
      HAPGENT_PORT: "1",
      SUDO_USER: "root",
    });
    assert.equal(result.code, CLI_EXIT.NO_AGENT, result.stderr);
    assert.equal(await by(stateFile), operator.name);
  });

  test("through real sudo, root's change records who ran sudo", {
    skip: SKIP || (missing("sudo", { commands: ["sudo", "setpriv", "mount"] }) as string | false),
  }, async (t) => {
    const { service, operator } = users();
    const base = await tempDir(t);
    await chmod(base, 0o755);
    const stateFile = join(await dirOf(base, service, "svc"), "state.json");
    // A sudoers of the test's own, seen only in a mount namespace of this command's.
    const sudoers = join(base, "sudoers");
    await writeFile(sudoers, `${operator.name} ALL=(root) NOPASSWD: ALL\n`, { mode: 0o440 });
    const [file, ...rest] = await hapgentArgvForOthers(["drain", "--state-file", stateFile]);
    const result = await collect(
      spawn(
        "unshare",
        privateMounts(
          'mount --bind "$1" /etc/sudoers && u="$2" && shift 2 && exec setpriv --reuid="$u" --regid="$u" --init-groups -- sudo -n -- "$@"',
          ["sh", sudoers, operator.name, file, ...rest],
        ),
        { env: { PATH, HAPGENT_PORT: "1" }, cwd: "/", stdio: ["ignore", "pipe", "pipe"] },
      ),
      30_000,
    );
    assert.equal(result.code, CLI_EXIT.NO_AGENT, result.stderr);
    assert.equal(await by(stateFile), `root (sudo by ${operator.name})`);
  });
});

interface Started {
  readonly child: ChildProcess;
  readonly listening: Promise<void>;
}

/**
 * A pid namespace with its own /proc, so root's command sees only the daemons a test starts in
 * it (and none of the tests running beside it). Everything in it ends with the test.
 */
async function pidNamespace(t: { after: (fn: () => Promise<void>) => void }) {
  const holder = spawn("unshare", ["--pid", "--fork", "--mount-proc", "sleep", "infinity"], {
    stdio: "ignore",
  });
  const closed = new Promise((resolve) => holder.on("close", resolve));
  t.after(async () => {
    holder.kill("SIGKILL");
    if (init !== undefined) process.kill(init, "SIGKILL");
    await closed;
  });
  // The namespace's first process, the child unshare forked.
  const init = await waitFor("the namespace's init", async () => {
    const children = await readFile(
      `/proc/${holder.pid}/task/${holder.pid}/children`,
      "utf8",
    ).catch(() => "");
    const first = Number(children.trim().split(" ")[0]);
    return first > 0 ? first : undefined;
  });
  const enter = (argv: readonly string[], user: User | undefined): [string, ...string[]] => [
    "nsenter",
    "--target",
    String(init),
    "--pid",
    "--mount",
    ...(user === undefined ? [] : ["--setgid", String(user.gid), "--setuid", String(user.uid)]),
    "--",
    ...argv,
  ];
  return {
    /** Starts a daemon in the namespace; `listening` resolves once it listens. */
    async start(
      argv: readonly string[],
      { user, env }: { user?: User; env: Record<string, string> },
    ): Promise<Started> {
      const [file, ...rest] = enter(argv, user);
      const child = spawn(file, rest, {
        env: { PATH, HAPGENT_IP: "127.0.0.1", ...env },
        cwd: "/",
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
        stderr += chunk;
      });
      const listening = waitFor(`a daemon listening: ${stderr}`, () =>
        /listening on/.test(stderr) ? true : undefined,
      ).then(() => undefined);
      return { child, listening };
    },
    /** Runs a command in the namespace to its end. */
    run(argv: readonly string[], { env }: { env: Record<string, string> }): Promise<Finished> {
      const [file, ...rest] = enter(argv, undefined);
      return collect(
        spawn(file, rest, {
          env: { PATH, ...env },
          cwd: "/",
          stdio: ["ignore", "pipe", "pipe"],
        }),
      );
    },
  };
}
