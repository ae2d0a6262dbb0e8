/**
 * Prometheus metrics (HAPGENT_METRICS): the state HAProxy is given, the state file's health, the
 * probes and the load balancers that poll, and the process itself, served as `GET /metrics` on a
 * listener of their own. prom-client and node:http are loaded only when metrics are enabled, so
 * an agent without them pays nothing; nothing here runs on the probe path (every value is read
 * when Prometheus scrapes).
 *
 * The listener has its own small limits, and scrapes cost a rendering only when something changed
 * (see createMetrics): between changes, a scrape is a write of the bytes rendered before. A slow
 * or hostile HTTP client can at worst keep a scraper out (the port is meant for Prometheus
 * only), never hold up the agent port.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { formatAddress, type MetricsAddress } from "../config.js";
import { LOWEST_FIELDS } from "../core/fields.js";
import { type ServiceState, STATUSES, type State, serviceState } from "../core/state.js";
import type { Logger } from "../log.js";
import { VERSION } from "../version.js";
import type { CheckView } from "./checks/runner.js";
import type { FleetView } from "./fleet/layer.js";
import type { Poller } from "./ledger.js";
import { CHANGE_CAUSES, type OperatorStats } from "./operator.js";

type PromClient = typeof import("prom-client");

/** What the metrics are read from, at each scrape. */
export interface MetricsSource {
  /** The Node.js that runs the agent (process.version), for hapgent_build_info. */
  readonly nodeVersion: string;
  readonly state: () => State;
  readonly stats: () => OperatorStats;
  /** Probes answered since the start, by service ("" for the instance). */
  readonly probes: () => ReadonlyMap<string, number>;
  readonly pollers: () => readonly Poller[];
  /** A probe's answer for a name in a state, when checks have a say; else the file's rule. */
  readonly answer?: ((state: State, name: string | undefined) => ServiceState) | undefined;
  /** Goes up whenever `answer` may give another answer for the same state (a check's verdict). */
  readonly generation?: (() => number) | undefined;
  /** The agent's own checks; undefined without a checks file (no check metrics at all). */
  readonly checks?: (() => readonly CheckView[]) | undefined;
  /** The fleet's word; undefined without HAPGENT_ETCD_ENDPOINTS (no fleet metrics at all). */
  readonly fleet?: (() => FleetView) | undefined;
}

/** The metrics listener's limits, apart from the agent port's. */
export const METRICS_LIMITS = Object.freeze({
  /** Prometheus keeps one connection per scraper; a few scrapers and a curl fit easily. */
  maxConnections: 16,
  /** From one address: one client cannot take every connection from the others. */
  maxConnectionsPerAddress: 4,
  /** A request must arrive whole within this (a slow client is cut off). */
  requestTimeoutMs: 5000,
  /** A kept-alive connection with no request for this long is closed. */
  keepAliveTimeoutMs: 15_000,
  /** Any socket silent for this long is closed, whatever it is doing. */
  idleTimeoutMs: 30_000,
  /** Request headers larger than this get 431. */
  maxHeaderBytes: 8192,
});

/** How often the event-loop delay histogram samples: often enough to see lag, rarely enough to cost nothing. */
const EVENT_LOOP_SAMPLE_MS = 100;

export interface MetricsServer {
  /** `ADDRESS:PORT` as bound. */
  readonly address: string;
  close(): Promise<void>;
}

/** What the state's metrics are rendered from, taken once so that all of them agree. */
interface StateSnapshot {
  /** The instance (no service label), then each service, as HAProxy is given them now. */
  readonly answered: readonly (readonly [Labels, ServiceState])[];
  readonly stats: OperatorStats;
}

/** What the counters' metrics are rendered from, likewise. */
interface CountersSnapshot {
  readonly probes: ReadonlyMap<string, number>;
  /** Load balancers only: an address seen once (a scan, a curl) is not one. */
  readonly pollers: readonly Poller[];
  readonly checks: readonly CheckView[];
  readonly fleet: FleetView | undefined;
}

