import assert from "node:assert/strict";
import { chmod, chown, mkdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CLI_EXIT } from "../../src/cli/cli.js";
import { describeDaemon, findDaemons, systemUnit } from "../../src/cli/daemons.js";
import { unnamedStateFile } from "../../src/cli/target.js";
import { invoker } from "../../src/cli/user.js";
import { reply } from "../../src/core/reply.js";
import { parseState, type State } from "../../src/core/state.js";
import { createAgentServer } from "../../src/daemon/server.js";
import { VERSION } from "../../src/version.js";
import {
  cliFor,
  cliInProcess,
  collect,
  freePort,
  IS_ROOT,
  runHapgent,
  spawnHapgent,
  startDaemon,
  tempDir,
  waitFor,
  withoutRecord,
} from "../helpers.js";

const cli = cliFor;

describe("hapgent set and its short forms", () => {
  const moves: [string[], string, string][] = [
    [["down"], '{"status":"DOWN","weight":30,"maxconn":9}\n', "down ready 30% maxconn:9"],
    [["up"], '{"status":"UP","weight":30,"maxconn":9}\n', "up ready 30% maxconn:9"],
    [["drain"], '{"status":"DRAIN","weight":30,"maxconn":9}\n', "up drain 30% maxconn:9"],
    [["maint"], '{"status":"MAINT","weight":30,"maxconn":9}\n', "maint 30% maxconn:9"],
    [["ready"], '{"status":"READY","weight":30,"maxconn":9}\n', "up ready 30% maxconn:9"],
    [
      ["set", "stopped"],
      '{"status":"STOPPED","weight":30,"maxconn":9}\n',
      "stopped ready 30% maxconn:9",
    ],
    [
      ["set", "FAIL", "--weight", "0"],
      '{"status":"FAIL","weight":0,"maxconn":9}\n',
      "fail ready 0% maxconn:9",
    ],
    // --no-maxconn is no limit, said as maxconn:0: HAProxy keeps a limit a reply leaves out.
    [
      ["set", "UP", "--no-weight", "--no-maxconn"],
      '{"status":"UP","maxconn":0}\n',
      "up ready 100% maxconn:0",
    ],
    [
      ["down", "--description", "deploy 1.4.2", "--maxconn", "65535"],
      '{"status":"DOWN","weight":30,"maxconn":65535,"description":"deploy 1.4.2"}\n',
      "down ready 30% maxconn:65535 # deploy 1.4.2",
    ],
  ];
  for (const [args, file, line] of moves) {
    test(`${args.join(" ")}: saved, reloaded and confirmed`, async (t) => {
      const d = await startDaemon(t, { state: '{"status":"UP","weight":30,"maxconn":9}' });
      const result = await cli(d, ...args);
      assert.equal(result.code, CLI_EXIT.OK, result.stderr);
      assert.equal(await d.readState(), file);
      assert.equal(await d.probe(), `${line}\n`);
      assert.match(
        result.stdout,
        new RegExp(`hapgent pid ${d.pid} answers: ${line.replace(/[%#]/g, ".")}`),
      );
    });
  }

  test("fields not named are kept, including the description; --no-description removes it", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP","description":"canary"}' });
    assert.equal((await cli(d, "drain")).code, 0);
    assert.equal(await d.readState(), '{"status":"DRAIN","description":"canary"}\n');
    assert.equal((await cli(d, "up", "--no-description")).code, 0);
    assert.equal(await d.readState(), '{"status":"UP"}\n');
  });

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

  test("with no daemon running, writes the file, signals nothing and exits 3", async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, "state.json");
    const result = await cli({ stateFile: file, port: await freePort() }, "down");
    assert.equal(result.code, CLI_EXIT.NO_AGENT);
    assert.equal(withoutRecord(await readFile(file, "utf8")), '{"status":"DOWN"}\n');
    assert.match(
      result.stderr,
      /no running hapgent serves .*state\.json, so none was signalled; the next start loads it/,
    );
  });

  test("an invalid current file is replaced, and says so", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP","wieght":3}' });
    const result = await cli(d, "up", "--weight", "7");
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    // Through the control socket the daemon reads the file, and says what it replaced.
    assert.match(result.stderr, /the state file .* was invalid \(unknown field "wieght"/);
    assert.equal(await d.readState(), '{"status":"UP","weight":7}\n');
  });

  test("a directory in the state file's place is never said to be replaced", async (t) => {
    const d = await startDaemon(t, { state: null, ready: false });
    await mkdir(d.stateFile);
    await d.waitForLog(/listening on/);
    const lone = await tempDir(t);
    await mkdir(join(lone, "state.json"));
    for (const [how, result] of [
      ["through the daemon", await cli(d, "up", "--timeout", "2")],
      ["by the command", await cli({ stateFile: join(lone, "state.json"), port: 1 }, "up")],
    ] as const) {
      assert.equal(result.code, CLI_EXIT.CANNOT_WRITE, `${how}: ${result.stderr}`);
      assert.doesNotMatch(result.stderr, /; replaced|replacing it/, how);
      assert.match(
        result.stderr,
        /EISDIR.*; what is there is still invalid \(is a directory, expected a file\) and was not replaced\n$/,
        how,
      );
    }
    assert.ok((await stat(d.stateFile)).isDirectory());
  });

  test("exits 5 when the file cannot be written", async (t) => {
    const dir = await tempDir(t);
    await writeFile(join(dir, "plain"), "x");
    const result = await cli(
      { stateFile: join(dir, "plain", "state.json"), port: await freePort() },
      "up",
    );
    assert.equal(result.code, CLI_EXIT.CANNOT_WRITE);
    assert.match(result.stderr, /cannot write .*plain\/state\.json: ENOTDIR/);
  });

  test("exits 4 when the agent does not confirm in time", async (t) => {
    const d = await startDaemon(t);
    // A stopped process keeps its socket: connections queue, nothing answers.
    d.signal("SIGSTOP");
    t.after(() => {
      if (d.child.exitCode === null && d.child.signalCode === null) d.signal("SIGCONT");
    });
    const result = await cli(d, "down", "--timeout", "0.5");
    assert.equal(result.code, CLI_EXIT.NOT_CONFIRMED, result.stderr);
    assert.match(
      result.stderr,
      /hapgent pid \d+ did not confirm within 0\.5 s: .* expected "down ready 100%"/,
    );
    assert.equal(await d.readState(), '{"status":"DOWN"}\n', "the file was written");
    d.signal("SIGCONT");
    await d.waitForReply("down ready 100%\n");
  });

  test("two daemons on one file are reported, and nothing is written", async (t) => {
    const d1 = await startDaemon(t, { state: '{"status":"UP"}' });
    const d2 = await startDaemon(t, { dir: d1.dir, state: null });
    const result = await cli(d1, "down");
    assert.equal(result.code, CLI_EXIT.SEVERAL_AGENTS);
    assert.ok(
      result.stderr.includes(`several hapgent processes serve ${d1.stateFile}`),
      result.stderr,
    );
    assert.ok(result.stderr.includes(String(d1.pid)) && result.stderr.includes(String(d2.pid)));
    assert.equal(await d1.readState(), '{"status":"UP"}');
    const status = await cli(d1, "status");
    assert.equal(status.code, CLI_EXIT.SEVERAL_AGENTS, status.stdout);
    const pids = status.stdout.match(/agent {7}SEVERAL hapgent processes \(pids (\d+), (\d+)\)/);
    assert.deepEqual(pids?.slice(1).map(Number).sort(), [d1.pid, d2.pid].sort(), status.stdout);
  });

  test("a symlinked state file is the same file", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP"}' });
    const link = join(d.dir, "link.json");
    await symlink(d.stateFile, link);
    const result = await cli({ stateFile: link, port: d.port }, "drain");
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.equal(await d.probe(), "up drain 100%\n");
  });

  test("--no-confirm returns once the daemon has applied and saved the change (--no-wait alike)", async (t) => {
    const d = await startDaemon(t);
    for (const [flag, status] of [
      ["--no-confirm", "maint"],
      ["--no-wait", "drain"],
    ] as const) {
      const result = await cli(d, status, flag);
      assert.equal(result.code, CLI_EXIT.OK, result.stderr);
      assert.match(result.stdout, new RegExp(`^hapgent pid ${d.pid} wrote ${d.stateFile}: `));
      assert.doesNotMatch(result.stdout, /answers/);
      assert.equal(await d.readState(), `{"status":"${status.toUpperCase()}"}\n`);
    }
  });
});

