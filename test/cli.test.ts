import assert from "node:assert/strict";
import { mkdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { findAgents } from "../src/agents.js";
import { CLI_EXIT, runCli } from "../src/cli.js";
import { reply } from "../src/reply.js";
import { createAgentServer } from "../src/server.js";
import { parseState, type State } from "../src/state.js";
import { VERSION } from "../src/version.js";
import {
  cliFor,
  collect,
  freePort,
  runHapgent,
  spawnHapgent,
  startDaemon,
  tempDir,
} from "./helpers.js";

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
    [["set", "UP", "--no-weight", "--no-maxconn"], '{"status":"UP"}\n', "up ready 100%"],
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
    [
      ["set", "UP", "--weight", "1.5"],
      "weight must be an integer 0-255, got 1.5; nothing was written",
    ],
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
    [["up", "--wieght", "5"], "Unknown option '--wieght'"],
    [["up", "--json"], "--json is not an option of up"],
    [["up", "--timeout", "0"], "--timeout must be a number of seconds"],
    [["up", "--port", "70000"], '--port "70000" is invalid; expected an integer 1-65535'],
    [["frobnicate"], 'unknown command "frobnicate"'],
  ];
  for (const [args, message] of invalid) {
    test(`refuses ${JSON.stringify(args)} with exit 2 and writes nothing`, async (t) => {
      const d = await startDaemon(t, { state: '{"status":"UP","weight":30}' });
      const before = await stat(d.stateFile);
      const result = await cli(d, ...args);
      assert.equal(result.code, CLI_EXIT.USAGE, result.stderr);
      assert.ok(result.stderr.includes(message), result.stderr);
      assert.doesNotMatch(result.stderr, /\n\s+at /);
      assert.equal(await d.readState(), '{"status":"UP","weight":30}');
      assert.equal((await stat(d.stateFile)).mtimeMs, before.mtimeMs);
    });
  }

  test("with no daemon running, writes the file, signals nothing and exits 3", async (t) => {
    const dir = await tempDir(t);
    const file = join(dir, "state.json");
    const result = await cli({ stateFile: file, port: await freePort() }, "down");
    assert.equal(result.code, CLI_EXIT.NO_AGENT);
    assert.equal(await readFile(file, "utf8"), '{"status":"DOWN"}\n');
    assert.match(
      result.stderr,
      /no running hapgent serves .*state\.json, so none was signalled; the next start loads it/,
    );
  });

  test("an invalid current file is replaced, and says so", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP","wieght":3}' });
    const result = await cli(d, "up", "--weight", "7");
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.match(result.stderr, /the current state file .* is invalid \(unknown field "wieght"/);
    assert.equal(await d.readState(), '{"status":"UP","weight":7}\n');
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
  });

  test("a symlinked state file is the same file", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP"}' });
    const link = join(d.dir, "link.json");
    await symlink(d.stateFile, link);
    const result = await cli({ stateFile: link, port: d.port }, "drain");
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.equal(await d.probe(), "up drain 100%\n");
  });

  test("--no-wait signals and returns", async (t) => {
    const d = await startDaemon(t);
    const result = await cli(d, "maint", "--no-wait");
    assert.equal(result.code, CLI_EXIT.OK);
    assert.match(result.stdout, new RegExp(`signalled hapgent pid ${d.pid} to reload`));
    await d.waitForReply("maint 100%\n");
  });
});

describe("hapgent status", () => {
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
      agree: true,
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
      /no hapgent process found for this file; probed .*: no answer \(ECONNREFUSED\)/,
    );
  });
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
    // milliseconds of any Node process, documented in the README).
    await new Promise((resolve) => setTimeout(resolve, 400));
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
    const agents = await findAgents("/proc", process.pid);
    const mine = agents.find((a) => a.pid === d.pid);
    assert.ok(mine?.readable, "the daemon is found");
    assert.equal(mine.config.stateFile, d.stateFile);
    assert.equal(mine.config.port, d.port);
    assert.ok(!agents.some((a) => a.pid === process.pid));
  });
});

describe("finding the daemon (fake /proc)", () => {
  /** A /proc with one hapgent daemon, one hapgent command and one other process. */
  async function fakeProc(dir: string, port: number, stateFile: string) {
    const proc = join(dir, "proc");
    const entries: [number, string, string, string][] = [
      [
        101,
        "hapgent",
        "hapgent\0\0\0",
        `HAPGENT_PORT=${port}\0HAPGENT_IP=127.0.0.1\0HAPGENT_STATE_FILE=state.json\0`,
      ],
      [102, "hapgent", "/usr/bin/hapgent\0set\0down\0", "HAPGENT_STATE_FILE=/elsewhere.json\0"],
      [103, "node", "node\0server.js\0", ""],
    ];
    for (const [pid, comm, cmdline, environ] of entries) {
      await mkdir(join(proc, String(pid)), { recursive: true });
      await writeFile(join(proc, String(pid), "comm"), `${comm}\n`);
      await writeFile(join(proc, String(pid), "cmdline"), cmdline);
      await writeFile(join(proc, String(pid), "environ"), environ);
      await symlink(dir, join(proc, String(pid), "cwd"));
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
    const out: string[] = [];
    const reloaded: number[] = [];
    const code = await runCli({
      args: ["drain", "--weight", "40"],
      env: {},
      cwd: "/",
      pid: 1,
      procRoot: proc,
      out: (text) => out.push(text),
      err: (text) => out.push(text),
      reload: (pid) => {
        reloaded.push(pid);
        // What the daemon does on HUP: read the file.
        void readFile(join(dir, "state.json")).then((bytes) => {
          const parsed = parseState(bytes);
          if (parsed.ok) state = parsed.state;
        });
      },
    });
    assert.equal(code, CLI_EXIT.OK, out.join(""));
    assert.deepEqual(reloaded, [101]);
    assert.equal(
      await readFile(join(dir, "state.json"), "utf8"),
      '{"status":"DRAIN","weight":40}\n',
    );
    assert.ok(out.join("").includes("hapgent pid 101 answers: up drain 40%"));
  });

  test("a named file that no daemon serves signals nothing", async (t) => {
    const dir = await tempDir(t);
    const proc = await fakeProc(dir, 1, join(dir, "state.json"));
    const reloaded: number[] = [];
    const code = await runCli({
      args: ["up", "--state-file", join(dir, "other.json")],
      env: {},
      cwd: "/",
      pid: 1,
      procRoot: proc,
      out: () => {},
      err: () => {},
      reload: (pid) => reloaded.push(pid),
    });
    assert.equal(code, CLI_EXIT.NO_AGENT);
    assert.deepEqual(reloaded, []);
  });
});
