/**
 * One agent, many services: the real daemon with a state file that names services, probed with
 * agent-send names as HAProxy sends them, driven by real signals and by the command line.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CLI_EXIT } from "../../src/cli/cli.js";
import { cliFor, probe, startDaemon } from "../helpers.js";

const FILE = {
  status: "UP",
  services: {
    "be_web/srv1": { status: "DRAIN" },
    "be_api/srv1": { status: "UP", weight: 50, maxconn: 30 },
    "be_old/srv1": { status: "MAINT", description: "retired" },
  },
};
const TEXT = `${JSON.stringify(FILE)}\n`;

/** Each service's reply while the instance is UP, and what any other probe gets. */
const OWN = {
  "be_web/srv1": "up drain 100%\n",
  "be_api/srv1": "up ready 50% maxconn:30\n",
  "be_old/srv1": "maint 100% # retired\n",
};
const ask = (port: number, name: string) => probe(port, { payload: `${name}\n` });

async function answers(port: number): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  for (const name of Object.keys(OWN)) result[name] = await ask(port, name);
  return result;
}

const cli = cliFor;

describe("services keyed by agent-send", () => {
  test("each agent-send name gets its own state; no name or an unknown one, the instance's", async (t) => {
    const d = await startDaemon(t, {
      state: TEXT.replace('"status":"UP"', '"status":"UP","weight":80'),
    });
    assert.deepEqual(await answers(d.port), OWN);
    assert.equal(await ask(d.port, "be_nope/srv9"), "up ready 80%\n");
    assert.equal(await ask(d.port, "be_nope/srv9"), "up ready 80%\n");
    assert.equal(await d.probe({ payload: "be_api/srv1\r\n" }), OWN["be_api/srv1"]);
    assert.equal(await d.probe({ payload: "\n" }), "up ready 80%\n");
    // An unknown name is logged once, not per probe.
    await d.waitForLog(/service "be_nope\/srv9", which the state file does not name/);
    assert.equal(d.stderr().match(/be_nope/g)?.length, 1);
    // What a client sends reaches the log with control characters escaped.
    assert.equal(await d.probe({ payload: "x\u001b[2J\u007fy\n" }), "up ready 80%\n");
    await d.waitForLog(/service "x\\u001b\[2J\\u007fy", which/);
  });

  test("USR2 takes every service out; USR1 gives each its own state back, as the file says", async (t) => {
    const d = await startDaemon(t, { state: TEXT });
    d.signal("SIGUSR2");
    await d.waitForFile(TEXT.replace('"status":"UP"', '"status":"DOWN"'));
    assert.deepEqual(await answers(d.port), {
      "be_web/srv1": "down ready 100%\n",
      "be_api/srv1": "down ready 100%\n",
      "be_old/srv1": "down ready 100%\n",
    });
    d.signal("SIGUSR1");
    await d.waitForFile(TEXT);
    assert.deepEqual(await answers(d.port), OWN);
  });

  test("an instance status other than UP or READY is every service's answer", async (t) => {
    for (const [status, line] of [
      ["READY", undefined],
      ["DRAIN", "up drain 10%\n"],
      ["MAINT", "maint 10%\n"],
      ["FAIL", "fail ready 10%\n"],
      ["STOPPED", "stopped ready 10%\n"],
    ] as const) {
      const d = await startDaemon(t, {
        state: TEXT.replace('"status":"UP"', `"status":"${status}","weight":10`),
      });
      const expected =
        line === undefined ? OWN : Object.fromEntries(Object.keys(OWN).map((n) => [n, line]));
      assert.deepEqual(await answers(d.port), expected, status);
      d.signal("SIGTERM");
      await d.exited;
    }
  });

  test("a probe without agent-send waits for it, then gets the instance state", async (t) => {
    const d = await startDaemon(t, { state: TEXT, env: { HAPGENT_SEND_WAIT_MS: "300" } });
    const began = performance.now();
    assert.equal(await d.probe(), "up ready 100%\n");
    const took = performance.now() - began;
    assert.ok(took >= 290, `answered after ${took} ms, before the wait ended`);
    await d.waitForLog(/a probe sent no agent-send line within 300 ms \(HAPGENT_SEND_WAIT_MS\)/);
  });

  test("without services a probe is answered at once, with or without agent-send", async (t) => {
    const d = await startDaemon(t, {
      state: '{"status":"UP","services":{}}',
      env: { HAPGENT_SEND_WAIT_MS: "5000" },
    });
    for (const payload of [undefined, "be_web/srv1\n"]) {
      const began = performance.now();
      assert.equal(await d.probe(payload === undefined ? {} : { payload }), "up ready 100%\n");
      const took = performance.now() - began;
      assert.ok(took < 2500, `answered after ${took} ms`);
    }
  });

  test("HUP applies services added to and removed from the file", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP","weight":20}' });
    assert.equal(await ask(d.port, "be_web/srv1"), "up ready 20%\n");
    const { writeFile } = await import("node:fs/promises");
    await writeFile(d.stateFile, TEXT);
    d.signal("SIGHUP");
    await d.waitForLog(/SIGHUP: loaded state file .* -> .*be_web/);
    assert.deepEqual(await answers(d.port), OWN);
    await writeFile(d.stateFile, '{"status":"UP","weight":20}');
    d.signal("SIGHUP");
    // A file edited by hand: the agent records the reload as the change.
    await d.waitForLog(
      /SIGHUP: loaded state file .*be_web.* -> \{"status":"UP","weight":20,"changed":\{"at":"[^"]+","via":"reload"\}\}$/m,
    );
    assert.equal(await ask(d.port, "be_web/srv1"), "up ready 20%\n");
  });

  test("a bad service entry fails the whole file: MAINT with the reason", async (t) => {
    const d = await startDaemon(t, {
      state: '{"status":"UP","services":{"be web":{"status":"UP"}}}',
    });
    assert.equal(await d.probe(), "maint 100%\n");
    assert.equal(await ask(d.port, "be web"), "maint 100%\n");
    await d.waitForLog(/service name "be web" is invalid; expected 1-100 printable ASCII/);
  });

  test("HAPGENT_SEND_WAIT_MS out of range is refused at start", async (t) => {
    for (const value of ["0", "5001", "abc", "1.5", "-1"]) {
      const d = await startDaemon(t, { env: { HAPGENT_SEND_WAIT_MS: value }, ready: false });
      const { code } = await d.exited;
      assert.equal(code, 2, value);
      assert.match(
        d.stderr(),
        new RegExp(
          `HAPGENT_SEND_WAIT_MS="${value.replace(".", "\\.")}" is invalid; expected an integer number of milliseconds 1-5000`,
        ),
      );
    }
  });
});

