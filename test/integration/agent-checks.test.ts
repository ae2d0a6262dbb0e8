/**
 * The daemon with a checks file (HAPGENT_CHECKS_FILE), as a real process with a real HTTP
 * service behind it: the checks' verdicts reach the reply, never the state file, and never put
 * back a server its operator took out.
 */
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { CLI_EXIT } from "../../src/cli/exit.js";
import {
  cliFor as cli,
  type Daemon,
  freePort,
  httpModulesLoaded,
  startDaemon,
  tempDir,
} from "../helpers.js";

async function app(t: { after: (fn: () => Promise<void>) => void }) {
  let code = 200;
  const server = createServer((_req, res) => {
    res.statusCode = code;
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/health`,
    answer(next: number) {
      code = next;
    },
  };
}

async function withChecks(
  t: Parameters<typeof startDaemon>[0] & { after: (fn: () => Promise<void>) => void },
  checks: unknown,
  options: { state?: string; env?: Record<string, string> } = {},
): Promise<Daemon & { checksFile: string }> {
  const dir = await tempDir(t);
  const checksFile = join(dir, "checks.json");
  await writeFile(checksFile, JSON.stringify(checks), { mode: 0o644 });
  const d = await startDaemon(t, {
    state: options.state ?? '{"status":"UP"}',
    env: { HAPGENT_CHECKS_FILE: checksFile, ...options.env },
  });
  return Object.assign(d, { checksFile });
}

test("a failing check drains the agent and it comes back; the file never changes; the operator's word is the ceiling", async (t) => {
  const service = await app(t);
  const d = await withChecks(t, {
    checks: [
      { name: "web", http: service.url, interval: "300ms", timeout: "300ms", rise: 2, fall: 2 },
    ],
  });
  await d.waitForLog(/start-up: loaded checks file .*: 1 check \(web\)/);
  assert.equal(await d.probe(), "up ready 100%\n");

  service.answer(503);
  const drained = `up drain 100% # check web: ${service.url}: 503 for 2 checks\n`;
  await d.waitForReply(drained);
  assert.equal(await d.readRawState(), '{"status":"UP"}', "a check never writes the file");
  const status = await cli(d, "status");
  assert.equal(status.code, CLI_EXIT.OK, status.stdout + status.stderr);
  assert.match(
    status.stdout,
    /^check {7}web: FAILING \(DRAIN\); last http:\/\/127\.0\.0\.1:\d+\/health: 503 in [0-9.]+ ms, [0-9.]+ s ago; passes 0\/2, failures \d+\/2$/m,
  );
  assert.match(
    status.stdout,
    /^note {8}the checks decide: the file alone would answer up ready 100%$/m,
  );
  const json = JSON.parse((await cli(d, "status", "--json")).stdout);
  assert.equal(json.checks[0].verdict.status, "DRAIN");
  // A reload (the state file's, say) with the checks file unchanged keeps the failing check failing.
  d.signal("SIGHUP");
  await d.waitForLog(/SIGHUP: checks file .* unchanged; its checks keep running/);
  assert.equal(await d.probe(), drained);

  // An operator's MAINT wins over a check's DRAIN, and the command confirms what is answered.
  const maint = await cli(d, "maint", "--reason", "disk swap");
  assert.equal(maint.code, CLI_EXIT.OK, maint.stderr);
  assert.equal(await d.probe(), "maint 100% # disk swap\n");
  service.answer(200);
  await d.waitForLog(/check web: passing again after 2 passes in a row/);
  assert.equal(await d.probe(), "maint 100% # disk swap\n", "a passing check puts nothing back");
  // UP means "in service while the checks pass".
  assert.equal((await cli(d, "up")).code, CLI_EXIT.OK);
  assert.equal(await d.probe(), "up ready 100%\n");
  service.answer(500);
  await d.waitForReply(`down ready 100% # check web: ${service.url}: 500 for 2 checks\n`);
  // A change while a check fails is confirmed against what the agent really answers.
  const drain = await cli(d, "drain", "--weight", "50");
  assert.equal(drain.code, CLI_EXIT.OK, drain.stderr);
  assert.equal(await d.probe(), `down ready 50% # check web: ${service.url}: 500 for 2 checks\n`);
  assert.match(d.stderr(), /check web: failing \(DRAIN\) after 2 failures in a row/);
  assert.match(d.stderr(), /check web: passing again after 2 passes in a row/);
});

test("a check of one service rules that service's reply alone", async (t) => {
  const service = await app(t);
  const d = await withChecks(
    t,
    {
      checks: [
        {
          name: "srv1",
          service: "be_web/srv1",
          http: service.url,
          interval: "200ms",
          fall: 1,
          rise: 1,
        },
      ],
    },
    {
      state:
        '{"status":"UP","services":{"be_web/srv1":{"status":"UP"},"be_web/srv2":{"status":"UP","weight":50}}}',
    },
  );
  service.answer(503);
  await waitForService(
    d,
    "be_web/srv1",
    `up drain 100% # check srv1: ${service.url}: 503 for 1 check\n`,
  );
  assert.equal(await d.probe({ payload: "be_web/srv2\n" }), "up ready 50%\n");
  assert.equal(await d.probe({ payload: "\n" }), "up ready 100%\n");
});

async function waitForService(d: Daemon, name: string, line: string): Promise<void> {
  const deadline = Date.now() + 5000;
  let last = "";
  while (Date.now() < deadline) {
    last = await d.probe({ payload: `${name}\n` });
    if (last === line) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.fail(`${name}: last reply ${JSON.stringify(last)}, expected ${JSON.stringify(line)}`);
}

test("a checks file that cannot be used means MAINT with the reason; fixed and read again (HUP), the checks run", async (t) => {
  const service = await app(t);
  const d = await withChecks(t, { checks: [{ name: "web", http: "gopher://x/" }] });
  assert.equal(await d.probe(), "maint 100% # hapgent: the checks file is invalid\n");
  assert.match(
    d.stderr(),
    /start-up: checks file .*checks\.json: checks\[0\]: web: http must be an http:\/\/ or https:\/\/ URL, got "gopher:\/\/x\/"; answering MAINT until it is fixed and read again \(HUP\)/,
  );
  const status = await cli(d, "status");
  assert.match(status.stdout, /^checks {6}UNUSABLE: checks\[0\]: web: http must be/m);
  await writeFile(
    d.checksFile,
    JSON.stringify({ checks: [{ name: "web", http: service.url, interval: "200ms" }] }),
  );
  d.signal("SIGHUP");
  await d.waitForReply("up ready 100%\n");
  await d.waitForLog(/SIGHUP: loaded checks file .*: 1 check \(web\)/);
  // And a checks file that goes missing: MAINT again at the next HUP.
  await writeFile(d.checksFile, "{");
  d.signal("SIGHUP");
  await d.waitForReply("maint 100% # hapgent: the checks file is invalid\n");
});

test("metrics: each check's result, last duration and runs", async (t) => {
  const service = await app(t);
  const metricsPort = await freePort();
  const d = await withChecks(
    t,
    // A timeout a loaded machine meets: a late 503 would be a timeout, which takes it DOWN.
    {
      checks: [
        { name: "web", http: service.url, interval: "500ms", timeout: "450ms", fall: 1, rise: 1 },
      ],
    },
    { env: { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` } },
  );
  service.answer(503);
  await d.waitForReply(`up drain 100% # check web: ${service.url}: 503 for 1 check\n`);
  // Another run or two after the first failure.
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  assert.match(text, /^hapgent_check_passing\{check="web"\} 0$/m);
  assert.match(text, /^hapgent_check_duration_seconds\{check="web"\} 0\.\d+$/m);
  assert.match(text, /^hapgent_check_runs_total\{check="web",result="fail"\} [1-9]\d*$/m);
  assert.match(text, /^hapgent_check_runs_total\{check="web",result="pass"\} \d+$/m);
  // hapgent_status is what HAProxy is given: the check's DRAIN.
  assert.match(text, /^hapgent_status\{status="DRAIN"\} 1$/m);
});

test("without a checks file, nothing of the checks is loaded: not even Node's HTTP client", async (t) => {
  assert.deepEqual(await httpModulesLoaded(t, {}), []);
  // And with one, it is: the test can tell.
  const dir = await tempDir(t);
  const checksFile = join(dir, "checks.json");
  await writeFile(checksFile, JSON.stringify({ checks: [] }), { mode: 0o644 });
  const loaded = await httpModulesLoaded(t, { HAPGENT_CHECKS_FILE: checksFile });
  assert.ok(loaded.includes("NativeModule http"), JSON.stringify(loaded));
});

test("what a check prints reaches the log and status escaped and bounded: ESC[2J, BEL, NUL, CR, invalid UTF-8", async (t) => {
  const d = await withChecks(t, {
    checks: [
      {
        name: "noisy",
        shell: "printf 'disk \\033[2J\\007\\000 x\\r y \\377 end\\n'; exit 2",
        interval: "1s",
      },
      // 3,000 escapes: six times as long once escaped, unless the detail is bounded.
      {
        name: "long",
        shell: "head -c 3000 /dev/zero | tr '\\000' '\\033'; exit 2",
        interval: "1s",
      },
    ],
  });
  const noisy = await d.waitForLog(/check noisy: failing \(DOWN\)[^\n]*\n/);
  assert.equal(
    noisy.split(": exit 2: ")[1],
    "disk \\u001b[2J\\u0007\\u0000 x\\u000d y \ufffd end\n",
    noisy,
  );
  const long = await d.waitForLog(/check long: failing \(DOWN\)[^\n]*\n/);
  assert.ok(long.length < 700, `a bounded line, got ${long.length} characters`);
  // Cut before an escape it would split.
  assert.match(long, /: exit 2: (\\u001b)+\.\.\.\n$/);
  const status = await cli(d, "status");
  for (const text of [d.stderr(), status.stdout, status.stderr]) {
    assert.doesNotMatch(text.replaceAll("\n", ""), /\p{Cc}/u, "no raw control character");
  }
  const line = status.stdout.split("\n").find((l) => l.startsWith("check       long:")) ?? "";
  assert.ok(line.length > 0 && line.length < 800, line);
});