type Labels = Readonly<Record<string, string>>;
/** One sample: its labels and its value; an undefined value is left out. */
type Sample = readonly [Labels, number | undefined];
/** Registers one metric, set from the snapshot of each rendering. */
type Define<S> = (
  type: "gauge" | "counter",
  name: string,
  help: string,
  labelNames: readonly string[],
  samples: (now: S) => Iterable<Sample>,
) => void;

export interface Metrics {
  /**
   * The text format. Shared by every scrape until the state changes or the counters are older
   * than COUNTERS_REUSE_MS; concurrent requests share a rendering.
   */
  render(): Promise<Buffer>;
  readonly contentType: string;
}

/**
 * How long one rendering of the counters (and of the process's own metrics) answers every
 * request: a flood of scrapes costs one such rendering a second. A change of state is never
 * that late: it makes a new rendering at the next scrape.
 */
export const COUNTERS_REUSE_MS = 1000;

/**
 * Every hapgent metric, the process's and Node's, and their rendering, by prom-client in three
 * registries: the state's once per state (and answer, and change counters); the process's and
 * the counters' at most once per COUNTERS_REUSE_MS; all again at the first scrape after a change,
 * so that every metric of a scrape agrees with the state. The scrape is their texts joined, as
 * one registry of them all would write it.
 */
export function createMetrics(
  client: PromClient,
  source: MetricsSource,
  now: () => number = Date.now,
): Metrics {
  const own = new client.Registry();
  client.collectDefaultMetrics({
    register: own,
    eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS,
  });
  const renderState = renderer(
    client,
    () => stateSnapshot(source),
    (metric) => stateMetrics(metric, source.nodeVersion),
  );
  const renderCounters = renderer(
    client,
    () => countersSnapshot(source),
    (metric) => counterMetrics(metric, source.fleet !== undefined),
  );
  let generation: readonly unknown[] = [];
  let stateText: Promise<string> | undefined;
  let rendered: { readonly atMs: number; readonly bytes: Promise<Buffer> } | undefined;
  return {
    contentType: own.contentType,
    render() {
      const current = generationOf(source);
      if (stateText === undefined || !sameGeneration(current, generation)) {
        generation = current;
        const text = renderState();
        stateText = text;
        // A failed rendering is not reused.
        text.catch(() => {
          if (stateText === text) stateText = undefined;
        });
        rendered = undefined;
      }
      const at = now();
      if (rendered === undefined || at - rendered.atMs >= COUNTERS_REUSE_MS || at < rendered.atMs) {
        // Each text ends with a newline: joined, a blank line comes between, as within each.
        const parts = [own.metrics(), stateText, renderCounters()];
        const bytes = Promise.all(parts).then((texts) => Buffer.from(texts.join("\n")));
        const made = { atMs: at, bytes };
        rendered = made;
        bytes.catch(() => {
          if (rendered === made) rendered = undefined;
        });
      }
      return rendered.bytes;
    },
  };
}

/**
 * A registry of its own for the metrics `define` registers, and its rendering: each metric is
 * emptied and set from the snapshot when the registry renders, so a series gone from the state
 * is gone from the scrape too; one snapshot, taken by the first metric collected, serves them all.
 */
function renderer<S>(
  client: PromClient,
  take: () => S,
  define: (metric: Define<S>) => void,
): () => Promise<string> {
  const registry = new client.Registry();
  let snapshot: S | undefined;
  const current = (): S => {
    snapshot ??= take();
    return snapshot;
  };
  define((type, name, help, labelNames, samples) => {
    const options = { name, help, labelNames, registers: [registry] };
    // Both start empty at each rendering: a gauge is set, a counter is raised, to the value now.
    if (type === "gauge") {
      new client.Gauge({
        ...options,
        collect() {
          this.reset();
          for (const [labels, value] of samples(current())) {
            if (value !== undefined) this.set(labels, value);
          }
        },
      });
    } else {
      new client.Counter({
        ...options,
        collect() {
          this.reset();
          for (const [labels, value] of samples(current())) {
            if (value !== undefined) this.inc(labels, value);
          }
        },
      });
    }
  });
  return () => {
    snapshot = undefined;
    return registry.metrics();
  };
}

