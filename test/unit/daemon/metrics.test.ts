/** Prometheus metrics: the registry as it renders, with real prom-client. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as client from "prom-client";
import type { State } from "../../../src/core/state.js";
import type { Poller } from "../../../src/daemon/ledger.js";
import {
  COUNTERS_REUSE_MS,
  createMetrics,
  type MetricsSource,
} from "../../../src/daemon/metrics.js";
import type { OperatorStats } from "../../../src/daemon/operator.js";

const FLEET_VIEW = {
  keys: ["/a"],
  endpoint: "http://127.0.0.1:2379",
  connected: true,
  word: null,
  problem: null,
  heardAt: null,
  heardAgoMs: null,
  lostAt: null,
  lostReason: null,
  fromCache: false,
};

function source(state: State, overrides: Partial<MetricsSource> = {}): MetricsSource {
  const stats: OperatorStats = {
    changes: { signal: 3, reload: 1, control: 2, expiry: 5 },
    fileValid: true,
    saveFailures: 0,
  };
  return {
    nodeVersion: process.version,
    state: () => state,
    stats: () => stats,
    probes: () => new Map(),
    pollers: () => [],
    ...overrides,
  };
}

/** The hapgent_ samples of a rendering, without comments and blank lines. */
async function hapgentLines(metrics: MetricsSource): Promise<string[]> {
  const text = (await createMetrics(client, metrics).render()).toString();
  return text.split("\n").filter((line) => line.startsWith("hapgent_"));
}

function poller(
  address: string,
  service: string,
  lastSeenMs: number,
  intervalMs?: number,
  established = true,
): Poller {
  return {
    address,
    service,
    firstSeenMs: lastSeenMs - 10_000,
    lastSeenMs,
    intervalMs,
    probes: 5,
    lastGiven: undefined,
    lastHeard: undefined,
    lastHeardMs: undefined,
    heldMaxconn: undefined,
    established,
  };
}

