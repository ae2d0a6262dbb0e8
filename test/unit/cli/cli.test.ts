/** The command line in this process: usage errors, help, finding daemons in a made-up /proc. */
import assert from "node:assert/strict";
import { chmod, chown, mkdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CLI_EXIT } from "../../../src/cli/cli.js";
import { systemUnit } from "../../../src/cli/daemons.js";
import { unnamedStateFile } from "../../../src/cli/target.js";
import { invoker } from "../../../src/cli/user.js";
import { reply } from "../../../src/core/reply.js";
import { parseState, type State } from "../../../src/core/state.js";
import { createAgentServer } from "../../../src/daemon/server.js";
import { cliInProcess, freePort, IS_ROOT, tempDir, withoutRecord } from "../../helpers.js";

describe("hapgent set and its short forms", () => {
  const invalid: [string[], string][] = [
    [["set", "UP", "--weight", "1.5"], "hapgent: --weight must be an integer 0-255, got 1.5\n"],
    [["set", "UP", "--weight", "300"], "hapgent: --weight must be an integer 0-255, got 300\n"],
    [["drain", "--service", "web", "--maxconn", "70000"], "--maxconn must be an integer 0-65535"],
    [["set", "UP", "--weight", "256"], "weight must be an integer 0-255, got 256"],
    [["up", "--weight", "50%"], 'weight must be an integer 0-255, got "50%"'],
    [["up", "--maxconn=-1"], "maxconn must be an integer 0-65535, got -1"],
    [["up", "--maxconn", "-1"], "Option '--maxconn' argument is ambiguous"],
    [
      ["up", "--description", "two\nlines"],
      "description must be 1-200 characters of printable text",
    ],
    [["up", "--description", ""], "description must be 1-200 characters of printable text"],
    [
      ["set", "FAILED"],
      'status must be one of UP, DOWN, READY, DRAIN, FAIL, MAINT, STOPPED, got "FAILED"',
    ],
    [["set"], "set needs a STATUS"],
    [["set", "UP", "DOWN"], 'unexpected argument "DOWN"'],
    [["up", "--weight", "5", "--no-weight"], "--weight and --no-weight contradict each other"],
    [["up", "--wieght", "5"], "hapgent: unknown option --wieght; did you mean --weight? (see"],
    [["up", "--desc", "x"], "unknown option --desc; did you mean --description? (see hapgent up"],
    [["set", "UP", "--descr=x"], "unknown option --descr; did you mean --description?"],
    [["drain", "--idel", "80"], "unknown option --idel; did you mean --idle?"],
    [["up", "--zzz"], "hapgent: unknown option --zzz (see hapgent up --help)\n"],
    [["drian"], 'unknown command "drian"; did you mean drain? (see hapgent --help)'],
    [["up", "--json"], "--json is not an option of up"],
    [["up", "--timeout", "0"], "--timeout must be a number of seconds above 0 and at most 3600"],
    [["up", "--timeout", "3601"], 'at most 3600, got "3601"'],
    [["up", "--state-file", ""], "--state-file needs a value"],
    [["toString"], 'unknown command "toString"'],
    [["up", "--service", "x".repeat(101)], "--service must be 1-100 printable ASCII characters"],
    [["up", "--port", "70000"], '--port "70000" is invalid; expected an integer 1-65535'],
    [["frobnicate"], 'unknown command "frobnicate"'],
  ];
  for (const [args, message] of invalid) {
    test(`refuses ${JSON.stringify(args)} with exit 2 and writes nothing`, async (t) => {
      const dir = await tempDir(t);
      const stateFile = join(dir, "state.json");
      await writeFile(stateFile, '{"status":"UP","weight":30}');
      const before = await stat(stateFile);
      const result = await cliInProcess(t, args, { env: { HAPGENT_STATE_FILE: stateFile } });
      assert.equal(result.code, CLI_EXIT.USAGE, result.stderr);
      assert.ok(result.stderr.includes(message), result.stderr);
      // Bad arguments are the arguments' fault, whatever the file holds.
      assert.ok(!result.stderr.includes(stateFile), result.stderr);
      assert.equal(result.stdout, "");
      assert.deepEqual(result.reloaded, []);
      assert.equal(withoutRecord(await readFile(stateFile, "utf8")), '{"status":"UP","weight":30}');
      assert.equal((await stat(stateFile)).mtimeMs, before.mtimeMs);
    });
  }

  test("an unknown option of any command gets the closest of that command's own", async (t) => {
    const cases: [string[], string][] = [
      [["status", "--statefile", "x"], "--state-file"],
      [["status", "--jsn"], "--json"],
      [["check", "--state", "x"], "--state-file"],
      [["fleet", "status", "--endpont", "x"], "--endpoints"],
      [["fleet", "set", "k", "up", "--wieght", "5"], "--weight"],
      [["down", "--no-confrim"], "--no-confirm"],
      [["up", "--wait-timout", "5"], "--wait-timeout"],
    ];
    for (const [args, near] of cases) {
      const result = await cliInProcess(t, args);
      assert.equal(result.code, CLI_EXIT.USAGE, `${args}: ${result.stderr}`);
      const given = args.find((arg) => arg.startsWith("--"));
      assert.match(
        result.stderr,
        new RegExp(
          `^hapgent: unknown option ${given}; did you mean ${near}\\? \\(see hapgent ${args[0]} --help\\)\n$`,
        ),
      );
    }
    // Only the command's own: status takes no --weight, so it is suggested nothing.
    const status = await cliInProcess(t, ["status", "--wieght", "5"]);
    assert.equal(status.stderr, "hapgent: unknown option --wieght (see hapgent status --help)\n");
  });

  test("a bad --service is refused before the file is read", async (t) => {
    const dir = await tempDir(t);
    const stateFile = join(dir, "state.json");
    await writeFile(stateFile, '{"status":"UP","wieght":3}');
    const result = await cliInProcess(t, ["up", "--service", "two words"], {
      env: { HAPGENT_STATE_FILE: stateFile },
    });
    assert.equal(result.code, CLI_EXIT.USAGE);
    assert.equal(
      result.stderr,
      'hapgent: --service must be 1-100 printable ASCII characters without spaces, as HAProxy sends it with agent-send (without the line end), got "two words"\n',
    );
  });

  test("check looks at the state file's variable only", async (t) => {
    const result = await cliInProcess(t, ["check", "--state-file", "/nonexistent/s.json"], {
      env: { HAPGENT_PORT: "not a port" },
    });
    assert.equal(result.code, CLI_EXIT.INVALID_FILE);
    assert.equal(result.stderr, "/nonexistent/s.json: does not exist\n");
  });
});

