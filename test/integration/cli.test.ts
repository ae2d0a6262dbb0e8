import assert from "node:assert/strict";
import { mkdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CLI_EXIT } from "../../src/cli/cli.js";
import { describeDaemon, findDaemons } from "../../src/cli/daemons.js";
import { createAgentServer } from "../../src/daemon/server.js";
import { VERSION } from "../../src/version.js";
import {
  cliFor,
  collect,
  freePort,
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
