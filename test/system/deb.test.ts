/**
 * The standalone binary and the Debian package, built by their own scripts and judged as an
 * operator would meet them: the binary against the daemon and command suites, the package by the
 * lintian of each release it targets, the unit by systemd-analyze, and the package installed,
 * upgraded and purged in minimal roots of Debian 12 and Debian 13 that have no Node: as a plain
 * chroot (no systemd running), booted under systemd with systemd-nspawn, and (Debian 13) booted
 * with sysvinit, where the LSB init script runs the agent. The roots share the host's network, so
 * probes come from outside them.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import {
  chmod,
  chown,
  copyFile,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { VERSION } from "../../src/version.js";
import { cachedDebianRoot, debianRoot, RELEASES, type RootKind, type Suite } from "../debian.js";
import {
  exec,
  execOk,
  freePort,
  missing,
  poller,
  privateMounts,
  probe,
  REPO,
  startDaemon,
  waitFor,
  withoutRecord,
} from "../helpers.js";

const SKIP = missing("the binary and Debian package suite", {
  commands: [
    "debootstrap",
    "flock",
    "dpkg-deb",
    "dpkg-shlibdeps",
    "lintian",
    "systemd-analyze",
    "systemd-nspawn",
    "nsenter",
    "unshare",
    "chroot",
    "strip",
    "xz",
    "logrotate",
  ],
  root: true,
});

/** The bound the project sets for `systemd-analyze security` (0 is locked down, 10 is UNSAFE). */
const MAX_EXPOSURE = 2.0;
const ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** The version an upgrade goes to: the same package, repacked as a later version. */
const NEXT_VERSION = `${VERSION}+1`;
/** A version before this one, whose unit was in /lib/systemd/system, as Debian 12's packages have it. */
const PREVIOUS_VERSION = `${VERSION}~1`;
/**
 * The last commit whose package kept the state in /etc/hapgent (a conffile, in a directory the
 * service user owned), and the version its package is given here, for upgrades from it.
 */
const OLD_LAYOUT_COMMIT = "35f5fc8";
const OLD_LAYOUT_VERSION = `${VERSION}~0`;
/** What the service user's links point at: root's files, and a directory of root's. */
const CANARY = "/root/canary";
const CANARY_TEXT = "root's file, which no package script may touch\n";
/** Where the unit may be found in a root: /lib is /usr/lib on both releases. */
const UNIT_PATHS = [
  "/lib/systemd/system/hapgent.service",
  "/usr/lib/systemd/system/hapgent.service",
];

/** The numeric uid and gid of `name` in a root's /etc/passwd, or undefined. */
async function account(root: string, name: string): Promise<[number, number] | undefined> {
  const passwd = await readFile(join(root, "etc/passwd"), "utf8");
  const fields = passwd
    .split("\n")
    .map((line) => line.split(":"))
    .find((entry) => entry[0] === name);
  return fields ? [Number(fields[2]), Number(fields[3])] : undefined;
}

/** Every path under `dir` whose name contains `text`. */
async function findNamed(dir: string, text: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true }).catch(() => [] as string[]);
  return entries.filter((entry) => entry.includes(text));
}

/** Processes whose root directory is `root`. */
async function processesIn(root: string): Promise<number[]> {
  const found: number[] = [];
  for (const name of await readdir("/proc")) {
    if (!/^[0-9]+$/.test(name)) continue;
    const at = await readlink(`/proc/${name}/root`).catch(() => "");
    if (at === root) found.push(Number(name));
  }
  return found;
}

/** What a process shows of its session: its user, controlling terminal, descriptors. */
interface Attachment {
  pid: number;
  command: string;
  uid: number;
  /** Field 7 of /proc/PID/stat: 0 when it has no controlling terminal. */
  ttyNr: number;
  /** Where each of its descriptors leads, by number. */
  fds: Record<string, string>;
}

/** Of processes `belongs` accepts, those of user `uid`; empty unless one of them runs `command`. */
async function serviceProcesses(
  uid: number,
  command: string,
  belongs: (pid: number) => Promise<boolean>,
): Promise<Attachment[]> {
  const found: Attachment[] = [];
  for (const name of await readdir("/proc")) {
    if (!/^[0-9]+$/.test(name) || !(await belongs(Number(name)))) continue;
    try {
      const status = await readFile(`/proc/${name}/status`, "utf8");
      if (Number(status.match(/^Uid:\s+(\d+)/m)?.[1]) !== uid) continue;
      const stat = await readFile(`/proc/${name}/stat`, "utf8");
      const fds: Record<string, string> = {};
      for (const fd of await readdir(`/proc/${name}/fd`)) {
        fds[fd] = await readlink(`/proc/${name}/fd/${fd}`).catch(() => "");
      }
      found.push({
        pid: Number(name),
        command: (await readFile(`/proc/${name}/comm`, "utf8")).trim(),
        uid,
        ttyNr: Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[4]),
        fds,
      });
    } catch {
      // It ended meanwhile.
    }
  }
  return found.some((process) => process.command === command) ? found : [];
}

/**
 * The carry-over's processes, blocked on the FIFO planted at /etc/hapgent/state.json (until
 * their timeout of 10 s ends them: found well before).
 */
function blockedCarryOver(uid: number, belongs: (pid: number) => Promise<boolean>) {
  return waitFor(
    "the service user's head to block on the FIFO at /etc/hapgent/state.json",
    async () => {
      const found = await serviceProcesses(uid, "head", belongs);
      return found.length > 0 ? found : undefined;
    },
    60_000,
  );
}

/** What an uninstalled package must not leave behind in a root. */
async function assertPurged(root: string): Promise<void> {
  for (const path of [
    "usr/bin/hapgent",
    "usr/libexec/hapgent",
    "usr/lib/systemd/system/hapgent.service",
    "etc/init.d/hapgent",
    "etc/logrotate.d/hapgent",
    "etc/hapgent",
    "var/lib/hapgent",
    "etc/default/hapgent",
    "etc/systemd/system/multi-user.target.wants/hapgent.service",
    "usr/share/doc/hapgent",
    "usr/share/man/man8/hapgent.8.gz",
    "usr/share/lintian/overrides/hapgent",
  ]) {
    assert.equal(existsSync(join(root, path)), false, `${path} is gone`);
  }
  assert.equal(await account(root, "hapgent"), undefined, "the hapgent user is gone");
  const group = await readFile(join(root, "etc/group"), "utf8");
  assert.doesNotMatch(group, /^hapgent:/m, "the hapgent group is gone");
  assert.deepEqual(await findNamed(join(root, "var/lib/systemd"), "hapgent"), []);
  for (const runlevel of ["0", "1", "2", "3", "4", "5", "6", "S"]) {
    assert.deepEqual(await findNamed(join(root, `etc/rc${runlevel}.d`), "hapgent"), []);
  }
  assert.deepEqual(await findNamed(join(root, "var/log"), "hapgent"), []);
  assert.deepEqual(await findNamed(join(root, "var/lib/dpkg/info"), "hapgent"), []);
}