describe("the metrics registry", () => {
  test("the instance's state: one status at 1, the weight answered, no maxconn unless set", async () => {
    const lines = await hapgentLines(source({ status: "DRAIN" }));
    assert.deepEqual(
      lines.filter((l) => !l.startsWith("hapgent_build_info")),
      [
        'hapgent_status{status="UP"} 0',
        'hapgent_status{status="DOWN"} 0',
        'hapgent_status{status="READY"} 0',
        'hapgent_status{status="DRAIN"} 1',
        'hapgent_status{status="FAIL"} 0',
        'hapgent_status{status="MAINT"} 0',
        'hapgent_status{status="STOPPED"} 0',
        "hapgent_weight_percent 100",
        "hapgent_state_file_valid 1",
        'hapgent_state_changes_total{cause="signal"} 3',
        'hapgent_state_changes_total{cause="reload"} 1',
        'hapgent_state_changes_total{cause="control"} 2',
        'hapgent_state_changes_total{cause="expiry"} 5',
        "hapgent_save_failures_total 0",
        "hapgent_probes_total 0",
        "hapgent_load_balancers 0",
      ],
    );
    assert.match(
      lines.find((l) => l.startsWith("hapgent_build_info")) ?? "",
      /^hapgent_build_info\{version="\d+\.\d+\.\d+",nodejs="v\d+\.\d+\.\d+"\} 1$/,
    );
  });

  test("services as HAProxy hears them: the instance's DOWN is every service's answer", async () => {
    const state: State = {
      status: "DOWN",
      weight: 50,
      maxconn: 10,
      services: {
        "be_web/srv1": { status: "UP", weight: 7, maxconn: 3 },
        api: { status: "DRAIN" },
      },
    };
    const lines = await hapgentLines(source(state));
    const ones = lines.filter((l) => l.startsWith("hapgent_status") && l.endsWith(" 1"));
    assert.deepEqual(ones, [
      'hapgent_status{status="DOWN"} 1',
      'hapgent_status{service="be_web/srv1",status="DOWN"} 1',
      'hapgent_status{service="api",status="DOWN"} 1',
    ]);
    assert.equal(lines.filter((l) => l.startsWith("hapgent_status")).length, 21);
    // The services are answered the instance's whole line, weight and maxconn too.
    assert.deepEqual(
      lines.filter((l) => /^hapgent_(weight|maxconn)/.test(l)),
      [
        "hapgent_weight_percent 50",
        'hapgent_weight_percent{service="be_web/srv1"} 50',
        'hapgent_weight_percent{service="api"} 50',
        "hapgent_maxconn 10",
        'hapgent_maxconn{service="be_web/srv1"} 10',
        'hapgent_maxconn{service="api"} 10',
      ],
    );
    // With the instance UP, each service its own.
    const up = await hapgentLines(source({ ...state, status: "UP" }));
    assert.deepEqual(
      up.filter(
        (l) =>
          /^hapgent_(weight|maxconn)/.test(l) ||
          (l.startsWith("hapgent_status") && l.endsWith(" 1")),
      ),
      [
        'hapgent_status{status="UP"} 1',
        'hapgent_status{service="be_web/srv1",status="UP"} 1',
        'hapgent_status{service="api",status="DRAIN"} 1',
        "hapgent_weight_percent 50",
        'hapgent_weight_percent{service="be_web/srv1"} 7',
        'hapgent_weight_percent{service="api"} 100',
        "hapgent_maxconn 10",
        'hapgent_maxconn{service="be_web/srv1"} 3',
      ],
    );
  });

  test("probes by service, the ledger's load balancers by address, an invalid file, failed saves", async () => {
    const at = Date.UTC(2026, 10, 25, 12, 0, 0);
    const lines = await hapgentLines(
      source(
        { status: "MAINT" },
        {
          stats: () => ({
            changes: { signal: 0, reload: 0, control: 0, expiry: 0 },
            fileValid: false,
            saveFailures: 4,
          }),
          probes: () =>
            new Map([
              ["be_web/srv1", 12],
              ["", 30],
            ]),
          pollers: () => [
            poller("192.0.2.1", "be_web/srv1", at, 2000),
            poller("192.0.2.1", "", at + 500, 2000),
            poller("2001:db8::2", "", at + 1500),
            // Seen once: a scan or a curl, not a load balancer.
            poller("198.51.100.7", "", at + 1600, undefined, false),
          ],
        },
      ),
    );
    const pick = (prefix: string) => lines.filter((l) => l.startsWith(prefix));
    assert.deepEqual(pick("hapgent_state_file_valid"), ["hapgent_state_file_valid 0"]);
    assert.deepEqual(pick("hapgent_save_failures_total"), ["hapgent_save_failures_total 4"]);
    assert.deepEqual(pick("hapgent_probes_total"), [
      "hapgent_probes_total 30",
      'hapgent_probes_total{service="be_web/srv1"} 12',
    ]);
    assert.deepEqual(pick("hapgent_load_balancers "), ["hapgent_load_balancers 2"]);
    assert.deepEqual(pick("hapgent_load_balancer_last_probe_seconds"), [
      `hapgent_load_balancer_last_probe_seconds{address="192.0.2.1",service="be_web/srv1"} ${at / 1000}`,
      `hapgent_load_balancer_last_probe_seconds{address="192.0.2.1"} ${at / 1000 + 0.5}`,
      `hapgent_load_balancer_last_probe_seconds{address="2001:db8::2"} ${at / 1000 + 1.5}`,
    ]);
    assert.deepEqual(pick("hapgent_load_balancer_interval_seconds"), [
      'hapgent_load_balancer_interval_seconds{address="192.0.2.1",service="be_web/srv1"} 2',
      'hapgent_load_balancer_interval_seconds{address="192.0.2.1"} 2',
    ]);
  });

  test("a scrape right after a change shows it; between changes every scrape gets the same bytes", async () => {
    let state: State = { status: "UP", services: { api: { status: "UP" } } };
    let verdicts = 0;
    let probes = 1;
    let failures = 0;
    let clockMs = 1_000_000;
    const metrics = createMetrics(
      client,
      source(state, {
        state: () => state,
        // A check's verdict: the same state, another answer.
        answer: (s, name) => ({
          ...s,
          status: verdicts > 0 && name === "api" ? "DRAIN" : s.status,
        }),
        generation: () => verdicts,
        probes: () => new Map([["", probes]]),
        stats: () => ({
          changes: { signal: 0, reload: 0, control: 0, expiry: 0 },
          fileValid: true,
          saveFailures: failures,
        }),
      }),
      () => clockMs,
    );
    const line = async (series: string) =>
      (await metrics.render())
        .toString()
        .split("\n")
        .find((l) => l.startsWith(`${series} `));
    const first = await metrics.render();
    assert.equal(await metrics.render(), first, "the same bytes, not a rendering per scrape");
    assert.equal(await line('hapgent_status{status="UP"}'), 'hapgent_status{status="UP"} 1');

    state = { ...state, status: "DOWN" };
    assert.equal(await line('hapgent_status{status="DOWN"}'), 'hapgent_status{status="DOWN"} 1');
    assert.equal(
      await line('hapgent_status{service="api",status="DOWN"}'),
      'hapgent_status{service="api",status="DOWN"} 1',
    );
    const afterChange = await metrics.render();
    assert.notEqual(afterChange, first);
    assert.equal(await metrics.render(), afterChange);

    verdicts++;
    state = { ...state, status: "UP" };
    assert.equal(
      await line('hapgent_status{service="api",status="DRAIN"}'),
      'hapgent_status{service="api",status="DRAIN"} 1',
    );
    failures++;
    assert.equal(await line("hapgent_save_failures_total"), "hapgent_save_failures_total 1");

    // Counters move with every probe: they are rendered again at most once per interval.
    const counted = await metrics.render();
    probes = 5;
    clockMs += COUNTERS_REUSE_MS - 1;
    assert.equal(await metrics.render(), counted);
    clockMs += 1;
    assert.equal(await line("hapgent_probes_total"), "hapgent_probes_total 5");
  });

  test("the parts join as one registry's text: help, type, labels escaped, a blank line between", async () => {
    const text = (
      await createMetrics(
        client,
        source(
          { status: "UP", services: { 'be"web\\x': { status: "DOWN", maxconn: 3 } } },
          { fleet: () => FLEET_VIEW },
        ),
      ).render()
    ).toString();
    const from = text.indexOf("# HELP hapgent_build_info");
    assert.ok(from > 0 && text.slice(0, from).endsWith("\n\n"), "after the process's metrics");
    const hapgent = text.slice(from);
    assert.match(
      hapgent,
      /^# HELP hapgent_build_info Always 1; the labels say which hapgent runs on which Node\.js\.\n# TYPE hapgent_build_info gauge\nhapgent_build_info\{version="[^"]+",nodejs="v[^"]+"\} 1\n\n# HELP hapgent_status /,
    );
    assert.ok(
      hapgent.includes(
        '\nhapgent_status{service="be\\"web\\\\x",status="DOWN"} 1\nhapgent_status{service="be\\"web\\\\x",status="READY"} 0\n',
      ),
    );
    assert.ok(
      hapgent.includes(
        '# TYPE hapgent_maxconn gauge\nhapgent_maxconn{service="be\\"web\\\\x"} 3\n\n# HELP hapgent_state_file_valid',
      ),
    );
    // The state's part, then the counters', each rendered on its own.
    assert.ok(hapgent.includes("\nhapgent_save_failures_total 0\n\n# HELP hapgent_probes_total "));
    // A metric without labels and without a sample shows 0, as prom-client's gauges do.
    assert.ok(
      hapgent.includes("# TYPE hapgent_fleet_heard_seconds gauge\nhapgent_fleet_heard_seconds 0\n"),
    );
    assert.ok(hapgent.endsWith("hapgent_fleet_value_valid 1\n"), hapgent.slice(-200));
  });

  test("the process metrics Prometheus users expect are there", async () => {
    const text = (await createMetrics(client, source({ status: "UP" })).render()).toString();
    for (const name of [
      "process_resident_memory_bytes",
      "process_cpu_seconds_total",
      "process_open_fds",
      "process_max_fds",
      "process_start_time_seconds",
      "nodejs_eventloop_lag_seconds",
      "nodejs_heap_size_used_bytes",
    ]) {
      assert.match(text, new RegExp(`^${name}(\\{[^}]*\\})? \\S+$`, "m"), name);
    }
  });
});
