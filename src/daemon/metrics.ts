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
import { type ServiceState, type State, serviceState } from "../core/state.js";
import type { Logger } from "../log.js";
import type { CheckView } from "./checks.js";
import { CHANGE_CAUSES, type CommandStats } from "./commands.js";
import type { FleetView } from "./fleet-layer.js";
import type { Poller } from "./ledger.js";
import {
  type CountersSnapshot,
  renderCounters,
  renderState,
  type StateSnapshot,
  serviceLabel,
} from "./metrics-text.js";

type PromClient = typeof import("prom-client");

/** What the metrics are read from, at each scrape. */
export interface MetricsSource {
  readonly state: () => State;
  readonly stats: () => CommandStats;
  /** Probes answered since the start, by service ("" for the instance). */
  readonly probes: () => ReadonlyMap<string, number>;
  readonly pollers: () => readonly Poller[];
  /** A probe's answer for a name in a state, when checks have a say; else the file's rule. */
  readonly answer?: ((state: State, name: string | undefined) => ServiceState) | undefined;
  /** Goes up whenever `answer` may give another answer for the same state (a check's verdict). */
  readonly version?: (() => number) | undefined;
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
 * Every hapgent metric, the process's and Node's, and their rendering: the state's part once per
 * state (and answer, and change counters), the counters' part at most once per
 * COUNTERS_REUSE_MS, and both again at the first scrape after a change, so that every metric of
 * a scrape agrees with the state.
 */
export function createMetrics(
  client: PromClient,
  source: MetricsSource,
  now: () => number = Date.now,
): Metrics {
  const defaults = new client.Registry();
  client.collectDefaultMetrics({
    register: defaults,
    eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS,
  });
  let generation: readonly unknown[] = [];
  let state = "";
  let rendered: { readonly atMs: number; readonly bytes: Promise<Buffer> } | undefined;
  return {
    contentType: defaults.contentType,
    render() {
      const current = generationOf(source);
      if (!sameGeneration(current, generation)) {
        generation = current;
        state = renderState(stateSnapshot(source));
        rendered = undefined;
      }
      const at = now();
      if (rendered === undefined || at - rendered.atMs >= COUNTERS_REUSE_MS || at < rendered.atMs) {
        const ofState = state;
        const bytes = defaults
          .metrics()
          .then((own) =>
            Buffer.from(`${own}\n${ofState}\n\n${renderCounters(countersSnapshot(source))}\n`),
          );
        const made = { atMs: at, bytes };
        rendered = made;
        // A failed rendering is not reused.
        bytes.catch(() => {
          if (rendered === made) rendered = undefined;
        });
      }
      return rendered.bytes;
    },
  };
}

/** What the state's part depends on: when any of it differs, that part is rendered again. */
function generationOf(source: MetricsSource): readonly unknown[] {
  const stats = source.stats();
  return [
    source.state(),
    source.version?.() ?? 0,
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
    nodeVersion: process.version,
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