describe("standalone binary and Debian package", { skip: SKIP }, () => {
  let out = "";
  let binary = "";
  let deb = "";
  let nextDeb = "";
  let previousDeb = "";
  let oldLayoutDeb = "";

  before(async () => {
    out = await mkdtemp(join(tmpdir(), "hapgent-package-"));
    // The build runs here exactly as `npm run build:deb` runs it.
    await execOk("bash", [join(REPO, "scripts/build-deb.sh"), out], {
      cwd: REPO,
      timeoutMs: 600_000,
    });
    binary = join(out, "hapgent");
    deb = join(out, `hapgent_${VERSION}_amd64.deb`);
    ({ next: nextDeb, previous: previousDeb } = await repackVersions(deb, out));
    oldLayoutDeb = await repackOldLayout(deb, out);
  });
  after(() => rm(out, { recursive: true, force: true }));

  test("the binary is an x86_64 Linux executable with Node 24 inside, and its checksum holds", async (t) => {
    const bytes = await readFile(binary);
    const head = bytes.subarray(0, 20);
    assert.deepEqual([...head.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], "ELF");
    assert.equal(head.readUInt16LE(18), 0x3e, "x86_64");
    await execOk("sha256sum", ["--check", "--strict", "hapgent.sha256"], { cwd: out });
    // The Node flags of main.js's first line are baked in (the SEA's execArgv).
    const flags = (await readFile(join(REPO, "dist/src/main.js"), "utf8")).split("\n", 1)[0];
    const flag = flags?.match(/--max-semi-space-size=\d+/)?.[0];
    assert.ok(flag, flags);
    assert.ok(bytes.includes(flag), `${flag} is in the binary`);
    assert.ok(bytes.includes("--jitless"), "--jitless is in the binary");
    // With no Node anywhere on PATH: the binary needs none.
    const empty = join(out, "empty-path");
    await mkdir(empty);
    const d = await startDaemon(t, { exec: binary, env: { PATH: empty } });
    await d.waitForLog(/\(Node v24\.[0-9.]+\) listening/);
    assert.equal(await d.probe(), "up ready 100%\n");
    // The Node inside runs without a JIT compiler (--jitless): after many probes, enough for V8
    // to compile the hot code if it could, the process has no anonymous executable memory (the
    // same binary built without --jitless showed an anonymous rwxp mapping here).
    for (let batch = 0; batch < 40; batch++) {
      const lines = await Promise.all(Array.from({ length: 25 }, () => d.probe()));
      assert.ok(
        lines.every((line) => line === "up ready 100%\n"),
        lines.join(""),
      );
    }
    const maps = await readFile(`/proc/${d.pid}/maps`, "utf8");
    const executable = maps.split("\n").filter((line) => {
      const [, perms = "", , , , path] = line.split(/\s+/);
      return perms.includes("x") && (path === undefined || path === "");
    });
    assert.deepEqual(executable, [], "no executable memory allocated at run time");
    d.signal("SIGTERM");
    assert.equal((await d.exited).code, 0);
    t.diagnostic(`binary ${Math.round((await stat(binary)).size / 2 ** 20)} MiB`);
  });

  test("the daemon and command suites pass against the binary", async (t) => {
    const suites = [
      "integration/daemon",
      "integration/cli",
      "integration/inspector",
      "integration/faults",
      "integration/log-faults",
      "integration/abuse",
      "integration/privilege",
      "integration/wait",
      "integration/control",
      "integration/metrics",
      "integration/prometheus",
    ].map((name) => join(REPO, "dist/test", `${name}.test.js`));
    const result = await exec(
      process.execPath,
      ["--test", "--test-concurrency=2", "--test-reporter=tap", ...suites],
      { env: suiteEnv(binary), timeoutMs: 600_000 },
    );
    const count = (name: string) =>
      Number(result.stdout.match(new RegExp(`^# ${name} (\\d+)$`, "m"))?.[1]);
    assert.equal(result.code, 0, `${result.stdout}\n${result.stderr}`);
    assert.equal(count("fail"), 0, result.stdout);
    assert.ok(count("pass") >= 80, `the suites ran: ${count("pass")} passed`);
    t.diagnostic(`${count("pass")} tests passed against ${binary}`);
  });

  test("the package passes the lintian of Debian 12 (this machine's)", async (t) => {
    const version = (await readFile("/etc/debian_version", "utf8").catch(() => "")).trim();
    assert.match(version, /^12\./, "this machine is Debian 12: its lintian is Debian 12's");
    const result = await exec("lintian", ["--fail-on", "error,warning", "--info", deb], {
      timeoutMs: 300_000,
    });
    t.diagnostic(`Debian 12's ${lintianVerdict(result)}`);
  });

  test("the package passes the lintian of Debian 13 (from a Debian 13 root)", async (t) => {
    const root = cachedDebianRoot("trixie", "lintian");
    // The cached root is not changed: its /tmp is a tmpfs of a mount namespace that ends with
    // the command, the package is copied there, and lintian runs as nobody.
    const result = await exec(
      "unshare",
      privateMounts(
        'mount -t tmpfs -o mode=1777 tmpfs "$0/tmp" && mount -t proc proc "$0/proc" && install -m 0644 "$1" "$0/tmp/hapgent.deb" && exec chroot --userspec=65534:65534 "$0" sh -c "cd /tmp && lintian --version && exec lintian --fail-on error,warning --info /tmp/hapgent.deb"',
        [root, deb],
      ),
      { env: { PATH: ROOT_PATH, HOME: "/tmp", TMPDIR: "/tmp" }, timeoutMs: 300_000 },
    );
    assert.match(result.stdout, /^Lintian v2\.12[0-9]/m, "Debian 13's lintian ran");
    t.diagnostic(`Debian 13's ${lintianVerdict(result)}`);
  });

  test("the shipped unit is hardened: systemd-analyze security at most 2.0, verify clean", async (t) => {
    const unpacked = join(out, "unpacked");
    await execOk("dpkg-deb", ["--extract", deb, unpacked]);
    const unit = join(unpacked, "usr/lib/systemd/system/hapgent.service");
    const text = await readFile(unit, "utf8");
    for (const line of [
      "Type=exec",
      "ExecStart=/usr/libexec/hapgent/daemon",
      'ExecReload=/bin/sh -c "kill -HUP $MAINPID"',
      "Restart=on-failure",
      "User=hapgent",
      "ReadWritePaths=/var/lib/hapgent",
      "WantedBy=multi-user.target",
    ]) {
      assert.match(text, new RegExp(`^${line.replace(/[$()"]/g, "\\$&")}$`, "m"), line);
    }
    const security = await exec("systemd-analyze", [
      "security",
      "--offline=true",
      "--no-pager",
      unit,
    ]);
    const exposure = Number(
      security.stdout.match(/Overall exposure level for hapgent\.service: ([0-9.]+)/)?.[1],
    );
    assert.ok(exposure <= MAX_EXPOSURE, `exposure ${exposure}:\n${security.stdout}`);
    t.diagnostic(`systemd-analyze security --offline=true: exposure ${exposure}`);
  });

  for (const release of RELEASES) {
    test(`in a ${release.name} root without Node and without systemd running (a chroot)`, async (t) => {
      let daemon: InRoot | undefined;
      const root = await rootFor(
        t,
        join(out, `chroot-${release.suite}`),
        release.suite,
        "systemd",
        () => daemon?.stop(),
      );
      const inRoot = (args: string[], timeoutMs = 120_000) =>
        execOk("chroot", [root, ...args], {
          env: { PATH: ROOT_PATH, DEBIAN_FRONTEND: "noninteractive" },
          timeoutMs,
        });
      const node = await exec(
        "chroot",
        [root, "sh", "-c", "command -v node || command -v nodejs"],
        {
          env: { PATH: ROOT_PATH },
        },
      );
      assert.notEqual(node.code, 0, `no Node in the root: ${node.stdout}`);
      assert.equal(existsSync(join(root, "run/systemd/system")), false, "systemd does not run");

      // An upgrade from a version whose unit was in /lib/systemd/system: on merged-/usr roots
      // /lib is /usr/lib, and dpkg must not remove the old path's file, which is the new one.
      await copyFile(previousDeb, join(root, "root/hapgent-previous.deb"));
      await inRoot(["dpkg", "-i", "/root/hapgent-previous.deb"]);
      await copyFile(deb, join(root, "root/hapgent.deb"));
      await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      assert.ok((await stat(join(root, "usr/lib/systemd/system/hapgent.service"))).isFile());
      assert.match(
        (await inRoot(["dpkg", "-S", "hapgent.service"])).stdout,
        /^hapgent: \/usr\/lib\/systemd\/system\/hapgent\.service$/m,
      );
      assert.equal((await inRoot(["hapgent", "--version"])).stdout, `hapgent ${VERSION}\n`);
      assert.equal(await readlink(join(root, "usr/libexec/hapgent/daemon")), "../../bin/hapgent");
      // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's format, not JavaScript's
      const conffiles = (await inRoot(["dpkg-query", "-W", "-f", "${Conffiles}", "hapgent"]))
        .stdout;
      assert.doesNotMatch(conffiles, /hapgent\/state/, "the state is no conffile");
      assert.match(conffiles, /\/etc\/default\/hapgent /);
      assert.match(conffiles, /\/etc\/init\.d\/hapgent /);
      assert.match(conffiles, /\/etc\/logrotate\.d\/hapgent /);
      const user = await account(root, "hapgent");
      assert.ok(user, "postinst created the hapgent user");
      const [uid, gid] = user;
      for (const path of ["var/lib/hapgent", "var/lib/hapgent/state.json"]) {
        const stats = await stat(join(root, path));
        assert.deepEqual([stats.uid, stats.gid], [uid, gid], `${path} belongs to hapgent`);
      }
      // The service user owns /var/lib/hapgent and puts a link to /etc/shadow in the state
      // file's place; an upgrade (root's postinst) must not give /etc/shadow away by following it.
      const shadow = await stat(join(root, "etc/shadow"));
      await inRoot([
        "runuser",
        "-u",
        "hapgent",
        "--",
        "sh",
        "-c",
        "ln -s /etc/shadow /var/lib/hapgent/link && mv -T /var/lib/hapgent/link /var/lib/hapgent/state.json",
      ]);
      await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      const after = await stat(join(root, "etc/shadow"));
      assert.deepEqual([after.uid, after.gid, after.mode], [shadow.uid, shadow.gid, shadow.mode]);
      await rm(join(root, "var/lib/hapgent/state.json"));
      await writeFile(join(root, "var/lib/hapgent/state.json"), '{"status":"UP"}\n');
      await chown(join(root, "var/lib/hapgent/state.json"), uid, gid);
      // Enabled, so an image built this way starts it at boot, with systemd or with another init;
      // but nothing was started here: a chroot has no runlevel, and invoke-rc.d starts nothing.
      const wants = join(root, "etc/systemd/system/multi-user.target.wants/hapgent.service");
      assert.ok(UNIT_PATHS.includes(await readlink(wants)), await readlink(wants));
      assert.equal(await readlink(join(root, "etc/rc2.d/S01hapgent")), "../init.d/hapgent");
      assert.equal(await readlink(join(root, "etc/rc0.d/K01hapgent")), "../init.d/hapgent");
      assert.deepEqual(await processesIn(root), [], "postinst started nothing in the chroot");
      await validateUnitIn(root, t);

      // The daemon as its service user, as the unit runs it (without the sandbox): on the state
      // file the unit gives it, not the program's default.
      const unit = await readFile(join(root, "usr/lib/systemd/system/hapgent.service"), "utf8");
      const given = unit.match(/^Environment=HAPGENT_STATE_FILE=(.*)$/m)?.[1];
      assert.equal(given, "/var/lib/hapgent/state.json", "the unit gives the package's file");
      const port = await freePort();
      const agent = startInRoot(root, ["/usr/bin/hapgent"], {
        user: `${uid}:${gid}`,
        env: { HAPGENT_IP: "127.0.0.1", HAPGENT_PORT: String(port), HAPGENT_STATE_FILE: given },
      });
      daemon = agent;
      await waitFor("the daemon in the root to listen", () =>
        /listening on/.test(agent.stderr()) ? true : undefined,
      );
      const stateFile = join(root, "var/lib/hapgent/state.json");
      const { expect } = agentAt(port, stateFile);
      await expect("up ready 100%\n", '{"status":"UP"}\n');
      agent.child.kill("SIGUSR2");
      await expect("down ready 100%\n", '{"status":"DOWN"}\n');
      agent.child.kill("SIGUSR1");
      await expect("up ready 100%\n", '{"status":"UP"}\n');
      // Saved atomically (temporary file and rename): the service user owns the directory.
      assert.doesNotMatch(agent.stderr(), /not writable|cannot save/);
      assert.deepEqual((await readdir(join(root, "var/lib/hapgent"))).sort(), ["state.json"]);
      assert.equal((await stat(stateFile)).uid, uid);

      // The command line, as root inside the root, finds the daemon of the package's state file
      // through /proc. The file is named: a chroot shares the host's processes, and the host may
      // run other agents (other test runs) whose files are not this root's.
      const cli = (args: string[]) =>
        startInRoot(root, ["/usr/bin/hapgent", ...args], {
          env: { HAPGENT_STATE_FILE: "/var/lib/hapgent/state.json" },
        }).done;
      const status = await cli(["status"]);
      assert.equal(status.code, 0, status.stdout + status.stderr);
      assert.match(status.stdout, /agreement {3}yes/);
      const drain = await cli(["drain", "--weight", "25"]);
      assert.equal(drain.code, 0, drain.stdout + drain.stderr);
      assert.match(drain.stdout, /answers: up drain 25%/);
      await expect("up drain 25%\n", '{"status":"DRAIN","weight":25}\n');
      assert.equal((await stat(stateFile)).uid, uid, "root's save kept the owner");

      agent.child.kill("SIGTERM");
      assert.equal((await agent.done).code, 0, agent.stderr());

      await inRoot(["dpkg", "--purge", "hapgent"]);
      await assertPurged(root);
      assert.equal((await exec("chroot", [root, "dpkg-query", "-W", "hapgent"])).code, 1);
    });
  }

  for (const release of RELEASES) {
    test(`in a ${release.name} root, purge, reinstall and upgrade follow no link the service user made`, async (t) => {
      const root = await rootFor(
        t,
        join(out, `links-${release.suite}`),
        release.suite,
        "systemd",
        () => undefined,
      );
      const inRoot = chrootRunner(root);
      await copyFile(deb, join(root, "root/hapgent.deb"));
      await copyFile(nextDeb, join(root, "root/hapgent-next.deb"));
      const intact = await rootsFiles(root);

      // Installed, then everything the service user can write holds links to root's files.
      await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      t.diagnostic(`planted: ${await plantLinks(inRoot)}`);
      await inRoot(["dpkg", "--purge", "hapgent"]);
      await intact("after a purge");
      await assertPurged(root);

      await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      await assertLayout(root, inRoot);
      await plantLinks(inRoot);
      await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      await intact("after a reinstall");
      await plantLinks(inRoot);
      await inRoot(["dpkg", "-i", "/root/hapgent-next.deb"]);
      await intact("after an upgrade");
      await plantLinks(inRoot);
      await inRoot(["dpkg", "--purge", "hapgent"]);
      await intact("after a purge");
      await assertPurged(root);
    });

    test(`in a ${release.name} root, an upgrade from 0.1.0's /etc/hapgent carries the state over and follows no link`, async (t) => {
      const root = await rootFor(
        t,
        join(out, `old-layout-${release.suite}`),
        release.suite,
        "systemd",
        () => undefined,
      );
      const inRoot = chrootRunner(root);
      await copyFile(oldLayoutDeb, join(root, "root/hapgent-old.deb"));
      await copyFile(deb, join(root, "root/hapgent.deb"));
      const intact = await rootsFiles(root);
      const asService = (script: string) =>
        inRoot(["runuser", "-u", "hapgent", "--", "sh", "-c", script]);

      // 0.1.0 as it was: /etc/hapgent and its state.json, a conffile, the service user's. The
      // agent saved a state and the fleet's word there; the user put links beside them.
      await inRoot(["dpkg", "-i", "/root/hapgent-old.deb"]);
      const saved = '{"status":"DRAIN","weight":25,"description":"deploy 1.4"}\n';
      const fleet = '{"status":"UP","weight":60}\n';
      await asService(
        `cd /etc/hapgent && printf '%s' '${saved}' >.state.json.tmp-1-a && mv -T .state.json.tmp-1-a state.json && printf '%s' '${fleet}' >state.fleet.json`,
      );
      t.diagnostic(`planted: ${await plantLinks(inRoot, ["state.json", "state.fleet.json"])}`);
      const upgraded = await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      await intact("after the upgrade from 0.1.0");
      const [uid, gid] = (await account(root, "hapgent")) ?? [];
      for (const [name, text] of [
        ["state.json", saved],
        ["state.fleet.json", fleet],
      ] as const) {
        const path = join(root, "var/lib/hapgent", name);
        assert.equal(await readFile(path, "utf8"), text, `${name} carried over`);
        const stats = await lstat(path);
        assert.deepEqual([stats.isFile(), stats.uid, stats.gid], [true, uid, gid], name);
        assert.equal(existsSync(join(root, "etc/hapgent", name)), false, `the old ${name} is gone`);
      }
      await assertLayout(root, inRoot);
      assert.doesNotMatch(upgraded.stderr, /not carried over/, upgraded.stderr);

      // Again from 0.1.0, its state.json a link to /etc/shadow and the fleet's cache one to the
      // canary: neither is read as root. The state says why the agent answers MAINT.
      await inRoot(["dpkg", "--purge", "hapgent"]);
      await intact("after a purge");
      await inRoot(["dpkg", "-i", "/root/hapgent-old.deb"]);
      await asService(
        "cd /etc/hapgent && ln -sfn /etc/shadow state.json && ln -sfn /root/canary state.fleet.json",
      );
      await plantLinks(inRoot, ["state.json", "state.fleet.json"]);
      const attacked = await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      assert.match(
        attacked.stderr,
        /\/etc\/hapgent\/state\.json could not be read as the service user/,
      );
      await intact("after the upgrade from 0.1.0 with links");
      assert.equal(
        await readFile(join(root, "var/lib/hapgent/state.json"), "utf8"),
        '{"status":"MAINT","description":"/etc/hapgent/state.json was not carried over"}\n',
      );
      assert.equal(existsSync(join(root, "var/lib/hapgent/state.fleet.json")), false);
      await assertLayout(root, inRoot);
      await inRoot(["dpkg", "--purge", "hapgent"]);
      await intact("after a purge");

      // The operator's /etc/default/hapgent names the old file: it stays, with a word on what to
      // do, which then moves it.
      await inRoot(["dpkg", "-i", "/root/hapgent-old.deb"]);
      await asService(`printf '%s' '${saved}' >/etc/hapgent/state.json`);
      const defaults = join(root, "etc/default/hapgent");
      const settings = await readFile(defaults, "utf8");
      await writeFile(defaults, `${settings}HAPGENT_STATE_FILE=/etc/hapgent/state.json\n`);
      const named = await inRoot(["dpkg", "-i", "--force-confold", "/root/hapgent.deb"]);
      assert.match(
        named.stderr,
        /sets HAPGENT_STATE_FILE=\/etc\/hapgent\/state\.json, in \/etc\/hapgent, which belongs to root/,
      );
      assert.equal(await readFile(join(root, "etc/hapgent/state.json"), "utf8"), saved);
      assert.equal(existsSync(join(root, "var/lib/hapgent/state.json")), false);
      await writeFile(defaults, settings);
      await inRoot(["dpkg-reconfigure", "hapgent"]);
      assert.equal(await readFile(join(root, "var/lib/hapgent/state.json"), "utf8"), saved);
      assert.equal(existsSync(join(root, "etc/hapgent/state.json")), false);
      await assertLayout(root, inRoot);
      await inRoot(["dpkg", "--purge", "hapgent"]);
      await intact("after a purge");
      await assertPurged(root);
    });

    test(`in a ${release.name} root, the upgrade from 0.1.0 reads as the service user detached from root's terminal`, async (t) => {
      const root = await rootFor(
        t,
        join(out, `detached-${release.suite}`),
        release.suite,
        "systemd",
        () => undefined,
      );
      const inRoot = chrootRunner(root);
      await copyFile(oldLayoutDeb, join(root, "root/hapgent-old.deb"));
      await copyFile(deb, join(root, "root/hapgent.deb"));
      const intact = await rootsFiles(root);
      await inRoot(["dpkg", "-i", "/root/hapgent-old.deb"]);
      const [uid] = (await account(root, "hapgent")) ?? [];
      // A FIFO holds the carry-over's head as the service user, for its session to be seen.
      await inRoot([
        "runuser",
        "-u",
        "hapgent",
        "--",
        "sh",
        "-c",
        "cd /etc/hapgent && rm -f state.json && mkfifo state.json",
      ]);
      // Root upgrades from a terminal, holding a descriptor of a root-only file.
      const upgrade = exec(
        "script",
        [
          "-qec",
          `exec 7<${join(root, CANARY)}; exec chroot ${root} dpkg -i /root/hapgent.deb`,
          "/dev/null",
        ],
        { env: { PATH: ROOT_PATH, DEBIAN_FRONTEND: "noninteractive" }, timeoutMs: 120_000 },
      );
      const inThisRoot = async (pid: number) =>
        (await readlink(`/proc/${pid}/root`).catch(() => "")) === root;
      const processes = await blockedCarryOver(Number(uid), inThisRoot);
      const upgraded = await upgrade;
      assert.equal(upgraded.code, 0, upgraded.stdout);
      for (const process of processes) {
        const what = `${process.command} (${process.pid}) of the service user: ${JSON.stringify(process)}`;
        assert.equal(process.ttyNr, 0, `${what} has no controlling terminal`);
        // Any descriptor above 2 is a shell's saved copy of its own 0-2 (dash keeps one at 10).
        const std = ["0", "1", "2"].map((fd) => process.fds[fd]);
        for (const [fd, target] of Object.entries(process.fds)) {
          assert.doesNotMatch(target, /^\/dev\/(pts|tty)/, `${what}: ${fd} is not the terminal`);
          if (Number(fd) > 2) assert.ok(std.includes(target), `${what}: ${fd} is not root's`);
        }
      }
      assert.match(
        upgraded.stdout,
        /\/etc\/hapgent\/state\.json could not be read as the service user/,
      );
      assert.equal(
        await readFile(join(root, "var/lib/hapgent/state.json"), "utf8"),
        '{"status":"MAINT","description":"/etc/hapgent/state.json was not carried over"}\n',
      );
      await assertLayout(root, inRoot);
      await inRoot(["dpkg", "--purge", "hapgent"]);
      await intact("after a purge");
    });

    test(`in a ${release.name} root, reinstall, upgrade and dpkg-reconfigure keep the operator's /etc/hapgent`, async (t) => {
      const root = await rootFor(
        t,
        join(out, `operator-dir-${release.suite}`),
        release.suite,
        "systemd",
        () => undefined,
      );
      const inRoot = chrootRunner(root);
      await copyFile(deb, join(root, "root/hapgent.deb"));
      await copyFile(nextDeb, join(root, "root/hapgent-next.deb"));
      await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      // The operator lets the service read etcd's password, and no one else.
      const [, gid] = (await account(root, "hapgent")) ?? [];
      const dir = join(root, "etc/hapgent");
      await chown(dir, 0, Number(gid));
      await chmod(dir, 0o750);
      for (const step of [
        ["dpkg", "-i", "/root/hapgent.deb"],
        ["dpkg", "-i", "/root/hapgent-next.deb"],
        ["dpkg-reconfigure", "hapgent"],
      ]) {
        await inRoot(step);
        const stats = await lstat(dir);
        assert.deepEqual(
          [stats.uid, stats.gid, stats.mode & 0o7777],
          [0, Number(gid), 0o750],
          `/etc/hapgent after ${step.join(" ")}`,
        );
      }
      await inRoot(["dpkg", "--purge", "hapgent"]);
      await assertPurged(root);
    });

    test(`in a ${release.name} root, an upgrade from 0.1.0 names what the service user left in /etc/hapgent`, async (t) => {
      const root = await rootFor(
        t,
        join(out, `left-${release.suite}`),
        release.suite,
        "systemd",
        () => undefined,
      );
      const inRoot = chrootRunner(root);
      await copyFile(oldLayoutDeb, join(root, "root/hapgent-old.deb"));
      await copyFile(deb, join(root, "root/hapgent.deb"));
      const intact = await rootsFiles(root);
      await inRoot(["dpkg", "-i", "/root/hapgent-old.deb"]);
      // Under 0.1.0 the service user owned /etc/hapgent: it pre-made root's configuration files,
      // a directory, links out of it, and a name that would write escapes to root's terminal.
      await inRoot([
        "runuser",
        "-u",
        "hapgent",
        "--",
        "sh",
        "-c",
        `cd /etc/hapgent && echo '{"checks":[]}' >checks.json && mkdir checks.d && touch checks.d/disk &&
         ln -s ${CANARY} etcd-ca.pem && ln -s /root certs && touch "$(printf 'x\\033]0;owned\\007')"`,
      ]);
      const upgraded = await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      await intact("after the upgrade from 0.1.0");
      assert.match(
        upgraded.stderr,
        /WARNING: these entries of \/etc\/hapgent belong to the service user/,
      );
      for (const name of ["checks.json", "checks.d", "checks.d/disk", "etcd-ca.pem", "certs"]) {
        assert.match(
          upgraded.stderr,
          new RegExp(`^hapgent: +/etc/hapgent/${name.replace(".", "\\.")}$`, "m"),
          name,
        );
      }
      assert.match(
        upgraded.stderr,
        /^hapgent: +\/etc\/hapgent\/x\?]0;owned\?$/m,
        "the name, escapes shown as ?",
      );
      assert.doesNotMatch(upgraded.stderr, /\/etc\/hapgent\/certs\/|canary/, "nothing followed");
      assert.ok(!upgraded.stderr.includes(String.fromCharCode(0x1b)), "no escape on the terminal");
      // Named, not changed: still the service user's, links still links.
      const [uid] = (await account(root, "hapgent")) ?? [];
      assert.equal((await lstat(join(root, "etc/hapgent/checks.json"))).uid, uid);
      assert.ok((await lstat(join(root, "etc/hapgent/certs"))).isSymbolicLink());
      assert.equal((await lstat(join(root, CANARY))).uid, 0);
      // Said once, at the upgrade that takes the directory back.
      const again = await inRoot(["dpkg", "-i", "/root/hapgent.deb"]);
      assert.doesNotMatch(again.stderr, /WARNING/);
      await inRoot(["dpkg", "--purge", "hapgent"]);
      await intact("after a purge");
    });
  }

  for (const release of RELEASES) {
    test(`under systemd (a ${release.name} root booted with systemd-nspawn)`, async (t) => {
      let machine: Machine | undefined;
      const root = await rootFor(
        t,
        join(out, `booted-${release.suite}`),
        release.suite,
        "systemd",
        () => machine?.stop(),
      );
      // The operator's way to set the port: a drop-in. The container shares the host's network.
      const port = await freePort();
      const metricsPort = await freePort();
      await mkdir(join(root, "etc/systemd/system/hapgent.service.d"), { recursive: true });
      await writeFile(
        join(root, "etc/systemd/system/hapgent.service.d/port.conf"),
        `[Service]\nEnvironment=HAPGENT_IP=127.0.0.1 HAPGENT_PORT=${port} HAPGENT_METRICS=127.0.0.1:${metricsPort}\n`,
      );
      await copyFile(deb, join(root, "root/hapgent.deb"));
      await copyFile(nextDeb, join(root, "root/hapgent-next.deb"));

      const container = await boot(root);
      machine = container;
      const { run: inside, runOk: insideOk } = container;
      try {
        await inside(["systemctl", "is-system-running", "--wait"], 120_000);

        await insideOk(["dpkg", "-i", "/root/hapgent.deb"]);
        assert.equal((await insideOk(["systemctl", "is-enabled", "hapgent"])).trim(), "enabled");
        await waitFor("the service to answer", async () =>
          (await probe(port).catch(() => "")) === "up ready 100%\n" ? true : undefined,
        );
        assert.equal((await insideOk(["systemctl", "is-active", "hapgent"])).trim(), "active");
        // Metrics under the unit's sandbox, the process's own included; the rules are shipped.
        const scrape = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
        assert.match(scrape, /^hapgent_status\{status="UP"\} 1$/m);
        assert.match(scrape, /^hapgent_state_file_valid 1$/m);
        assert.match(scrape, /^process_open_fds \d+$/m);
        assert.match(scrape, /^process_resident_memory_bytes \d+$/m);
        await insideOk(["test", "-s", "/usr/share/hapgent/prometheus/hapgent.rules.yml"]);

        // The sandbox is really applied: no privileges, a syscall filter, a user namespace.
        const pid = (
          await insideOk(["systemctl", "show", "--property=MainPID", "--value", "hapgent"])
        ).trim();
        const procStatus = await insideOk(["cat", `/proc/${pid}/status`]);
        assert.match(procStatus, /^NoNewPrivs:\s+1$/m);
        assert.match(procStatus, /^Seccomp:\s+2$/m);
        assert.match(procStatus, /^CapEff:\s+0+$/m);
        assert.match(procStatus, /^CapBnd:\s+0+$/m);
        const uidMap = await insideOk(["cat", `/proc/${pid}/uid_map`]);
        assert.equal(
          uidMap.trim().split("\n").length,
          2,
          `PrivateUsers maps root and hapgent only: ${uidMap}`,
        );
        const live = await insideOk([
          "systemd-analyze",
          "security",
          "--no-pager",
          "hapgent.service",
        ]);
        const exposure = Number(
          live.match(/Overall exposure level for hapgent\.service: ([0-9.]+)/)?.[1],
        );
        assert.ok(exposure <= MAX_EXPOSURE, live);

        const stateFile = join(root, "var/lib/hapgent/state.json");
        const { expect, silent } = agentAt(port, stateFile);
        const mainPid = async () =>
          (
            await insideOk(["systemctl", "show", "--property=MainPID", "--value", "hapgent"])
          ).trim();
        const restarts = async () =>
          (
            await insideOk(["systemctl", "show", "--property=NRestarts", "--value", "hapgent"])
          ).trim();

        // The deploy script's `pkill -USR2 hapgent`, sent without pause from before a restart to
        // well after it (from the host, to the container's processes only): the daemon is found
        // only once it can take the signal, so it is never killed, and the state ends DOWN.
        const first = await mainPid();
        await insideOk(["systemctl", "restart", "--no-block", "hapgent"]);
        const stormEnd = Date.now() + 2000;
        let matched = 0;
        while (Date.now() < stormEnd) {
          const pkill = ["--ns", String(container.leader), "--nslist", "pid", "-USR2", "hapgent"];
          if ((await exec("pkill", pkill)).code === 0) matched++;
        }
        await expect("down ready 100%\n", '{"status":"DOWN"}\n');
        const second = await mainPid();
        assert.notEqual(second, first, "restarted by systemctl");
        assert.equal(await restarts(), "0", "never killed by a signal, so never restarted");
        const byNew = await insideOk([
          "journalctl",
          `_PID=${second}`,
          "--output=cat",
          "--no-pager",
        ]);
        assert.match(byNew, /SIGUSR2: state/, "the new daemon took USR2 once it could");
        t.diagnostic(`pkill -USR2 hapgent matched ${matched} times around a restart`);

        await insideOk(["systemctl", "kill", "--signal=SIGUSR1", "hapgent"]);
        await expect("up ready 100%\n", '{"status":"UP"}\n');
        // An edited file, then `systemctl reload`.
        await writeFile(stateFile, '{"status":"UP","weight":30}\n');
        await insideOk(["systemctl", "reload", "hapgent"]);
        await expect("up ready 30%\n");
        const set = await insideOk(["hapgent", "down", "--description", "deploy 2.0"]);
        assert.match(set, /answers: down ready 30% # deploy 2\.0/);
        const saved = '{"status":"DOWN","weight":30,"description":"deploy 2.0"}\n';
        // Root's command acted as the service user, who owns /var/lib/hapgent: the file stays theirs.
        const service = await account(root, "hapgent");
        const owner = await lstat(stateFile);
        assert.deepEqual([owner.uid, owner.gid], service);

        // The service account points the state file at /etc/shadow; root's `hapgent up` must not
        // write it (it acts as hapgent, who cannot), and says why.
        const shadow = await readFile(join(root, "etc/shadow"), "utf8");
        await insideOk([
          "runuser",
          "-u",
          "hapgent",
          "--",
          "sh",
          "-c",
          "ln -s /etc/shadow /var/lib/hapgent/link && mv -T /var/lib/hapgent/link /var/lib/hapgent/state.json",
        ]);
        const attacked = await inside(["hapgent", "up"]);
        assert.equal(attacked.code, 5, attacked.stdout + attacked.stderr);
        // The daemon, as hapgent, applies the change through its socket and cannot save it there:
        // /etc is read-only in its sandbox, and not the service user's to write anyway.
        assert.match(
          attacked.stderr,
          /cannot (write|save) \/var\/lib\/hapgent\/state\.json: (EACCES|EROFS)/,
        );
        assert.equal(await readFile(join(root, "etc/shadow"), "utf8"), shadow, "shadow unchanged");
        await insideOk(["rm", "/var/lib/hapgent/state.json"]);
        await writeFile(stateFile, saved);
        await insideOk(["chown", "hapgent:hapgent", "/var/lib/hapgent/state.json"]);
        await insideOk(["systemctl", "reload", "hapgent"]);
        await expect("down ready 30% # deploy 2.0\n", saved);

        // A USR1 at a chosen moment of each start-up (5 to 40 ms after the new main process
        // appears), by pid as `systemctl kill` sends it: some arrive before the handlers exist and
        // open Node's debugger. Meanwhile an attacker on the host reads /proc/net/tcp and connects
        // to every listener that may be one.
        const attacker = debuggerAttacker();
        const outcomes: string[] = [];
        // Later and later into start-up, until the agent's own handler takes the signal: the
        // window before it depends on the machine (measured on the host: 5-50 ms; slower here).
        for (
          let delayMs = 10;
          delayMs <= 400 && !outcomes.some((o) => o.endsWith("handler"));
          delayMs += 15
        ) {
          const round = await insideOk(
            [
              "sh",
              "-c",
              `old=$(systemctl show -P MainPID hapgent); systemctl restart --no-block hapgent; while :; do p=$(systemctl show -P MainPID hapgent); [ "$p" != "$old" ] && [ "$p" != 0 ] && break; done; sleep ${delayMs / 1000}; kill -USR1 "$p"; sleep 0.5; if journalctl -o cat _PID=$p | grep -q "closed the Node debugger"; then echo debugger; elif kill -0 "$p" 2>/dev/null; then echo handler; else echo killed; fi`,
            ],
            60_000,
          );
          outcomes.push(`${delayMs} ms: ${round.trim()}`);
          await waitFor(
            "the service to be active again",
            async () =>
              (await inside(["systemctl", "is-active", "hapgent"])).stdout.trim() === "active" &&
              (await probe(port).catch(() => "")) !== ""
                ? true
                : undefined,
            20_000,
          );
        }
        const attempts = await attacker.stop();
        const closedDebuggers =
          (await insideOk(["journalctl", "--unit=hapgent", "--output=cat", "--no-pager"])).match(
            /closed the Node debugger/g,
          )?.length ?? 0;
        t.diagnostic(
          `USR1 at moments of start-up (${outcomes.join(", ")}): ${closedDebuggers} debuggers opened and closed; the attacker tried ${attempts.tried} listeners, connected to ${attempts.connected}`,
        );
        assert.equal(attempts.connected, 0, "nobody reached a debugger");
        await writeFile(stateFile, saved);
        await insideOk(["systemctl", "reload", "hapgent"]);
        await expect("down ready 30% # deploy 2.0\n", saved);
        await insideOk(["systemctl", "restart", "hapgent"]);
        await expect("down ready 30% # deploy 2.0\n", saved);
        // An upgrade to a later version restarts the agent on the new package and keeps its state:
        // the state file is a conffile the agent changed, which dpkg never overwrites.
        const before = await mainPid();
        await insideOk(["dpkg", "-i", "/root/hapgent-next.deb"]);
        assert.equal(await installedVersion(inside), NEXT_VERSION);
        assert.notEqual(await mainPid(), before, "restarted");
        assert.equal((await insideOk(["systemctl", "is-active", "hapgent"])).trim(), "active");
        await expect("down ready 30% # deploy 2.0\n", saved);
        // A file this version refuses: the upgrade leaves the running agent alone and says why,
        // rather than restart it into MAINT.
        await writeFile(stateFile, '{"status":"DOWN","status":"UP"}\n');
        const kept = await mainPid();
        const refused = await inside(["dpkg", "-i", "/root/hapgent-next.deb"]);
        assert.equal(refused.code, 0, refused.stdout + refused.stderr);
        assert.match(refused.stderr, /hapgent: not restarted: .*"status" appears more than once/);
        assert.equal(await mainPid(), kept, "not restarted");
        await expect("down ready 30% # deploy 2.0\n");
        await writeFile(stateFile, saved);

        // The application's own unit takes the server out before it stops and puts it back once
        // it runs: a drop-in with ExecStop=hapgent drain --wait --idle PORT and
        // ExecStartPost=hapgent up --wait. A load balancer polls from the host.
        const appPort = await freePort();
        await writeFile(
          join(root, "etc/systemd/system/app.service"),
          [
            "[Unit]",
            "Description=an application behind HAProxy",
            "[Service]",
            "Type=exec",
            // $$ is systemd's way to write a literal $.
            `ExecStart=/usr/bin/perl -MIO::Socket::INET -e '$$s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => ${appPort}, Listen => 5, ReuseAddr => 1) or die; while ($$c = $$s->accept) { print $$c "ok\\n"; close $$c }'`,
            "",
          ].join("\n"),
        );
        await mkdir(join(root, "etc/systemd/system/app.service.d"), { recursive: true });
        await writeFile(
          join(root, "etc/systemd/system/app.service.d/hapgent.conf"),
          `[Service]\nExecStartPost=/usr/bin/hapgent up --wait\nExecStop=/usr/bin/hapgent drain --wait --idle ${appPort}\n`,
        );
        await insideOk(["systemctl", "daemon-reload"]);
        const balancer = poller(port, "127.0.0.2", 200);
        try {
          await waitFor("the load balancer learnt", () => (balancer.probes > 3 ? true : undefined));
          await insideOk(["systemctl", "start", "app"]);
          await expect("up ready 30% # deploy 2.0\n");
          await insideOk(["systemctl", "stop", "app"]);
          await expect("up drain 30% # deploy 2.0\n");
        } finally {
          await balancer.stop();
        }
        const app = await insideOk(["journalctl", "--unit=app", "--output=cat", "--no-pager"]);
        assert.match(app, /127\.0\.0\.2 (heard|hears) "up ready 30% # deploy 2\.0"/);
        assert.match(app, /127\.0\.0\.2 (heard|hears) "up drain 30% # deploy 2\.0"/);
        assert.match(app, new RegExp(`port ${appPort}: 0 connections open`));
        await writeFile(stateFile, saved);
        await insideOk(["systemctl", "reload", "hapgent"]);
        await expect("down ready 30% # deploy 2.0\n", saved);

        // The agent's own checks under the unit's sandbox: a TCP check of the application and a
        // shell check of a flag file (a fork, a new session, /bin/sh), from a root-owned file.
        await writeFile(
          join(root, "etc/hapgent/checks.json"),
          JSON.stringify({
            checks: [
              { name: "app", tcp: `127.0.0.1:${appPort}`, interval: "1s", fall: 1, rise: 1 },
              {
                name: "flag",
                shell: "test ! -e /etc/hapgent/flag",
                interval: "1s",
                fall: 1,
                rise: 1,
              },
            ],
          }),
          { mode: 0o644 },
        );
        await writeFile(
          join(root, "etc/systemd/system/hapgent.service.d/checks.conf"),
          "[Service]\nEnvironment=HAPGENT_CHECKS_FILE=/etc/hapgent/checks.json\n",
        );
        await insideOk(["systemctl", "daemon-reload"]);
        await insideOk(["systemctl", "restart", "hapgent"]);
        // The file says DOWN, as the failing check does: the operator's words stand on a tie.
        await expect("down ready 30% # deploy 2.0\n");
        await insideOk(["hapgent", "up", "--no-confirm"]);
        await expect(
          `down ready 30% # check app: tcp 127.0.0.1:${appPort}: ECONNREFUSED for 1 check\n`,
        );
        await insideOk(["systemctl", "start", "app"]);
        await expect("up ready 30% # deploy 2.0\n");
        // The command line confirms what the agent answers, checks included.
        await insideOk(["hapgent", "drain"]);
        await insideOk(["touch", "/etc/hapgent/flag"]);
        await expect("down ready 30% # check flag: exit 1 for 1 check\n");
        await insideOk(["rm", "/etc/hapgent/flag"]);
        await expect("up drain 30% # deploy 2.0\n");
        await insideOk(["systemctl", "stop", "app"]);
        await rm(join(root, "etc/systemd/system/hapgent.service.d/checks.conf"));
        await insideOk(["systemctl", "daemon-reload"]);
        await insideOk(["systemctl", "restart", "hapgent"]);
        await writeFile(stateFile, saved);
        await insideOk(["systemctl", "reload", "hapgent"]);
        await expect("down ready 30% # deploy 2.0\n", saved);
        const journal = await insideOk([
          "journalctl",
          "--unit=hapgent",
          "--output=cat",
          "--no-pager",
        ]);
        assert.match(journal, new RegExp(`listening on 127\\.0\\.0\\.1:${port}`));
        const problems = await insideOk([
          "journalctl",
          "--unit=hapgent",
          "--priority=warning",
          "--output=cat",
          "--no-pager",
        ]);
        // The USR1s above closed debuggers, and killed daemons they met before Node's own handler
        // existed (systemd restarted them); the service account's symlink made a save fail until
        // the file was put back: those are expected, nothing else.
        const expected =
          /closed the Node debugger|^check (app|flag): failing|^hapgent\.service: (Main process exited, code=killed, status=10\/USR1|Failed with result 'signal')|^Failed to start hapgent\.service|^control: the state file \/var\/lib\/hapgent\/state\.json was invalid \(cannot be read: permission denied\); (replaced|not replaced yet: the save failed, and is retried)|^cannot save state file \/var\/lib\/hapgent\/state\.json: (EACCES|EROFS)|the state file \/var\/lib\/hapgent\/state\.json was never saved with/;
        const unexpected = problems
          .split("\n")
          .filter((line) => /hapgent/i.test(line) && !expected.test(line));
        assert.deepEqual(unexpected, [], `no other warning or error logged:\n${problems}`);

        await insideOk(["dpkg", "--purge", "hapgent"]);
        await silent();
        const state = await inside(["systemctl", "is-active", "hapgent"]);
        assert.notEqual(state.stdout.trim(), "active");
        await assertPurged(root);
      } catch (err) {
        // What systemd saw is what explains a failure here.
        const journal = await inside(["journalctl", "--boot", "--no-pager", "--lines=60"], 30_000);
        throw new Error(
          `${(err as Error).message}\n--- journal of the container:\n${journal.stdout}`,
          {
            cause: err,
          },
        );
      }
    });
  }

  for (const release of RELEASES) {
    test(`under systemd (a ${release.name} root), an upgrade from 0.1.0 moves a running agent's state to /var/lib/hapgent`, async (t) => {
      let machine: Machine | undefined;
      const root = await rootFor(
        t,
        join(out, `booted-old-${release.suite}`),
        release.suite,
        "systemd",
        () => machine?.stop(),
      );
      const port = await freePort();
      await mkdir(join(root, "etc/systemd/system/hapgent.service.d"), { recursive: true });
      await writeFile(
        join(root, "etc/systemd/system/hapgent.service.d/port.conf"),
        `[Service]\nEnvironment=HAPGENT_IP=127.0.0.1 HAPGENT_PORT=${port}\n`,
      );
      await copyFile(oldLayoutDeb, join(root, "root/hapgent-old.deb"));
      await copyFile(deb, join(root, "root/hapgent.deb"));
      const intact = await rootsFiles(root);
      const container = await boot(root);
      machine = container;
      const { run: inside, runOk: insideOk } = container;
      const mainPid = async () =>
        (await insideOk(["systemctl", "show", "--property=MainPID", "--value", "hapgent"])).trim();
      try {
        await inside(["systemctl", "is-system-running", "--wait"], 120_000);
        // 0.1.0 runs, its state drained by root's command and saved in /etc/hapgent.
        await insideOk(["dpkg", "-i", "/root/hapgent-old.deb"]);
        const old = agentAt(port, join(root, "etc/hapgent/state.json"));
        await old.expect("up ready 100%\n", '{"status":"UP"}\n');
        // 0.1.0's command line, whose default file this was.
        await insideOk([
          "hapgent",
          "drain",
          "--state-file",
          "/etc/hapgent/state.json",
          "--weight",
          "25",
          "--description",
          "deploy 1.4",
        ]);
        const saved = '{"status":"DRAIN","weight":25,"description":"deploy 1.4"}\n';
        await old.expect("up drain 25% # deploy 1.4\n", saved);
        await plantLinks(
          async (args) => ({ stdout: await insideOk(args) }),
          ["state.json", "state.fleet.json"],
        );
        const before = await mainPid();

        const upgraded = await inside(["dpkg", "-i", "/root/hapgent.deb"]);
        assert.equal(upgraded.code, 0, upgraded.stdout + upgraded.stderr);
        await intact("after the upgrade of a running 0.1.0");
        // Restarted on the moved state, which it answers and can save: a change is written there.
        assert.notEqual(await mainPid(), before, "restarted");
        const moved = agentAt(port, join(root, "var/lib/hapgent/state.json"));
        await moved.expect("up drain 25% # deploy 1.4\n", saved);
        assert.equal(existsSync(join(root, "etc/hapgent/state.json")), false);
        const up = await inside(["hapgent", "up"]);
        assert.equal(up.code, 0, up.stdout + up.stderr);
        await moved.expect(
          "up ready 25% # deploy 1.4\n",
          '{"status":"UP","weight":25,"description":"deploy 1.4"}\n',
        );
        const warnings = await insideOk([
          "journalctl",
          "--unit=hapgent",
          "--priority=warning",
          "--output=cat",
          "--no-pager",
        ]);
        assert.doesNotMatch(warnings, /cannot save|not writable/, warnings);

        await insideOk(["dpkg", "--purge", "hapgent"]);
        await moved.silent();
        await intact("after a purge");
        await assertPurged(root);
      } catch (err) {
        const journal = await inside(["journalctl", "--boot", "--no-pager", "--lines=60"], 30_000);
        throw new Error(
          `${(err as Error).message}\n--- journal of the container:\n${journal.stdout}`,
          {
            cause: err,
          },
        );
      }
    });
  }

  for (const release of RELEASES) {
    test(`under systemd (a ${release.name} root), an upgrade from 0.1.0 that stopped the agent starts it again, whatever fails`, async (t) => {
      let machine: Machine | undefined;
      const root = await rootFor(
        t,
        join(out, `booted-restart-${release.suite}`),
        release.suite,
        "systemd",
        () => machine?.stop(),
      );
      const port = await freePort();
      await mkdir(join(root, "etc/systemd/system/hapgent.service.d"), { recursive: true });
      await writeFile(
        join(root, "etc/systemd/system/hapgent.service.d/port.conf"),
        `[Service]\nEnvironment=HAPGENT_IP=127.0.0.1 HAPGENT_PORT=${port}\n`,
      );
      await copyFile(oldLayoutDeb, join(root, "root/hapgent-old.deb"));
      await copyFile(deb, join(root, "root/hapgent.deb"));
      const container = await boot(root);
      machine = container;
      const { run: inside, runOk: insideOk } = container;
      const mainPid = async () =>
        (await insideOk(["systemctl", "show", "--property=MainPID", "--value", "hapgent"])).trim();
      const asService = (script: string) =>
        insideOk(["runuser", "-u", "hapgent", "--", "sh", "-c", script]);
      const namespace = await readlink(`/proc/${container.leader}/ns/pid`);
      const inThisMachine = async (pid: number) =>
        (await readlink(`/proc/${pid}/ns/pid`).catch(() => "")) === namespace;
      const old = agentAt(port, join(root, "etc/hapgent/state.json"));
      try {
        await inside(["systemctl", "is-system-running", "--wait"], 120_000);
        await insideOk(["dpkg", "-i", "/root/hapgent-old.deb"]);
        await old.expect("up ready 100%\n");
        const [uid] = (await account(root, "hapgent")) ?? [];

        // The service user holds the carry-over with a FIFO at the old name and, meanwhile,
        // makes the new name a FIFO too: writing MAINT there would wait for a reader forever.
        // It has also won the race for the state directory (made and given to it before the
        // carry-over): a FIFO at the name a copy would be made under would hold that open.
        await insideOk(["install", "-d", "-o", "hapgent", "-g", "hapgent", "/var/lib/hapgent"]);
        await asService("mkfifo /var/lib/hapgent/state.json.carry");
        await asService("cd /etc/hapgent && rm -f state.json && mkfifo state.json");
        let before = await mainPid();
        const upgrade = inside(["dpkg", "-i", "/root/hapgent.deb"]);
        await blockedCarryOver(Number(uid), inThisMachine);
        await asService("mkfifo /var/lib/hapgent/state.json");
        const upgraded = await upgrade;
        assert.equal(upgraded.code, 0, upgraded.stdout + upgraded.stderr);
        assert.match(
          upgraded.stderr,
          /\/var\/lib\/hapgent\/state\.json could not be written as the service user either/,
        );
        // Started again on the new binary, answering MAINT for a state file that is no file.
        assert.notEqual(await mainPid(), before, "restarted");
        assert.equal((await inside(["systemctl", "is-active", "hapgent"])).stdout.trim(), "active");
        await old.expect("maint 100%\n", undefined, 30_000);

        // A step after the stop that fails for another reason (here update-rc.d, as on a full
        // disk): dpkg reports the failure, and the agent it stopped is running again.
        await insideOk(["dpkg", "--purge", "hapgent"]);
        await insideOk(["dpkg", "-i", "/root/hapgent-old.deb"]);
        await old.expect("up ready 100%\n");
        before = await mainPid();
        await insideOk(["mv", "/usr/sbin/update-rc.d", "/usr/sbin/update-rc.d.real"]);
        await insideOk(["sh", "-c", "printf '#!/bin/sh\\nexit 1\\n' >/usr/sbin/update-rc.d"]);
        await insideOk(["chmod", "0755", "/usr/sbin/update-rc.d"]);
        const failed = await inside(["dpkg", "-i", "/root/hapgent.deb"]);
        await insideOk(["mv", "-f", "/usr/sbin/update-rc.d.real", "/usr/sbin/update-rc.d"]);
        assert.notEqual(failed.code, 0, failed.stdout + failed.stderr);
        assert.equal(
          (await inside(["systemctl", "is-active", "hapgent"])).stdout.trim(),
          "active",
          failed.stderr,
        );
        assert.notEqual(await mainPid(), before, "restarted");
        assert.match(failed.stderr, /postinst failed; starting the agent it stopped/);
        // The carried-over state, now from /var/lib/hapgent.
        await agentAt(port, join(root, "var/lib/hapgent/state.json")).expect(
          "up ready 100%\n",
          '{"status":"UP"}\n',
        );
        await insideOk(["dpkg", "--configure", "-a"]);
        await insideOk(["dpkg", "--purge", "hapgent"]);
        await old.silent();
        await assertPurged(root);
      } catch (err) {
        const journal = await inside(["journalctl", "--boot", "--no-pager", "--lines=60"], 30_000);
        throw new Error(
          `${(err as Error).message}\n--- journal of the container:\n${journal.stdout}`,
          { cause: err },
        );
      }
    });
  }

  test("where systemd is not PID 1 (a Debian 13 root booted with sysvinit): the LSB init script", async (t) => {
    let machine: Machine | undefined;
    const root = await rootFor(t, join(out, "sysvinit"), "trixie", "sysvinit", () =>
      machine?.stop(),
    );
    assert.equal(existsSync(join(root, "usr/lib/systemd/systemd")), false, "no systemd here");
    await copyFile(deb, join(root, "root/hapgent.deb"));
    await copyFile(nextDeb, join(root, "root/hapgent-next.deb"));
    const env = { PATH: ROOT_PATH, DEBIAN_FRONTEND: "noninteractive" };

    // Installed before the root first boots, as an image is built: linked into the runlevels,
    // started by nothing (a chroot has no runlevel).
    await execOk("chroot", [root, "dpkg", "-i", "/root/hapgent.deb"], { env, timeoutMs: 120_000 });
    assert.equal(await readlink(join(root, "etc/rc2.d/S01hapgent")), "../init.d/hapgent");
    assert.deepEqual(await processesIn(root), [], "postinst started nothing in the chroot");
    // The operator's settings, where the init script reads them as the unit does.
    const port = await freePort();
    const defaults = join(root, "etc/default/hapgent");
    const settings = `${await readFile(defaults, "utf8")}HAPGENT_IP=127.0.0.1\nHAPGENT_PORT=${port}\n`;
    await writeFile(defaults, settings);

    const container = await boot(root, "init");
    machine = container;
    const { run: inside, runOk: insideOk } = container;
    const stateFile = join(root, "var/lib/hapgent/state.json");
    const { expect, silent } = agentAt(port, stateFile);
    const pid = async () => (await insideOk(["cat", "/run/hapgent.pid"])).trim();
    try {
      // Started at boot, by init's runlevel 2 and the package's link: after rcS and rc 2 have run
      // their scripts, which on a busy host take longer than an answer's 5 s (as the systemd
      // tests wait for is-system-running).
      await expect("up ready 100%\n", '{"status":"UP"}\n', BOOT_MS);
      assert.match(await insideOk(["runlevel"]), /^N 2$/m);
      assert.match(await insideOk(["service", "hapgent", "status"]), /hapgent is running/);
      // As the unit runs it: the service user, its name once it handles signals, and only the
      // environment /etc/default/hapgent gives, none of whoever ran the script.
      await insideOk([
        "env",
        "NODE_OPTIONS=--inspect=0.0.0.0:9229",
        "HAPGENT_STATE_FILE=/tmp/elsewhere.json",
        "/etc/init.d/hapgent",
        "restart",
      ]);
      await expect("up ready 100%\n");
      const first = await pid();
      const [uid] = (await account(root, "hapgent")) ?? [];
      assert.match(
        await insideOk(["cat", `/proc/${first}/status`]),
        new RegExp(`^Uid:\\s+${uid}\\s`, "m"),
      );
      assert.equal((await insideOk(["cat", `/proc/${first}/comm`])).trim(), "hapgent");
      const environ = (await insideOk(["cat", `/proc/${first}/environ`]))
        .split("\0")
        .filter(Boolean);
      // PWD is the shell's: "/". The state file is the package's, as the unit gives it.
      assert.deepEqual(environ.sort(), [
        "HAPGENT_IP=127.0.0.1",
        `HAPGENT_PORT=${port}`,
        "HAPGENT_STATE_FILE=/var/lib/hapgent/state.json",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "PWD=/",
        "RUNTIME_DIRECTORY=/run/hapgent",
      ]);
      // The command line as root finds it, and its control socket in /run/hapgent.
      const drain = await insideOk(["hapgent", "drain", "--weight", "25"]);
      assert.match(drain, /answers: up drain 25%/);
      await expect("up drain 25%\n", '{"status":"DRAIN","weight":25}\n');
      // The deploy script's signals, from the host to the container's processes.
      const pkill = (signal: string) =>
        execOk("pkill", ["--ns", String(container.leader), "--nslist", "pid", signal, "hapgent"]);
      await pkill("-USR2");
      await expect("down ready 25%\n", '{"status":"DOWN","weight":25}\n');
      await pkill("-USR1");
      await expect("up ready 25%\n", '{"status":"UP","weight":25}\n');
      // reload: HUP, the edited file applied by the same process.
      await writeFile(stateFile, '{"status":"UP","weight":60,"description":"v2"}\n');
      await insideOk(["service", "hapgent", "reload"]);
      await expect("up ready 60% # v2\n");
      assert.equal(await pid(), first, "reload kept the process");
      // restart: a new process, the state kept.
      await insideOk(["service", "hapgent", "restart"]);
      assert.notEqual(await pid(), first, "restarted");
      await expect("up ready 60% # v2\n");
      // stop: TERM; the agent is gone and says so in the LSB way (3: not running).
      await insideOk(["service", "hapgent", "stop"]);
      await silent();
      assert.equal((await inside(["service", "hapgent", "status"])).code, 3);
      assert.notEqual(
        (await inside(["service", "hapgent", "reload"])).code,
        0,
        "nothing to reload",
      );
      await insideOk(["service", "hapgent", "start"]);
      await expect("up ready 60% # v2\n");
      // Killed (a crash, which nothing restarts without systemd): status says so, 1 for a pid
      // file without its process; start brings it back.
      await insideOk(["sh", "-c", `kill -KILL ${await pid()}`]);
      await silent();
      const crashed = await inside(["service", "hapgent", "status"]);
      assert.equal(crashed.code, 1, crashed.stdout + crashed.stderr);
      await insideOk(["service", "hapgent", "start"]);
      await expect("up ready 60% # v2\n");
      // A setting the agent refuses: start fails, with the agent's reason, instead of
      // reporting a start that did not happen.
      await writeFile(defaults, `${settings}HAPGENT_PORT=99999\n`);
      const refused = await inside(["service", "hapgent", "restart"]);
      assert.notEqual(refused.code, 0, refused.stdout + refused.stderr);
      assert.match(refused.stderr, /HAPGENT_PORT/);
      await silent();
      await writeFile(defaults, settings);
      await insideOk(["service", "hapgent", "start"]);
      await expect("up ready 60% # v2\n");
      const log = await insideOk(["cat", "/var/log/hapgent.log"]);
      assert.match(log, new RegExp(`listening on 127\\.0\\.0\\.1:${port}`));
      assert.match(log, /SIGHUP: loaded state file/);
      // The shipped logrotate rule, run by this machine's logrotate on the root's log: the lines
      // so far go to the rotated file; the running agent writes its next line at the start of
      // the emptied one (it appends), nothing lost.
      const rule = await readFile(join(root, "etc/logrotate.d/hapgent"), "utf8");
      const rotation = join(out, "logrotate");
      await mkdir(rotation, { recursive: true });
      await writeFile(
        join(rotation, "hapgent"),
        rule.replace("/var/log/hapgent.log", join(root, "var/log/hapgent.log")),
      );
      await execOk("logrotate", [
        "--force",
        "--state",
        join(rotation, "state"),
        join(rotation, "hapgent"),
      ]);
      assert.ok((await insideOk(["cat", "/var/log/hapgent.log.1"])).startsWith(log));
      await writeFile(stateFile, '{"status":"UP","weight":60,"description":"v3"}\n');
      await insideOk(["service", "hapgent", "reload"]);
      await expect("up ready 60% # v3\n");
      const rotated = await insideOk(["cat", "/var/log/hapgent.log"]);
      assert.match(rotated, /^\d{4}-\d\d-\d\dT[^\n]* SIGHUP: loaded state file [^\n]*"v3"/);

      // An upgrade restarts it on the new package, its state kept.
      const beforeUpgrade = await pid();
      await insideOk(["dpkg", "-i", "/root/hapgent-next.deb"]);
      assert.equal(await installedVersion(inside), NEXT_VERSION);
      assert.notEqual(await pid(), beforeUpgrade, "restarted by the upgrade");
      await expect("up ready 60% # v3\n");

      // Removed: stopped, and the script that stays (a conffile) knows nothing runs it: status 4.
      await insideOk(["dpkg", "--remove", "hapgent"]);
      await silent();
      assert.equal((await inside(["/etc/init.d/hapgent", "status"])).code, 4);
      assert.equal((await inside(["/etc/init.d/hapgent", "start"])).code, 0);
      // Purge: every trace gone.
      await insideOk(["dpkg", "--purge", "hapgent"]);
      assert.notEqual((await inside(["test", "-e", "/run/hapgent.pid"])).code, 0);
      assert.notEqual((await inside(["test", "-e", "/run/hapgent"])).code, 0);
      await assertPurged(root);

      // Installed on the running host, its settings put there first (as configuration
      // management does, and kept with --force-confold): started at once by postinst.
      await writeFile(defaults, settings);
      await insideOk(["dpkg", "-i", "--force-confold", "/root/hapgent.deb"]);
      await expect("up ready 100%\n", '{"status":"UP"}\n');
      assert.match(await insideOk(["service", "hapgent", "status"]), /hapgent is running/);
      t.diagnostic(
        `sysvinit: ${(await insideOk(["sh", "-c", "readlink /proc/1/exe"])).trim()} is PID 1`,
      );
    } catch (err) {
      const log = await inside(["sh", "-c", "tail -n 40 /var/log/hapgent.log"], 30_000);
      throw new Error(`${(err as Error).message}\n--- /var/log/hapgent.log:\n${log.stdout}`, {
        cause: err,
      });
    }
  });
});