describe("hapgent status", () => {
  test("a misspelt HAPGENT_ variable is warned of on stderr, once", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP"}' });
    const result = await runHapgent(["status"], {
      HAPGENT_STATE_FILE: d.stateFile,
      HAPGENT_IP: "127.0.0.1",
      HAPGENT_PORT: String(d.port),
      HAPGENT_STAT_FILE: "/nowhere",
      HAPGENT_TEST_HAPROXY: "/usr/sbin/haproxy",
    });
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.equal(
      result.stderr,
      "hapgent: warning: unknown variable HAPGENT_STAT_FILE ignored; did you mean HAPGENT_STATE_FILE?\n",
    );
    assert.ok(result.stdout.includes("agreement   yes"), result.stdout);
  });

  test("agreement, in text and JSON", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"DRAIN","weight":5}' });
    const text = await cli(d, "status");
    assert.equal(text.code, CLI_EXIT.OK);
    assert.ok(text.stdout.includes(`state file  ${d.stateFile}: {"status":"DRAIN","weight":5}`));
    assert.ok(
      text.stdout.includes(`agent       hapgent pid ${d.pid} at 127.0.0.1:${d.port}: up drain 5%`),
    );
    assert.ok(text.stdout.includes("agreement   yes"));
    const json = await cli(d, "status", "--json");
    assert.equal(json.code, CLI_EXIT.OK);
    assert.deepEqual(JSON.parse(json.stdout), {
      stateFile: d.stateFile,
      file: { valid: true, state: { status: "DRAIN", weight: 5 } },
      expectedReply: "up drain 5%",
      agents: [d.pid],
      address: `127.0.0.1:${d.port}`,
      reply: "up drain 5%",
      error: null,
      services: [],
      loadBalancers: [],
      checks: [],
      checksProblem: null,
      fleet: null,
      agree: true,
      // The file was written by hand: no record of its change, no expiry.
      changed: null,
      expires: null,
      history: null,
    });
  });

  test("a file edited but not reloaded disagrees (exit 4)", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP"}' });
    await writeFile(d.stateFile, '{"status":"DOWN"}');
    const result = await cli(d, "status", "--json");
    assert.equal(result.code, CLI_EXIT.NOT_CONFIRMED);
    const parsed = JSON.parse(result.stdout);
    assert.deepEqual(
      [parsed.reply, parsed.expectedReply, parsed.agree],
      ["up ready 100%", "down ready 100%", false],
    );
  });

  test("a maxconn a load balancer heard and the edited file dropped disagrees, naming it", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP","maxconn":10}' });
    // A probe without the command line's mark: a load balancer, which heard maxconn:10.
    assert.equal(await d.probe(), "up ready 100% maxconn:10\n");
    await writeFile(d.stateFile, '{"status":"UP"}');
    d.signal("SIGHUP");
    await d.waitForReply("up ready 100%\n");
    // It has heard the new reply too, which says no maxconn: HAProxy still holds 10.
    assert.equal(await d.probe(), "up ready 100%\n");
    const text = await cli(d, "status");
    assert.equal(text.code, CLI_EXIT.NOT_CONFIRMED, text.stdout + text.stderr);
    assert.match(
      text.stdout,
      /^note {8}127\.0\.0\.1 HOLDS maxconn:10 from an earlier reply: the reply says no maxconn, which HAProxy does not read as haproxy\.cfg's; hapgent set UP --maxconn 0 \(or --no-maxconn\) lifts it$/m,
    );
    assert.match(text.stdout, /^agreement {3}NO$/m);
    const json = JSON.parse((await cli(d, "status", "--json")).stdout);
    assert.equal(json.agree, false);
    assert.deepEqual(
      json.loadBalancers.map((p: { heldMaxconn: number; keptMaxconn: number }) => [
        p.heldMaxconn,
        p.keptMaxconn,
      ]),
      [[10, 10]],
    );
    // The fix the note names: the reply says maxconn:0, and once heard all agree.
    const lifted = await cli(d, "set", "UP", "--no-maxconn");
    assert.equal(lifted.code, CLI_EXIT.OK, lifted.stderr);
    assert.equal(await d.probe(), "up ready 100% maxconn:0\n");
    const after = await cli(d, "status");
    assert.equal(after.code, CLI_EXIT.OK, after.stdout + after.stderr);
    assert.doesNotMatch(after.stdout, /HOLDS/);
    // No limit held, and the file drops maxconn again: HAProxy keeps none, not haproxy.cfg's.
    await writeFile(d.stateFile, '{"status":"UP"}');
    d.signal("SIGHUP");
    await d.waitForReply("up ready 100%\n");
    const none = await cli(d, "status");
    assert.equal(none.code, CLI_EXIT.NOT_CONFIRMED, none.stdout + none.stderr);
    assert.match(
      none.stdout,
      /^note {8}127\.0\.0\.1 HOLDS maxconn:0 \(no limit\) from an earlier reply: .*; hapgent set UP --maxconn N says the limit you want, --maxconn 0 \(or --no-maxconn\) agrees with none$/m,
    );
  });

  test("an invalid file (exit 1) and no agent (exit 3)", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP"}' });
    await writeFile(d.stateFile, '{"status":"UP","weight":1.5}');
    const invalid = await cli(d, "status");
    assert.equal(invalid.code, CLI_EXIT.INVALID_FILE);
    assert.match(invalid.stdout, /INVALID: weight must be an integer 0-255, got 1\.5/);
    const dir = await tempDir(t);
    await writeFile(join(dir, "s.json"), '{"status":"UP"}');
    const none = await cli({ stateFile: join(dir, "s.json"), port: await freePort() }, "status");
    assert.equal(none.code, CLI_EXIT.NO_AGENT);
    assert.match(
      none.stdout,
      /no hapgent process found for this file; whatever listens at .*: no answer \(ECONNREFUSED\)/,
    );
  });
});