test("a read-only command never says that nothing was written", async (t) => {
  // A port nothing listens on: etcd cannot be reached.
  const endpoint = `http://127.0.0.1:${await freePort()}`;
  const key = "/hapgent/host/h1";
  const read = await cliInProcess(t, ["fleet", "status", key, "--endpoints", endpoint]);
  assert.equal(read.code, CLI_EXIT.ETCD, read.stderr);
  assert.equal(read.stderr, `hapgent: cannot reach etcd: ${endpoint}: ECONNREFUSED\n`);
  for (const args of [
    ["fleet", "set", key, "up"],
    ["fleet", "clear", key],
  ]) {
    const result = await cliInProcess(t, [...args, "--endpoints", endpoint]);
    assert.equal(result.code, CLI_EXIT.ETCD, result.stderr);
    assert.equal(
      result.stderr,
      `hapgent: cannot reach etcd: ${endpoint}: ECONNREFUSED; nothing was written\n`,
    );
  }
});

describe("help and version", () => {
  test("every help text fits 80 columns", async (t) => {
    for (const args of [["--help"], ["status", "--help"], ["set", "--help"], ["check", "--help"]]) {
      const result = await cliInProcess(t, args);
      for (const line of result.stdout.split("\n")) {
        assert.ok(
          [...line].length <= 80,
          `${args.join(" ")}: ${[...line].length} columns: ${line}`,
        );
      }
    }
  });
});