/** What the state's part depends on: when any of it differs, that part is rendered again. */
function generationOf(source: MetricsSource): readonly unknown[] {
  const stats = source.stats();
  return [
    source.state(),
    source.generation?.() ?? 0,
    stats.fileValid,
    stats.saveFailures,
    ...CHANGE_CAUSES.map((cause) => stats.changes[cause]),
  ];
}

function sameGeneration(a: readonly unknown[], b: readonly unknown[]): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

function stateSnapshot(source: MetricsSource): StateSnapshot {
  const state = source.state();
  const answer = source.answer ?? serviceState;
  return {
    answered: [
      [{}, answer(state, undefined)],
      ...Object.keys(state.services ?? {}).map(
        (name) => [serviceLabel(name), answer(state, name)] as const,
      ),
    ],
    stats: source.stats(),
  };
}

function countersSnapshot(source: MetricsSource): CountersSnapshot {
  return {
    probes: source.probes(),
    pollers: source.pollers().filter((p) => p.established),
    checks: source.checks?.() ?? [],
    fleet: source.fleet?.(),
  };
}

/** The state's metrics: what HAProxy is given, the file's health, the changes. */
function stateMetrics(metric: Define<StateSnapshot>, nodeVersion: string): void {
  metric(
    "gauge",
    "hapgent_build_info",
    "Always 1; the labels say which hapgent runs on which Node.js.",
    ["version", "nodejs"],
    () => [[{ version: VERSION, nodejs: nodeVersion }, 1]],
  );
  metric(
    "gauge",
    "hapgent_status",
    "1 for the status the agent answers (the instance's, or a service's with the service label), 0 for the others.",
    ["service", "status"],
    (now) =>
      now.answered.flatMap(([labels, state]) =>
        STATUSES.map((status): Sample => [{ ...labels, status }, state.status === status ? 1 : 0]),
      ),
  );
  for (const field of LOWEST_FIELDS) {
    const { name, help } = field.metric;
    const absent = "absent" in field.metric ? field.metric.absent : undefined;
    metric("gauge", name, help, ["service"], (now) =>
      now.answered.map(([labels, state]) => [labels, state[field.name] ?? absent]),
    );
  }
  metric(
    "gauge",
    "hapgent_state_file_valid",
    "1 when the state file, as the agent last read or wrote it, is valid; 0 when it is missing or invalid (reading it made the agent answer MAINT) and no change has been saved over it since.",
    [],
    (now) => [[{}, now.stats.fileValid ? 1 : 0]],
  );
  metric(
    "counter",
    "hapgent_state_changes_total",
    "Changes of the answered state, by cause: signal (SIGUSR1, SIGUSR2), reload (SIGHUP, which is also how the command line applies a change when it cannot reach the control socket; the file read at start-up is not a change), control (the command line, through the control socket), expiry (a change made with --for that ran out).",
    ["cause"],
    (now) => CHANGE_CAUSES.map((cause) => [{ cause }, now.stats.changes[cause]]),
  );
  metric(
    "counter",
    "hapgent_save_failures_total",
    "Saves of the state file that failed (each is retried).",
    [],
    (now) => [[{}, now.stats.saveFailures]],
  );
}