/**
 * A fresh copy at `dir` of a Debian root for one test, removed when the test ends, after
 * `stopRunning` has stopped what runs from it (a daemon, a container): in one hook, so that
 * nothing still runs from the root while it is removed.
 */
async function rootFor(
  t: { after: (fn: () => Promise<void>) => void },
  dir: string,
  suite: Suite,
  kind: RootKind,
  stopRunning: () => Promise<void> | undefined,
): Promise<string> {
  t.after(async () => {
    await stopRunning();
    await rm(dir, { recursive: true, force: true });
  });
  await debianRoot(dir, suite, kind);
  return dir;
}

/** How long a container's boot may take, to the end of its init's start-up (its services run). */
const BOOT_MS = 120_000;

/**
 * The agent on `port` as a load balancer sees it: `expect` waits until it answers `line` (and,
 * given `file`, until its state file holds `file`, the change record aside), for `timeoutMs`
 * (waitFor's 5 s unless given); `silent`, until nothing answers on the port.
 */
function agentAt(port: number, stateFile: string) {
  return {
    async expect(line: string, file?: string, timeoutMs?: number) {
      await waitFor(
        `reply ${line}`,
        async () => ((await probe(port).catch(() => "")) === line ? true : undefined),
        timeoutMs,
      );
      if (file !== undefined) {
        await waitFor(`file ${file}`, async () =>
          withoutRecord(await readFile(stateFile, "utf8")) === file ? true : undefined,
        );
      }
    },
    silent: () =>
      waitFor("the agent to stop answering", async () =>
        (await probe(port).then(
          () => false,
          () => true,
        ))
          ? true
          : undefined,
      ),
  };
}