test("status: what listens where no daemon serves the file is no agreement, and cannot write to the terminal", async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, "s.json"), '{"status":"UP"}');
  // Another user's listener on the agent's port, answering the expected line and an escape.
  const server = createAgentServer({ reply: () => "up ready 100% \u001b]0;PWNED\u0007\n" });
  const { port } = await server.listen("127.0.0.1", 0);
  t.after(() => server.close());
  const result = await cli({ stateFile: join(dir, "s.json"), port }, "status");
  assert.equal(result.code, CLI_EXIT.NO_AGENT, result.stdout);
  assert.match(
    result.stdout,
    /whatever listens at 127\.0\.0\.1:\d+: up ready 100% \\u001b\]0;PWNED\\u0007/,
  );
  assert.match(result.stdout, /agreement {3}NO/);
  for (const raw of ["\u001b", "\u0007"]) assert.ok(!result.stdout.includes(raw), "escaped");
});

describe("hapgent check", () => {
  const corpus: [string, string, number, string][] = [
    [
      "good",
      '{"status":"UP","weight":77,"maxconn":300}',
      0,
      'valid: {"status":"UP","weight":77,"maxconn":300}',
    ],
    ["good with description", '{"status":"DOWN","description":"deploy"}', 0, "valid:"],
    ["typo", '{"status":"UP","wieght":77}', 1, 'unknown field "wieght"'],
    ["lowercase", '{"status":"up"}', 1, 'got "up"'],
    [
      "string weight",
      '{"status":"UP","weight":"50"}',
      1,
      'weight must be an integer 0-255, got "50"',
    ],
    ["fraction", '{"status":"UP","maxconn":1.5}', 1, "maxconn must be an integer 0-65535, got 1.5"],
    ["empty", "", 1, "file is empty"],
    ["not JSON", "status=UP", 1, "file is not valid JSON"],
    ["array", '["UP"]', 1, "state must be a JSON object, got an array"],
    ["no status", '{"weight":1}', 1, "status is required"],
  ];
  for (const [name, content, code, message] of corpus) {
    test(name, async (t) => {
      const dir = await tempDir(t);
      const file = join(dir, "s.json");
      await writeFile(file, content);
      const result = await runHapgent(["check", file], {});
      assert.equal(result.code, code, result.stderr);
      assert.ok(
        (code === 0 ? result.stdout : result.stderr).includes(message),
        result.stdout + result.stderr,
      );
      assert.equal(await readFile(file, "utf8"), content, "check changes nothing");
    });
  }
  test("a missing file, a directory, and the file from HAPGENT_STATE_FILE", async (t) => {
    const dir = await tempDir(t);
    assert.equal((await runHapgent(["check", join(dir, "nope.json")], {})).code, 1);
    await mkdir(join(dir, "d"));
    const directory = await runHapgent(["check", join(dir, "d")], {});
    assert.match(directory.stderr, /is a directory/);
    await writeFile(join(dir, "env.json"), '{"status":"MAINT"}');
    const fromEnv = await runHapgent(["check"], { HAPGENT_STATE_FILE: join(dir, "env.json") });
    assert.equal(fromEnv.code, 0);
    assert.match(fromEnv.stdout, /env\.json: valid: \{"status":"MAINT"\}/);
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
  for (const args of [
    ["--help"],
    ["status", "--help"],
    ["set", "--help"],
    ["up", "--help"],
    ["check", "-h"],
  ]) {
    test(args.join(" "), async () => {
      const result = await runHapgent(args, {});
      assert.equal(result.code, 0);
      assert.match(result.stdout, /^Usage: hapgent/);
      assert.match(result.stdout, /Exit codes:/);
    });
  }
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
  test("--version", async () => {
    const result = await runHapgent(["--version"], {});
    assert.deepEqual([result.code, result.stdout], [0, `hapgent ${VERSION}\n`]);
  });
});

/** Whether process `pid` has handlers for every signal numbered in `signals` (SigCgt). */
async function catches(pid: number, signals: readonly number[]): Promise<true | undefined> {
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  const mask = BigInt(`0x${status.match(/^SigCgt:\s*([0-9a-f]+)$/m)?.[1] ?? "0"}`);
  return signals.every((n) => (mask >> BigInt(n - 1)) & 1n) ? true : undefined;
}

describe("safety", () => {
  test("signals meant for the daemon neither kill a running command nor open its debugger", async (t) => {
    const d = await startDaemon(t);
    d.signal("SIGSTOP");
    t.after(() => {
      if (d.child.exitCode === null && d.child.signalCode === null) d.signal("SIGCONT");
    });
    const env = {
      HAPGENT_STATE_FILE: d.stateFile,
      HAPGENT_IP: "127.0.0.1",
      HAPGENT_PORT: String(d.port),
    };
    const start = () =>
      spawnHapgent(["down", "--timeout", "1.5"], {
        env: { PATH: process.env.PATH ?? "/usr/bin", ...env },
        stdio: ["ignore", "pipe", "pipe"],
      });
    // Two commands at once: neither may take the other for a daemon.
    const first = start();
    const second = start();
    const results = Promise.all([collect(first), collect(second)]);
    // As a deploy script's pkill meets a running command: after its start-up (the first tens of
    // milliseconds of any Node process, documented in docs/internals.md), once the kernel shows that
    // it catches HUP and USR2, which main.ts handles together with USR1. (Node itself catches
    // USR1 from its start, for its debugger.)
    for (const child of [first, second]) {
      await waitFor(
        "the command's signal handlers",
        () => catches(child.pid ?? 0, [1, 12]),
        20_000,
      );
    }
    const storm = setInterval(() => {
      for (const child of [first, second]) {
        for (const signal of ["SIGUSR1", "SIGUSR2", "SIGHUP"] as const) {
          if (child.exitCode === null) child.kill(signal);
        }
      }
    }, 5);
    // ... and before it ends: a signal in the last milliseconds of any process's exit, after Node
    // has let go of its handlers, still takes the default action.
    await new Promise((resolve) => setTimeout(resolve, 800));
    clearInterval(storm);
    const [a, b] = await results;
    for (const result of [a, b]) {
      assert.equal(result.code, CLI_EXIT.NOT_CONFIRMED, result.stderr);
      assert.doesNotMatch(result.stderr, /Debugger listening|several hapgent/);
    }
  });

  test("a command is never taken for a daemon; a daemon is found by its name and environment", async (t) => {
    const d = await startDaemon(t);
    const agents = await findDaemons("/proc", process.pid);
    const mine = agents.find((a) => a.pid === d.pid);
    assert.ok(mine, "the daemon is found");
    assert.equal(mine.uid, process.getuid?.());
    const said = await describeDaemon("/proc", mine);
    assert.ok(said.readable);
    assert.equal(said.config.stateFile, d.stateFile);
    assert.equal(said.config.port, d.port);
    assert.ok(!agents.some((a) => a.pid === process.pid));
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