/** The counters' metrics, which move with every probe: probes, load balancers, checks, fleet. */
function counterMetrics(metric: Define<CountersSnapshot>, withFleet: boolean): void {
  // The instance's series is there from the start, so a rate over it is never missing.
  metric(
    "counter",
    "hapgent_probes_total",
    "Probes answered, by the service they asked for (no label: the instance); the command line's own probes are not counted.",
    ["service"],
    (now) => [
      [{}, now.probes.get("") ?? 0],
      ...[...now.probes]
        .filter(([service]) => service !== "")
        .map(([service, count]): Sample => [serviceLabel(service), count]),
    ],
  );
  // From the probe ledger: bounded by it (never one series per client port).
  metric(
    "gauge",
    "hapgent_load_balancers",
    "Load balancers (source addresses that probed at least twice) polling the agent now; one that stops polling is forgotten after three of its intervals (at least 10 s, at most 10 min).",
    [],
    (now) => [[{}, new Set(now.pollers.map((p) => p.address)).size]],
  );
  const byPoller = (value: (p: Poller) => number | undefined) => (now: CountersSnapshot) =>
    now.pollers.map((p): Sample => [{ address: p.address, ...serviceLabel(p.service) }, value(p)]);
  metric(
    "gauge",
    "hapgent_load_balancer_last_probe_seconds",
    "When each load balancer polling now last probed, by address and service asked for (Unix time).",
    ["address", "service"],
    byPoller((p) => p.lastSeenMs / 1000),
  );
  metric(
    "gauge",
    "hapgent_load_balancer_interval_seconds",
    "How often each load balancer polls, learnt from the median of the gaps between its last probes.",
    ["address", "service"],
    byPoller((p) => (p.intervalMs === undefined ? undefined : p.intervalMs / 1000)),
  );
  checkMetrics(metric);
  // Registered only with a fleet: a metric without labels shows 0 even with no sample.
  if (withFleet) fleetMetrics(metric);
}

/** The agent's own checks' metrics; none without a checks file (no check in the snapshot). */
function checkMetrics(metric: Define<CountersSnapshot>): void {
  const byCheck = (value: (c: CheckView) => number | undefined) => (now: CountersSnapshot) =>
    now.checks.map((c): Sample => [checkLabels(c), value(c)]);
  metric(
    "gauge",
    "hapgent_check_passing",
    "1 while the agent's check passes (as rise and fall count), 0 while it fails and has its say in the reply; by check, and the service it rules (none: the instance).",
    ["check", "service"],
    byCheck((c) => (c.passing ? 1 : 0)),
  );
  metric(
    "gauge",
    "hapgent_check_duration_seconds",
    "How long the check's last run took, to its result or its timeout.",
    ["check", "service"],
    byCheck((c) => (c.last === undefined ? undefined : c.last.durationMs / 1000)),
  );
  metric(
    "counter",
    "hapgent_check_runs_total",
    "Runs of the check since the agent read its checks file, by result: pass, or fail (whatever the failure meant for the reply).",
    ["check", "service", "result"],
    (now) =>
      now.checks.flatMap((c): Sample[] => [
        [{ ...checkLabels(c), result: "pass" }, c.runs - c.failedRuns],
        [{ ...checkLabels(c), result: "fail" }, c.failedRuns],
      ]),
  );
}

/** The fleet's metrics. */
function fleetMetrics(metric: Define<CountersSnapshot>): void {
  const fleet = (value: (f: FleetView) => Sample[]) => (now: CountersSnapshot) =>
    now.fleet === undefined ? [] : value(now.fleet);
  metric(
    "gauge",
    "hapgent_fleet_connected",
    "1 while every fleet key is watched on a live etcd endpoint, 0 while etcd cannot be reached or a watch was found stalled (the last word stands).",
    [],
    fleet((f) => [[{}, f.connected ? 1 : 0]]),
  );
  metric(
    "gauge",
    "hapgent_fleet_heard_seconds",
    "When etcd last confirmed the fleet's word (a change, a read that agreed with it), Unix time; from the cache file after a start without etcd.",
    [],
    fleet((f) => [[{}, f.heardAt === null ? undefined : Date.parse(f.heardAt) / 1000]]),
  );
  metric(
    "gauge",
    "hapgent_fleet_following",
    "1 for the fleet key whose word the agent follows, with its etcd revision as a label; no series while no key holds a word.",
    ["key", "revision"],
    fleet((f) =>
      f.word === null ? [] : [[{ key: f.word.key, revision: String(f.word.revision) }, 1]],
    ),
  );
  metric(
    "gauge",
    "hapgent_fleet_value_valid",
    "0 while the first fleet key that exists holds a value that is not a valid state (the word before stands), else 1.",
    [],
    fleet((f) => [[{}, f.problem === null ? 1 : 0]]),
  );
}

