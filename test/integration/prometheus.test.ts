/**
 * The metrics as Prometheus sees them: Debian's real `prometheus` scrapes a real daemon while its
 * state changes by signal, by HUP and with the command line, and the shipped alert rules are
 * checked and tested with `promtool` on series captured from a running daemon.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { COUNTERS_REUSE_MS } from "../../src/daemon/metrics.js";
import {
  cliFor,
  type Daemon,
  execOk,
  freePort,
  missing,
  poller,
  REPO,
  startDaemon,
  tempDir,
  waitFor,
} from "../helpers.js";

const SKIP = missing("Prometheus", { commands: ["prometheus", "promtool"] });
const RULES = join(REPO, "packaging/prometheus/hapgent.rules.yml");

async function startPrometheus(
  t: { after: (fn: () => Promise<void>) => void },
  dir: string,
  target: string,
): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const config = join(dir, "prometheus.yml");
  await writeFile(
    config,
    `global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [${JSON.stringify(RULES)}]
scrape_configs:
  - job_name: hapgent
    static_configs:
      - targets: [${JSON.stringify(target)}]
`,
  );
  const child = spawn(
    "prometheus",
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise((resolve) => child.on("close", resolve));
  t.after(async () => {
    child.kill("SIGTERM");
    await exited;
  });
  await waitFor(
    "Prometheus ready",
    async () =>
      (await fetch(`http://127.0.0.1:${port}/-/ready`).catch(() => undefined))?.ok
        ? true
        : undefined,
    30_000,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; its stderr:\n${stderr}`);
  });
  return { port, child };
}

/** Prometheus's answer to an instant query: one value per series. */
async function query(
  port: number,
  expr: string,
): Promise<{ metric: Record<string, string>; value: number }[]> {
  const response = await fetch(
    `http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(expr)}`,
  );
  const body = (await response.json()) as {
    status: string;
    data: { result: { metric: Record<string, string>; value: [number, string] }[] };
  };
  assert.equal(body.status, "success", JSON.stringify(body));
  return body.data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
}

/** Waits until `expr` has exactly one series, of value `value`. */
async function until(port: number, expr: string, value: number): Promise<void> {
  let last: unknown;
  await waitFor(
    `${expr} == ${value} in Prometheus`,
    async () => {
      const result = await query(port, expr);
      last = result;
      return result.length === 1 && result[0]?.value === value ? true : undefined;
    },
    20_000,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last answer ${JSON.stringify(last)}`);
  });
}

test("Prometheus scrapes the agent: the series follow signals, HUP and the command line", {
  skip: SKIP,
}, async (t) => {
  const metricsPort = await freePort();
  const d = await startDaemon(t, {
    state: '{"status":"UP","weight":80}',
    env: { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` },
  });
  const balancer = poller(d.port, "127.0.0.1", 200);
  t.after(balancer.stop);
  const prometheus = await startPrometheus(t, await tempDir(t), `127.0.0.1:${metricsPort}`);
  const p = prometheus.port;

  await until(p, 'hapgent_status{job="hapgent",status="UP"}', 1);
  await until(p, "hapgent_weight_percent", 80);
  await until(p, "hapgent_state_file_valid", 1);
  await until(p, "hapgent_load_balancers", 1);
  await until(p, 'count(hapgent_load_balancer_last_probe_seconds{address="127.0.0.1"})', 1);

  d.signal("SIGUSR2");
  await until(p, 'hapgent_status{status="DOWN"}', 1);
  await until(p, 'hapgent_state_changes_total{cause="signal"}', 1);

  await writeFile(d.stateFile, '{"status":"DRAIN","weight":10,"maxconn":50}\n');
  d.signal("SIGHUP");
  await until(p, 'hapgent_status{status="DRAIN"}', 1);
  await until(p, "hapgent_maxconn", 50);
  await until(p, 'hapgent_state_changes_total{cause="reload"}', 1);

  const up = await cliFor(d, "up", "--no-wait");
  assert.equal(up.code, 0, up.stderr);
  await until(p, 'hapgent_status{status="UP"}', 1);
  await until(p, 'hapgent_state_changes_total{cause="control"}', 1);

  await writeFile(d.stateFile, '{"status":"UP","weigth":5}\n');
  d.signal("SIGHUP");
  await until(p, "hapgent_state_file_valid", 0);
  await until(p, 'hapgent_status{status="MAINT"}', 1);
  const probes = (await query(p, "hapgent_probes_total"))[0]?.value ?? 0;
  assert.ok(probes > 0, `probes counted: ${probes}`);

  // The shipped rules load into the real Prometheus, and every one evaluates.
  type Rules = { data: { groups: { name: string; rules: { name: string; health: string }[] }[] } };
  const group = await waitFor(
    "every rule evaluated",
    async () => {
      const rules = (await (await fetch(`http://127.0.0.1:${p}/api/v1/rules`)).json()) as Rules;
      const hapgent = rules.data.groups.find((g) => g.name === "hapgent");
      return hapgent?.rules.every((r) => r.health === "ok") ? hapgent : undefined;
    },
    10_000,
  );
  assert.deepEqual(
    group.rules.map((r) => r.name),
    [
      "HapgentNotPolled",
      "HapgentLoadBalancerLost",
      "HapgentStateFileInvalid",
      "HapgentSavesFailing",
      "HapgentNotInService",
      "HapgentDown",
    ],
  );
});