/** The version of hapgent dpkg has installed. */
async function installedVersion(
  inside: (args: string[]) => Promise<{ code: number | null; stdout: string }>,
): Promise<string> {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's format, not JavaScript's
  return (await inside(["dpkg-query", "-W", "-f", "${Version}", "hapgent"])).stdout;
}

/**
 * `deb` repacked, from one extraction, as the next version (the same files) and as the previous
 * one (its unit in /lib/systemd/system, as it was before), for upgrades; returns their paths.
 */
async function repackVersions(
  deb: string,
  out: string,
): Promise<{ next: string; previous: string }> {
  const dir = join(out, "repack");
  await execOk("dpkg-deb", ["--raw-extract", deb, dir]);
  const build = async (version: string) => {
    const control = join(dir, "DEBIAN/control");
    await writeFile(
      control,
      (await readFile(control, "utf8")).replace(/^Version: .*$/m, `Version: ${version}`),
    );
    const repacked = join(out, `hapgent_${version}_amd64.deb`);
    await execOk("dpkg-deb", ["--root-owner-group", "-Zgzip", "-z1", "--build", dir, repacked]);
    return repacked;
  };
  const next = await build(NEXT_VERSION);
  await mkdir(join(dir, "lib/systemd/system"), { recursive: true });
  await rename(
    join(dir, "usr/lib/systemd/system/hapgent.service"),
    join(dir, "lib/systemd/system/hapgent.service"),
  );
  await rm(join(dir, "usr/lib/systemd"), { recursive: true });
  const md5sums = join(dir, "DEBIAN/md5sums");
  await writeFile(
    md5sums,
    (await readFile(md5sums, "utf8")).replace(
      "usr/lib/systemd/system/hapgent.service",
      "lib/systemd/system/hapgent.service",
    ),
  );
  const previous = await build(PREVIOUS_VERSION);
  await rm(dir, { recursive: true, force: true });
  return { next, previous };
}