function checkLabels(check: CheckView): Labels {
  return { check: check.name, ...serviceLabel(check.service ?? "") };
}

/** The instance ("") has no service label, as in every hapgent metric. */
function serviceLabel(service: string): Labels {
  return service === "" ? {} : { service };
}

/** Serves the registry; rejects with Node's listen error (err.code EADDRINUSE, …). */
export async function startMetrics(
  address: MetricsAddress,
  source: MetricsSource,
  log: Logger,
): Promise<MetricsServer> {
  const [client, http] = await Promise.all([import("prom-client"), import("node:http")]);
  const metrics = createMetrics(client, source);
  const server = http.createServer(
    {
      requestTimeout: METRICS_LIMITS.requestTimeoutMs,
      headersTimeout: METRICS_LIMITS.requestTimeoutMs,
      keepAliveTimeout: METRICS_LIMITS.keepAliveTimeoutMs,
      maxHeaderSize: METRICS_LIMITS.maxHeaderBytes,
      // How often Node looks for requests past their timeout (30 s by default).
      connectionsCheckingInterval: 1000,
    },
    (request, response) => void answer(metrics, request, response, log),
  );
  server.maxConnections = METRICS_LIMITS.maxConnections;
  limitPerAddress(server);
  server.setTimeout(METRICS_LIMITS.idleTimeoutMs, (socket) => socket.destroy());
  const bound = await listen(server, address);
  return {
    address: formatAddress(bound.address, bound.port),
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Past METRICS_LIMITS.maxConnectionsPerAddress from one address, a new connection is closed. */
function limitPerAddress(server: Server): void {
  const open = new Map<string, number>();
  server.on("connection", (socket) => {
    const address = socket.remoteAddress ?? "";
    const count = (open.get(address) ?? 0) + 1;
    if (count > METRICS_LIMITS.maxConnectionsPerAddress) return void socket.destroy();
    open.set(address, count);
    socket.once("close", () => {
      const left = (open.get(address) ?? 1) - 1;
      if (left === 0) open.delete(address);
      else open.set(address, left);
    });
  });
}

function listen(server: Server, { host, port }: MetricsAddress): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port, exclusive: true }, () => {
      server.off("error", reject);
      // An error of the listening socket later (EMFILE on accept) costs a scrape, not the agent.
      server.on("error", () => {});
      resolve(server.address() as AddressInfo);
    });
  });
}

/** GET or HEAD /metrics: the metrics; another path 404, another method 405. */
async function answer(
  metrics: Metrics,
  request: IncomingMessage,
  response: ServerResponse,
  log: Logger,
): Promise<void> {
  const path = (request.url ?? "").split("?", 1)[0];
  if (path !== "/metrics") {
    return plain(response, 404, "not found: metrics are at /metrics\n");
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.setHeader("allow", "GET, HEAD");
    return plain(response, 405, `method ${request.method} not allowed: GET or HEAD /metrics\n`);
  }
  let body: Buffer;
  try {
    body = await metrics.render();
  } catch (err) {
    log.warning(`metrics: cannot render: ${(err as Error).message}`);
    return plain(response, 500, "metrics could not be rendered; see the agent's log\n");
  }
  response.writeHead(200, { "content-type": metrics.contentType, "content-length": body.length });
  // The same bytes for every scraper: written as they are, never copied per connection.
  response.end(request.method === "HEAD" ? undefined : body);
}

function plain(response: ServerResponse, status: number, text: string): void {
  response.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(text),
  });
  response.end(text);
}