// --- The alert rules, tested by promtool on series a running daemon really emitted. ---

const INSTANCE = "web-12:9778";

/** The hapgent_* samples of one scrape, as series with the labels Prometheus would add. */
async function capture(metricsPort: number): Promise<Map<string, number> | undefined> {
  const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).catch(() => undefined);
  if (response === undefined) return undefined;
  const series = new Map<string, number>();
  for (const line of (await response.text()).split("\n")) {
    const match = /^(hapgent_\w+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) continue;
    const [, name, labels, value] = match;
    const all = [`instance="${INSTANCE}"`, 'job="hapgent"', ...(labels ? [labels] : [])];
    series.set(`${name}{${all.join(",")}}`, Number(value));
  }
  return series;
}

interface Segment {
  readonly minutes: number;
  readonly scrape: Map<string, number> | undefined;
}

/** promtool's input_series: one value a minute, `_` where a scrape lacked the series. */
function inputSeries(segments: readonly Segment[]): string {
  const names = new Set<string>();
  for (const s of segments) for (const name of s.scrape?.keys() ?? []) names.add(name);
  const lines = [...names].map((name) => {
    const values = segments.flatMap((s) =>
      Array<string>(s.minutes).fill(String(s.scrape?.get(name) ?? "_")),
    );
    return `      - series: '${name}'\n        values: '${values.join(" ")}'`;
  });
  const up = segments.flatMap((s) => Array<string>(s.minutes).fill(s.scrape ? "1" : "0"));
  lines.push(
    `      - series: 'up{instance="${INSTANCE}",job="hapgent"}'\n        values: '${up.join(" ")}'`,
  );
  return lines.join("\n");
}

/** Each alert's labels and annotations as the rules file renders them for INSTANCE. */
async function expectedAlerts(): Promise<
  Map<string, { severity: string; summary: string; description: string }>
> {
  const text = await readFile(RULES, "utf8");
  const alerts = new Map<string, { severity: string; summary: string; description: string }>();
  for (const block of text.split(/^\s+- alert: /m).slice(1)) {
    const name = block.split("\n", 1)[0]?.trim() ?? "";
    const field = (key: string) => {
      const raw = new RegExp(`^\\s+${key}: (.*)$`, "m").exec(block)?.[1] ?? "";
      const value = raw.startsWith('"') ? (JSON.parse(raw) as string) : raw;
      return value.replaceAll("{{ $labels.instance }}", INSTANCE);
    };
    alerts.set(name, {
      severity: field("severity"),
      summary: field("summary"),
      description: field("description"),
    });
  }
  return alerts;
}

/** One promtool alert expectation: `name` firing at `at`, or not firing. */
async function alertTest(name: string, at: string, firing: boolean): Promise<string> {
  const alert = (await expectedAlerts()).get(name);
  assert.ok(alert, `the rules file has ${name}`);
  const exp = firing
    ? `
          - exp_labels:
              severity: ${alert.severity}
              instance: ${INSTANCE}
              job: hapgent
            exp_annotations:
              summary: ${JSON.stringify(alert.summary)}
              description: ${JSON.stringify(alert.description)}`
    : " []";
  return `      - eval_time: ${at}
        alertname: ${name}
        exp_alerts:${exp}`;
}