/** Runs a command in `root` with chroot, failing unless it exits 0; what it printed. */
function chrootRunner(root: string) {
  return (args: string[], timeoutMs = 120_000) =>
    execOk("chroot", [root, ...args], {
      env: { PATH: ROOT_PATH, DEBIAN_FRONTEND: "noninteractive" },
      timeoutMs,
    });
}

/**
 * Root's canary file (made here, 0600 in /root) and /etc/shadow, as they are now; returns the
 * check that both are still so: the same content (but the hapgent user's line, which the
 * package adds and removes), owner and mode, one link each.
 */
async function rootsFiles(root: string): Promise<(when: string) => Promise<void>> {
  const canary = join(root, CANARY);
  await writeFile(canary, CANARY_TEXT, { mode: 0o600 });
  const shadow = join(root, "etc/shadow");
  const others = async () =>
    (await readFile(shadow, "utf8")).split("\n").filter((line) => !line.startsWith("hapgent:"));
  const shadowText = await others();
  const shape = async (path: string) => {
    const stats = await lstat(path);
    return [stats.isFile(), stats.uid, stats.gid, stats.mode, stats.nlink];
  };
  const shadowShape = await shape(shadow);
  assert.deepEqual(await shape(canary), [true, 0, 0, 0o100600, 1]);
  return async (when) => {
    assert.ok(existsSync(canary), `${CANARY} is still there ${when}`);
    assert.equal(await readFile(canary, "utf8"), CANARY_TEXT, `${CANARY} unchanged ${when}`);
    assert.deepEqual(await shape(canary), [true, 0, 0, 0o100600, 1], `${CANARY} ${when}`);
    assert.deepEqual(await others(), shadowText, `/etc/shadow unchanged ${when}`);
    assert.deepEqual(await shape(shadow), shadowShape, `/etc/shadow ${when}`);
  };
}