test("no file named and no daemon: the default file, else the package's when only it exists", () => {
  const table: [boolean, boolean, string][] = [
    // [/etc/hapgent/state.json exists, /var/lib/hapgent/state.json exists, the file used]
    [false, false, "/etc/hapgent/state.json"],
    [true, false, "/etc/hapgent/state.json"],
    [false, true, "/var/lib/hapgent/state.json"],
    [true, true, "/etc/hapgent/state.json"],
  ];
  for (const [inDefault, inPackage, expected] of table) {
    assert.equal(
      unnamedStateFile({ default: inDefault, package: inPackage }),
      expected,
      `default ${inDefault}, package ${inPackage}`,
    );
  }
});

describe("finding the daemon (fake /proc)", () => {
  const me = process.getuid?.() ?? 0;
  /**
   * A /proc with one hapgent daemon (pid 101, running as this test's user), one hapgent command
   * and one other process; `extra` adds daemons as [pid, uid, environ, cgroup].
   */
  async function fakeProc(
    dir: string,
    port: number,
    stateFile: string,
    extra: [number, number, string, string][] = [],
  ) {
    const proc = join(dir, "proc");
    const entries: [number, string, string, string, number, string][] = [
      [
        101,
        "hapgent",
        "hapgent\0\0\0",
        `HAPGENT_PORT=${port}\0HAPGENT_IP=127.0.0.1\0HAPGENT_STATE_FILE=state.json\0`,
        me,
        "0::/user.slice/user-0.slice/session-1.scope\n",
      ],
      [
        102,
        "hapgent",
        "/usr/bin/hapgent\0set\0down\0",
        "HAPGENT_STATE_FILE=/elsewhere.json\0",
        me,
        "",
      ],
      [103, "node", "node\0server.js\0", "", me, ""],
      ...extra.map(
        ([pid, uid, environ, cgroup]): [number, string, string, string, number, string] => [
          pid,
          "hapgent",
          "hapgent\0",
          environ,
          uid,
          cgroup,
        ],
      ),
    ];
    for (const [pid, comm, cmdline, environ, uid, cgroup] of entries) {
      const at = join(proc, String(pid));
      await mkdir(at, { recursive: true });
      await writeFile(join(at, "comm"), `${comm}\n`);
      await writeFile(join(at, "cmdline"), cmdline);
      await writeFile(join(at, "environ"), environ);
      await writeFile(join(at, "status"), `Name:\t${comm}\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\n`);
      await writeFile(join(at, "cgroup"), cgroup);
      const afterName = ["S", ...Array.from({ length: 18 }, () => "0"), String(1000 + pid)];
      await writeFile(join(at, "stat"), `${pid} (${comm}) ${afterName.join(" ")} 0 0\n`);
      await symlink(dir, join(at, "cwd"));
    }
    await writeFile(stateFile, '{"status":"UP"}');
    return proc;
  }

  test("with one daemon and no file named, the command uses that daemon's file and address", async (t) => {
    const dir = await tempDir(t);
    let state: State = { status: "UP" };
    const server = createAgentServer({ reply: () => reply(state) });
    const { port } = await server.listen("127.0.0.1", 0);
    t.after(() => server.close());
    const proc = await fakeProc(dir, port, join(dir, "state.json"));
    const result = await cliInProcess(t, ["drain", "--weight", "40"], {
      procRoot: proc,
      // What the daemon does on HUP: read the file.
      reload: () => {
        void readFile(join(dir, "state.json")).then((bytes) => {
          const parsed = parseState(bytes);
          if (parsed.ok) state = parsed.state;
        });
      },
    });
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.deepEqual(result.reloaded, [101]);
    assert.equal(
      withoutRecord(await readFile(join(dir, "state.json"), "utf8")),
      '{"status":"DRAIN","weight":40}\n',
    );
    assert.ok(result.stdout.includes("hapgent pid 101 answers: up drain 40%"));
  });

  test("with two daemons and no file named, every command says which there are and exits 6", async (t) => {
    const dir = await tempDir(t);
    const other = join(dir, "other.json");
    const proc = await fakeProc(dir, 1, join(dir, "state.json"), [
      [601, me, `HAPGENT_PORT=2\0HAPGENT_STATE_FILE=${other}\0`, ""],
    ]);
    for (const args of [["status"], ["status", "--json"], ["down"]]) {
      const result = await cliInProcess(t, args, { procRoot: proc });
      assert.equal(
        result.code,
        CLI_EXIT.SEVERAL_AGENTS,
        `${args}: ${result.stdout}${result.stderr}`,
      );
      // Not a word of the default file, which neither daemon serves.
      assert.equal(result.stdout, "", `${args}`);
      assert.equal(
        result.stderr,
        `hapgent: 2 hapgent daemons run here and no state file is named: pid 101 (${me === 0 ? "root" : `uid ${me}`}) serves ${join(dir, "state.json")} on 127.0.0.1:1; pid 601 (${me === 0 ? "root" : `uid ${me}`}) serves ${other} on 0.0.0.0:2. Name the file of the one meant with --state-file (or HAPGENT_STATE_FILE)\n`,
      );
      assert.deepEqual(result.reloaded, []);
    }
    assert.equal(await readFile(join(dir, "state.json"), "utf8"), '{"status":"UP"}');
    const named = await cliInProcess(t, ["status", "--json", "--state-file", other], {
      procRoot: proc,
    });
    assert.deepEqual(JSON.parse(named.stdout).agents, [601], named.stderr);
  });

  test("a named file that no daemon serves signals nothing", async (t) => {
    const dir = await tempDir(t);
    const proc = await fakeProc(dir, 1, join(dir, "state.json"));
    const result = await cliInProcess(t, ["up", "--state-file", join(dir, "other.json")], {
      procRoot: proc,
    });
    assert.equal(result.code, CLI_EXIT.NO_AGENT);
    assert.deepEqual(result.reloaded, []);
  });

  test("a daemon of another user names no file, and one claiming the file blocks nothing", async (t) => {
    const dir = await tempDir(t);
    const other = me + 4242;
    const decoy = `HAPGENT_PORT=1\0HAPGENT_STATE_FILE=${join(dir, "decoy.json")}\0`;
    // Without 101, the only other daemon would otherwise have named its file.
    const proc = await fakeProc(dir, 1, join(dir, "state.json"), [[201, other, decoy, ""]]);
    await rm(join(proc, "101"), { recursive: true });
    const named = await cliInProcess(t, ["status", "--json"], { procRoot: proc });
    assert.equal(JSON.parse(named.stdout).stateFile, "/etc/hapgent/state.json");

    // 101 serves b/state.json; 202, of another user, claims it too.
    const file = join(dir, "b", "state.json");
    const claim = `HAPGENT_PORT=1\0HAPGENT_STATE_FILE=${file}\0`;
    const claimed = await fakeProc(join(dir, "b"), 1, file, [[202, other, claim, ""]]);
    const result = await cliInProcess(t, ["down", "--no-wait", "--state-file", file], {
      procRoot: claimed,
    });
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.deepEqual(result.reloaded, [101]);
  });

  test("a daemon in a hapgent system service names the file, used with its user's rights", {
    skip: !IS_ROOT && "needs root: only root may act as the service's user",
  }, async (t) => {
    const dir = await tempDir(t);
    const other = me + 4242;
    const environ = `HAPGENT_PORT=1\0HAPGENT_STATE_FILE=${join(dir, "svc.json")}\0`;
    const proc = await fakeProc(dir, 1, join(dir, "state.json"), [
      [301, other, environ, "0::/system.slice/hapgent.service\n"],
    ]);
    await rm(join(proc, "101"), { recursive: true });
    const result = await cliInProcess(t, ["status", "--json"], {
      procRoot: proc,
      become: "record",
    });
    assert.equal(JSON.parse(result.stdout).stateFile, join(dir, "svc.json"));
    assert.deepEqual(result.became, [other]);
  });

  test("a daemon whose word is not taken is named in a note, never silently passed over", async (t) => {
    const dir = await tempDir(t);
    const other = me + 4242;
    const environ = `HAPGENT_PORT=1\0HAPGENT_STATE_FILE=${join(dir, "theirs.json")}\0`;
    const proc = await fakeProc(dir, 1, join(dir, "state.json"), [[401, other, environ, "0::/\n"]]);
    await rm(join(proc, "101"), { recursive: true });
    const result = await cliInProcess(t, ["status"], { procRoot: proc });
    assert.match(
      result.stdout,
      new RegExp(
        `note        hapgent pid 401 \\(uid ${other}\\) was not asked which file it serves: it runs as a user who cannot change this one and not as a hapgent system service; name its file with --state-file to use it`,
      ),
    );
  });

  test("a daemon's huge environment or its escapes cannot hurt the command", async (t) => {
    const dir = await tempDir(t);
    // Two million bytes of variables, as another user may give a process of theirs.
    const huge = `${"X=y\0".repeat(500_000)}HAPGENT_PORT=1\0`;
    const escapes = "HAPGENT_PORT=\u001b[2J\u202e9\0";
    const proc = await fakeProc(dir, 1, join(dir, "state.json"), [
      [501, me, huge, ""],
      [502, me, escapes, ""],
    ]);
    const result = await cliInProcess(t, ["status", "--state-file", join(dir, "state.json")], {
      procRoot: proc,
    });
    assert.match(result.stdout, /hapgent pid 501 .*: its environment is larger than 1 MiB/);
    assert.match(
      result.stdout,
      /hapgent pid 502 .*: HAPGENT_PORT="\\u001b\[2J\\u202e9" is invalid/,
    );
    for (const raw of ["\u001b", "\u202e"]) assert.ok(!result.stdout.includes(raw), "escaped");
  });

  test("a file whose directory belongs to a uid without an account is refused, not a crash", {
    skip: !IS_ROOT && "needs root to give a directory away",
  }, async (t) => {
    const dir = await tempDir(t);
    await chmod(dir, 0o755);
    await mkdir(join(dir, "ghost"));
    await chown(join(dir, "ghost"), 4_000_000, 4_000_000);
    const result = await cliInProcess(t, ["check", join(dir, "ghost", "state.json")]);
    assert.equal(result.code, CLI_EXIT.UNSAFE_PATH, result.stderr);
    assert.match(
      result.stderr,
      /cannot act on .*ghost\/state\.json as uid 4000000, who controls it/,
    );
  });
});