test("the shipped alert rules pass promtool check, and fire on series a real agent emitted", {
  skip: SKIP,
}, async (t) => {
  await execOk("promtool", ["check", "rules", RULES]);
  const dir = await tempDir(t);
  const metricsPort = await freePort();
  const home = join(dir, "agent");
  await mkdir(home);
  const d: Daemon = await startDaemon(t, {
    dir: home,
    state: '{"status":"UP"}',
    env: { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` },
  });
  const segments: Segment[] = [];
  const hold = async (minutes: number) => {
    // The counters' rendering answers for a second: the next one shows what just happened.
    await sleep(COUNTERS_REUSE_MS);
    segments.push({ minutes, scrape: await capture(metricsPort) });
  };

  // In service and polled by one load balancer.
  const balancer = poller(d.port, "127.0.0.1", 100);
  t.after(balancer.stop);
  const loadBalancers = async () =>
    (await capture(metricsPort))?.get(
      `hapgent_load_balancers{instance="${INSTANCE}",job="hapgent"}`,
    );
  await waitFor("the load balancer is in the ledger", async () =>
    (await loadBalancers()) === 1 ? true : undefined,
  );
  await hold(10); // minutes 0-9
  // Taken out by a deploy that never puts it back.
  d.signal("SIGUSR2");
  // Saved before the file is edited below: the save would replace the edit.
  await d.waitForFile('{"status":"DOWN"}\n');
  await hold(70); // 10-79
  // A broken file, read on HUP.
  await writeFile(d.stateFile, "{not json\n");
  d.signal("SIGHUP");
  await d.waitForLog(/SIGHUP: state file .*; state/);
  await hold(10); // 80-89
  // Saves failing: the state file's place is taken by a directory the agent cannot replace.
  await rm(d.stateFile);
  await mkdir(d.stateFile);
  d.signal("SIGUSR1");
  await d.waitForLog(/cannot save state file/);
  await hold(10); // 90-99
  // The load balancer stops polling; the agent forgets it after three intervals (at least 10 s).
  await balancer.stop();
  await waitFor(
    "the load balancer forgotten",
    async () => ((await loadBalancers()) === 0 ? true : undefined),
    20_000,
  );
  await hold(20); // 100-119
  // The agent stops: nothing to scrape.
  d.child.kill("SIGKILL");
  await d.exited;
  await hold(10); // 120-129
  assert.equal(segments.at(-1)?.scrape, undefined);

  const names = [
    "HapgentNotPolled",
    "HapgentLoadBalancerLost",
    "HapgentStateFileInvalid",
    "HapgentSavesFailing",
    "HapgentNotInService",
    "HapgentDown",
  ];
  const firing: [string, string][] = [
    ["HapgentNotInService", "75m"],
    ["HapgentStateFileInvalid", "85m"],
    ["HapgentSavesFailing", "95m"],
    ["HapgentNotPolled", "110m"],
    ["HapgentLoadBalancerLost", "110m"],
    ["HapgentDown", "125m"],
  ];
  const cases = [
    // Healthy at first: nothing fires.
    ...(await Promise.all(names.map((name) => alertTest(name, "5m", false)))),
    // Out of service for less than the hour allowed: not yet.
    await alertTest("HapgentNotInService", "65m", false),
    ...(await Promise.all(firing.map(([name, at]) => alertTest(name, at, true)))),
  ];
  const file = join(dir, "hapgent.rules.test.yml");
  await writeFile(
    file,
    `rule_files:
  - ${JSON.stringify(RULES)}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
${inputSeries(segments)}
    alert_rule_test:
${cases.join("\n")}
`,
  );
  const result = await execOk("promtool", ["test", "rules", file]).catch(async (err: Error) => {
    throw new Error(`${err.message}\nthe test file:\n${await readFile(file, "utf8")}`);
  });
  assert.match(result.stdout, /SUCCESS/);
});