/**
 * The service user's attack: in every directory of the agent it can write, each name a script or
 * dpkg may touch (the state, the fleet's cache, temporary files, dpkg's copies of a conffile)
 * becomes a link to root's canary, /etc/shadow or /root, and /etc/shadow is hard-linked where
 * the kernel allows it; then it tries to put its own directory in /var/lib/hapgent's place.
 * `keep` are names left as they are. Returns what it planted, failing if it could plant nothing.
 */
async function plantLinks(
  inRoot: (args: string[]) => Promise<{ stdout: string }>,
  keep: string[] = [],
): Promise<string> {
  const names = [
    "state.json",
    "state.fleet.json",
    ".state.json.tmp-1-aaaaaaaaaaaa",
    ".state.fleet.json.tmp-1-bbbbbbbbbbbb",
    "state.json.carry",
    "state.fleet.json.carry",
    ...["new", "old", "dist", "bak", "tmp", "backup", "remove"].map((s) => `state.json.dpkg-${s}`),
    "state.json~",
  ].filter((name) => !keep.includes(name));
  const script = `
    planted=
    for dir in /var/lib/hapgent /etc/hapgent; do
      [ -w "$dir" ] || continue
      i=0
      for name in ${names.map((n) => `'${n}'`).join(" ")}; do
        case $((i % 3)) in 0) to=${CANARY} ;; 1) to=/etc/shadow ;; *) to=/root ;; esac
        rm -rf "$dir/$name" && ln -s "$to" "$dir/$name" && planted="$planted $dir/$name->$to"
        i=$((i + 1))
      done
      ln /etc/shadow "$dir/shadow.hardlink" 2>/dev/null && planted="$planted $dir/shadow.hardlink"
    done
    mv -T /var/lib/hapgent /var/lib/hapgent.moved 2>/dev/null &&
      ln -s /root /var/lib/hapgent && planted="$planted /var/lib/hapgent->/root"
    echo "$planted"`;
  const planted = (await inRoot(["runuser", "-u", "hapgent", "--", "sh", "-c", script])).stdout;
  assert.notEqual(planted.trim(), "", "the service user could write somewhere");
  return planted.trim();
}