test("invoker: the record names who ran the command, and sudo's user only for root", () => {
  const accounts = new Set(["root", "alice", "bob"]);
  const isAccount = (name: string) => accounts.has(name);
  const cases: [number, string | undefined, string | undefined, string][] = [
    [0, "root", undefined, "root"],
    [0, "root", "alice", "root (sudo by alice)"],
    [0, "root", "root", "root"],
    [0, "root", "mallory", "root"],
    [0, "root", "a\u202eb", "root"],
    [0, "root", "", "root"],
    [1000, "alice", "bob", "alice"],
    [1000, undefined, undefined, "uid 1000"],
    [0, undefined, "alice", "uid 0 (sudo by alice)"],
  ];
  for (const [uid, name, sudoUser, recorded] of cases) {
    assert.equal(
      invoker({ uid, name, sudoUser, isAccount }),
      recorded,
      `${uid} ${name} ${sudoUser}`,
    );
  }
});

test("systemUnit: only a system service's cgroup names a unit", () => {
  const cases: [string, string | undefined][] = [
    ["0::/system.slice/hapgent.service\n", "hapgent.service"],
    ["0::/system.slice/hapgent@web.service\n", "hapgent@web.service"],
    ["12:name=systemd:/system.slice/hapgent.service\n3:cpu:/\n", "hapgent.service"],
    ["0::/user.slice/user-1000.slice/user@1000.service/app.slice/hapgent.service\n", undefined],
    ["0::/system.slice/hapgent.service/sub\n", undefined],
    ["0::/\n", undefined],
    ["", undefined],
  ];
  for (const [cgroup, unit] of cases) assert.equal(systemUnit(cgroup), unit, cgroup);
});