describe("the command line with services", () => {
  test("set --service changes one service, keeps the rest, and confirms with its name", async (t) => {
    const d = await startDaemon(t, { state: TEXT });
    const result = await cli(d, "down", "--service", "be_api/srv1", "--description", "deploy 7");
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    const expected = structuredClone(FILE);
    Object.assign(expected.services["be_api/srv1"], { status: "DOWN", description: "deploy 7" });
    assert.equal(await d.readState(), `${JSON.stringify(expected)}\n`);
    assert.match(
      result.stdout,
      new RegExp(`hapgent pid ${d.pid} answers be_api/srv1: down ready 50. maxconn:30 . deploy 7`),
    );
    assert.equal(await ask(d.port, "be_api/srv1"), "down ready 50% maxconn:30 # deploy 7\n");
    assert.equal(await ask(d.port, "be_web/srv1"), OWN["be_web/srv1"]);
    assert.equal(await d.probe({ payload: "\n" }), "up ready 100%\n");
  });

  test("set --service adds a service the file does not have, at the end", async (t) => {
    const d = await startDaemon(t, { state: '{"status":"UP"}' });
    const result = await cli(d, "set", "UP", "--service", "be_new/srv1", "--weight", "5");
    assert.equal(result.code, CLI_EXIT.OK, result.stderr);
    assert.equal(
      await d.readState(),
      '{"status":"UP","services":{"be_new/srv1":{"status":"UP","weight":5}}}\n',
    );
    assert.equal(await ask(d.port, "be_new/srv1"), "up ready 5%\n");
  });

  test("set on the instance keeps the services; a service set while it is out is noted", async (t) => {
    const d = await startDaemon(t, { state: TEXT });
    const down = await cli(d, "down", "--weight", "40");
    assert.equal(down.code, CLI_EXIT.OK, down.stderr);
    assert.equal(await d.readState(), TEXT.replace('"status":"UP"', '"status":"DOWN","weight":40'));
    const service = await cli(d, "up", "--service", "be_web/srv1");
    assert.equal(service.code, CLI_EXIT.OK, service.stderr);
    assert.match(service.stdout, /note: the instance is DOWN, so every service answers its state/);
    assert.match(service.stdout, /answers be_web\/srv1: down ready 40%/);
  });

  test("bad --service input and a missing file write nothing", async (t) => {
    const d = await startDaemon(t, { state: TEXT });
    for (const name of ["be web", "", "x".repeat(101), "srvé"]) {
      const result = await cli(d, "up", "--service", name);
      assert.equal(result.code, CLI_EXIT.USAGE, name);
      assert.match(result.stderr, /--service (needs a value|must be 1-100 printable ASCII)/);
    }
    const weight = await cli(d, "up", "--service", "be_web/srv1", "--weight", "300");
    assert.equal(weight.code, CLI_EXIT.USAGE);
    assert.equal(weight.stderr, "hapgent: --weight must be an integer 0-255, got 300\n");
    assert.equal(await d.readState(), TEXT);
    const missing = await cli(
      { stateFile: `${d.stateFile}.none`, port: d.port },
      "up",
      "--service",
      "a",
    );
    assert.equal(missing.code, CLI_EXIT.INVALID_FILE);
    assert.match(missing.stderr, /has no valid instance state to add service a to/);
  });

  test("status lists every service with its expected and live answer", async (t) => {
    const d = await startDaemon(t, { state: TEXT });
    const text = await cli(d, "status");
    assert.equal(text.code, CLI_EXIT.OK, text.stdout + text.stderr);
    for (const [name, line] of Object.entries(OWN)) {
      assert.ok(
        text.stdout.includes(
          `service     ${name}: expected ${line.trimEnd()}, agent ${line.trimEnd()}\n`,
        ),
        text.stdout,
      );
    }
    assert.match(text.stdout, /agreement {3}yes/);
    const json = await cli(d, "status", "--json");
    const parsed = JSON.parse(json.stdout) as {
      agree: boolean;
      services: { name: string; expectedReply: string; reply: string; agree: boolean }[];
    };
    assert.equal(parsed.agree, true);
    assert.deepEqual(
      parsed.services.map((s) => [s.name, s.reply, s.agree]),
      Object.entries(OWN).map(([name, line]) => [name, line.trimEnd(), true]),
    );
  });

  test("status sees a service the agent answers differently from the file", async (t) => {
    const d = await startDaemon(t, { state: TEXT });
    const { writeFile } = await import("node:fs/promises");
    // Changed without HUP: the agent still answers the old state.
    await writeFile(d.stateFile, TEXT.replace('{"status":"DRAIN"}', '{"status":"FAIL"}'));
    const result = await cli(d, "status");
    assert.equal(result.code, CLI_EXIT.NOT_CONFIRMED);
    assert.match(
      result.stdout,
      /service {5}be_web\/srv1: expected fail ready 100%, agent up drain 100% \(DIFFERS\)/,
    );
    assert.match(result.stdout, /agreement {3}NO/);
  });

  test("check validates services", async (t) => {
    const d = await startDaemon(t, { state: TEXT });
    const good = await cli(d, "check");
    assert.equal(good.code, CLI_EXIT.OK);
    assert.match(good.stdout, /valid: .*"services":\{"be_web\/srv1":\{"status":"DRAIN"\}/);
    const { writeFile } = await import("node:fs/promises");
    await writeFile(d.stateFile, '{"status":"UP","services":{"a":{"status":"UP","weight":-1}}}');
    const bad = await cli(d, "check");
    assert.equal(bad.code, CLI_EXIT.INVALID_FILE);
    assert.match(bad.stderr, /services\["a"\]: weight must be an integer 0-255, got -1/);
  });
});