/**
 * The layout that keeps root's scripts from the service user's links: /etc/hapgent is root's and
 * not writable by the service user, who owns /var/lib/hapgent; no conffile is in either (but an
 * obsolete one of 0.1.0, which dpkg remembers).
 */
async function assertLayout(root: string, inRoot: ReturnType<typeof chrootRunner>): Promise<void> {
  const [uid, gid] = (await account(root, "hapgent")) ?? [];
  for (const [path, owner] of [
    ["etc/hapgent", [0, 0]],
    ["var/lib/hapgent", [uid, gid]],
  ] as const) {
    const stats = await lstat(join(root, path));
    assert.deepEqual(
      [stats.isDirectory(), stats.uid, stats.gid, stats.mode & 0o7777],
      [true, ...owner, 0o755],
      path,
    );
  }
  const writable = await exec(
    "chroot",
    [root, "runuser", "-u", "hapgent", "--", "test", "-w", "/etc/hapgent"],
    {
      env: { PATH: ROOT_PATH },
    },
  );
  assert.notEqual(writable.code, 0, "the service user cannot write /etc/hapgent");
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's format, not JavaScript's
  const conffiles = (await inRoot(["dpkg-query", "-W", "-f", "${Conffiles}", "hapgent"])).stdout;
  for (const line of conffiles.split("\n").filter((l) => /\/(etc\/hapgent|var\/lib)\//.test(l))) {
    assert.match(line, /^ \/etc\/hapgent\/state\.json [0-9a-f]+ obsolete$/, conffiles);
  }
  const state = await lstat(join(root, "var/lib/hapgent/state.json"));
  assert.deepEqual([state.uid, state.gid], [uid, gid], "state.json is the service user's");
}

/**
 * `deb` repacked as the package of 35f5fc8 was, for upgrades from it: its maintainer scripts,
 * unit, init script, environment file and conffiles (the state in /etc/hapgent, given to the
 * service user), with this tree's binary, whose default state file is 0.1.0's.
 */
async function repackOldLayout(deb: string, out: string): Promise<string> {
  const dir = join(out, "repack-old-layout");
  await execOk("dpkg-deb", ["--raw-extract", deb, dir]);
  const old = async (path: string) =>
    (await execOk("git", ["show", `${OLD_LAYOUT_COMMIT}:${path}`], { cwd: REPO })).stdout;
  for (const [from, to] of [
    ["packaging/postinst", "DEBIAN/postinst"],
    ["packaging/prerm", "DEBIAN/prerm"],
    ["packaging/postrm", "DEBIAN/postrm"],
    ["packaging/hapgent.service", "usr/lib/systemd/system/hapgent.service"],
    ["packaging/init.d", "etc/init.d/hapgent"],
    ["packaging/default", "etc/default/hapgent"],
    ["packaging/state.json", "etc/hapgent/state.json"],
  ] as const) {
    await writeFile(join(dir, to), await old(from));
  }
  await rm(join(dir, "DEBIAN/preinst"), { force: true });
  await rm(join(dir, "usr/share/hapgent/state.json"), { force: true });
  const sums = await execOk("sh", ["-c", "find usr -type f -print0 | sort -z | xargs -0 md5sum"], {
    cwd: dir,
  });
  await writeFile(join(dir, "DEBIAN/md5sums"), sums.stdout);
  await writeFile(
    join(dir, "DEBIAN/conffiles"),
    [
      "/etc/default/hapgent",
      "/etc/hapgent/state.json",
      "/etc/init.d/hapgent",
      "/etc/logrotate.d/hapgent",
      "",
    ].join("\n"),
  );
  const control = join(dir, "DEBIAN/control");
  await writeFile(
    control,
    (await readFile(control, "utf8")).replace(/^Version: .*$/m, `Version: ${OLD_LAYOUT_VERSION}`),
  );
  const repacked = join(out, `hapgent_${OLD_LAYOUT_VERSION}_amd64.deb`);
  await execOk("dpkg-deb", ["--root-owner-group", "-Zgzip", "-z1", "--build", dir, repacked]);
  await rm(dir, { recursive: true, force: true });
  return repacked;
}

/** lintian's result, failing on any error or warning tag; returns what it said, for the log. */
function lintianVerdict(result: { code: number | null; stdout: string; stderr: string }): string {
  const tags = result.stdout.split("\n").filter((line) => /^[EWIXP]: /.test(line));
  assert.deepEqual(
    tags.filter((line) => /^[EW]: /.test(line)),
    [],
    result.stdout,
  );
  assert.equal(result.code, 0, `${result.stdout}\n${result.stderr}`);
  return `lintian: ${tags.length === 0 ? "no tags" : tags.join("; ")}`;
}

/**
 * A local attacker on the host: reads /proc/net/tcp (any user may) every few milliseconds and
 * connects to every listening socket a Node debugger could be: on the limited broadcast address,
 * where hapgent's flags put it, and on the default 127.0.0.1:9229.
 */
function debuggerAttacker() {
  let running = true;
  let tried = 0;
  let connected = 0;
  const seen = new Set<string>();
  const loop = (async () => {
    while (running) {
      const table = await readFile("/proc/net/tcp", "utf8").catch(() => "");
      for (const row of table.split("\n").slice(1)) {
        const [, local, , state] = row.trim().split(/\s+/);
        // 0A is LISTEN; addresses are little-endian hex: FFFFFFFF, and 0100007F:240D (9229).
        if (state !== "0A" || local === undefined) continue;
        const [hexAddress = "", hexPort = ""] = local.split(":");
        if (hexAddress !== "FFFFFFFF" && local !== "0100007F:240D") continue;
        if (seen.has(local)) continue;
        seen.add(local);
        const port = Number.parseInt(hexPort, 16);
        for (const host of [
          hexAddress === "FFFFFFFF" ? "255.255.255.255" : "127.0.0.1",
          "127.0.0.1",
        ]) {
          tried++;
          const reached = await new Promise<boolean>((resolve) => {
            const socket = connect({ host, port });
            socket.on("connect", () => {
              socket.destroy();
              resolve(true);
            });
            socket.on("error", () => resolve(false));
          });
          if (reached) connected++;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { tried, connected };
    },
  };
}

/** The environment for a nested test run: without this runner's own child-process protocol. */
function suiteEnv(binary: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, HAPGENT_TEST_BINARY: binary };
  delete env.NODE_TEST_CONTEXT;
  return env;
}

/**
 * Checks the unit as installed in `root` with the root's own systemd (that of the release):
 * systemd-analyze verify with no complaint.
 */
async function validateUnitIn(root: string, t: { diagnostic: (text: string) => void }) {
  // --man=no: the minimal root has no man; the page itself is checked where it is built.
  const verify = await exec(
    "unshare",
    privateMounts(
      'mount -t proc proc "$0/proc" && exec chroot "$0" systemd-analyze verify --man=no hapgent.service',
      [root],
    ),
    { env: { PATH: ROOT_PATH } },
  );
  assert.equal(verify.code, 0, verify.stderr);
  assert.equal(verify.stderr, "", "systemd-analyze verify has no complaint");
  assert.ok((await lstat(join(root, "usr/share/man/man8/hapgent.8.gz"))).isFile());
  t.diagnostic("systemd-analyze verify: clean");
}

interface InRoot {
  readonly child: ChildProcess;
  readonly done: Promise<{ code: number | null; stdout: string; stderr: string }>;
  stderr(): string;
  stop(): Promise<void>;
}

/**
 * Runs `command` in `root` (with chroot, as `user` when given) with /proc mounted in a mount
 * namespace of its own that ends with it. unshare, sh and chroot each exec the next, so the
 * child's pid is the command's.
 */
function startInRoot(
  root: string,
  command: string[],
  { env = {}, user }: { env?: Record<string, string>; user?: string } = {},
): InRoot {
  const chroot = [
    "chroot",
    ...(user === undefined ? [] : [`--userspec=${user}`]),
    root,
    ...command,
  ];
  const child = spawn(
    "unshare",
    privateMounts('mount -t proc proc "$0/proc" && exec "$@"', [root, ...chroot]),
    { env: { PATH: ROOT_PATH, ...env }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on("close", (code) => resolve({ code, stdout, stderr })),
  );
  return {
    child,
    done,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await done;
    },
  };
}

const HOST_PID_NS = await readlink("/proc/self/ns/pid");

interface Machine {
  /** The container's init, as the host sees it. */
  readonly leader: number;
  run(
    args: string[],
    timeoutMs?: number,
  ): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** run, failing unless the command exits 0; its stdout. */
  runOk(args: string[], timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Boots `root` with systemd-nspawn (host network) and runs commands inside with nsenter. `init`
 * is the name of the root's init: systemd, or sysvinit's init.
 */
async function boot(root: string, init: "systemd" | "init" = "systemd"): Promise<Machine> {
  const console: string[] = [];
  const nspawn = spawn(
    "systemd-nspawn",
    [
      "--quiet",
      "--directory",
      root,
      "--boot",
      "--console=read-only",
      "--register=no",
      "--keep-unit",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  nspawn.stdout?.setEncoding("utf8").on("data", (chunk: string) => console.push(chunk));
  nspawn.stderr?.setEncoding("utf8").on("data", (chunk: string) => console.push(chunk));
  const exited = new Promise<void>((resolve) => nspawn.on("close", () => resolve()));
  const leader = await waitFor(
    `${init} to start in the container`,
    async () => {
      if (nspawn.exitCode !== null) throw new Error(`systemd-nspawn exited:\n${console.join("")}`);
      const children = await readFile(
        `/proc/${nspawn.pid}/task/${nspawn.pid}/children`,
        "utf8",
      ).catch(() => "");
      // systemd-nspawn first forks a helper that exits once it has forked the container's
      // init: the leader is the child that runs systemd in a pid namespace of its own.
      for (const pid of children.trim().split(/\s+/).filter(Boolean)) {
        const [comm, ns] = await Promise.all([
          readFile(`/proc/${pid}/comm`, "utf8").catch(() => ""),
          readlink(`/proc/${pid}/ns/pid`).catch(() => ""),
        ]);
        if (comm.trim() === init && ns !== "" && ns !== HOST_PID_NS) return Number(pid);
      }
      return undefined;
    },
    30_000,
  ).catch(async (err: Error) => {
    await stopContainer(nspawn, exited, undefined);
    throw err;
  });
  const run: Machine["run"] = (args, timeoutMs = 120_000) =>
    exec(
      "nsenter",
      [
        "--target",
        String(leader),
        "--mount",
        "--uts",
        "--ipc",
        "--net",
        "--pid",
        "--root",
        "--wd",
        "--",
        ...args,
      ],
      { env: { PATH: ROOT_PATH, DEBIAN_FRONTEND: "noninteractive" }, timeoutMs },
    );
  return {
    leader,
    run,
    async runOk(args, timeoutMs) {
      const result = await run(args, timeoutMs);
      assert.equal(result.code, 0, `${args.join(" ")}: ${result.stdout}${result.stderr}`);
      return result.stdout;
    },
    async stop() {
      // sysvinit halts at runlevel 0; systemd powers off on systemd-nspawn's TERM.
      if (init === "init" && nspawn.exitCode === null) {
        await run(["telinit", "0"], 10_000).catch(() => undefined);
        await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 10_000))]);
      }
      await stopContainer(nspawn, exited, leader);
    },
  };
}

/**
 * Stops a container: TERM asks its systemd to power off; if it has not within 20 s, KILL its
 * init, which ends every process of its pid namespace, and systemd-nspawn. Killing only
 * systemd-nspawn would leave the container running, adopted by the host's init.
 */
async function stopContainer(
  nspawn: ChildProcess,
  exited: Promise<void>,
  leader: number | undefined,
): Promise<void> {
  if (nspawn.exitCode !== null || nspawn.signalCode !== null) return;
  nspawn.kill("SIGTERM");
  const timer = setTimeout(() => {
    if (leader !== undefined) {
      try {
        process.kill(leader, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    nspawn.kill("SIGKILL");
  }, 20_000);
  await exited;
  clearTimeout(timer);
}
