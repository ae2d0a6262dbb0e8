/**
 * The hapgent metrics in Prometheus's text format (0.0.4), as prom-client writes it: each family
 * is a list of samples computed from a snapshot, rendered to text. Pure: values in, text out.
 *
 * They come in two parts, so that a scrape costs a rendering only when something changed: the
 * state's (what HAProxy is given, the file's health, the changes), rendered once per state, and
 * the counters' (probes, the load balancers, the checks' runs, the fleet's link), which move with
 * every probe and are rendered at most once per short interval. Written by hand rather than
 * through prom-client's gauges: with 1,000 services those take a tenth of a second a rendering,
 * which every probe waiting behind it would pay.
 */
import { DEFAULT_WEIGHT_PERCENT } from "../core/reply.js";
import { type ServiceState, STATUSES } from "../core/state.js";
import { VERSION } from "../version.js";
import type { CheckView } from "./checks.js";
import { CHANGE_CAUSES, type CommandStats } from "./commands.js";
import type { FleetView } from "./fleet-layer.js";
import type { Poller } from "./ledger.js";

type Labels = Readonly<Record<string, string>>;
/** One sample: its labels and its value; an undefined value is left out. */
type Sample = readonly [Labels, number | undefined];

/** What the state's part is rendered from: every metric of it agrees on one state. */
export interface StateSnapshot {
  /** The instance (no service label), then each service, as HAProxy is given them now. */
  readonly answered: readonly (readonly [Labels, ServiceState])[];
  readonly stats: CommandStats;
  readonly nodeVersion: string;
}

/** What the counters' part is rendered from. */
export interface CountersSnapshot {
  readonly probes: ReadonlyMap<string, number>;
  /** Load balancers only: an address seen once (a scan, a curl) is not one. */
  readonly pollers: readonly Poller[];
  readonly checks: readonly CheckView[];
  /** Undefined without a fleet: then no fleet metric at all. */
  readonly fleet: FleetView | undefined;
}

interface Family<S> {
  readonly type: "gauge" | "counter";
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  readonly samples: (now: S) => Iterable<Sample>;
}

/** The state's part, in the order of the scrape. */
export function renderState(now: StateSnapshot): string {
  return STATE_FAMILIES.map((family) => renderFamily(family, now)).join("\n\n");
}

/** The counters' part, in the order of the scrape; the fleet's only with a fleet. */
export function renderCounters(now: CountersSnapshot): string {
  const families = now.fleet === undefined ? COUNTER_FAMILIES : [...COUNTER_FAMILIES, ...FLEET];
  return families.map((family) => renderFamily(family, now)).join("\n\n");
}

function renderFamily<S>(family: Family<S>, now: S): string {
  const lines = [
    `# HELP ${family.name} ${escaped(family.help)}`,
    `# TYPE ${family.name} ${family.type}`,
  ];
  for (const [labels, value] of family.samples(now)) {
    if (value === undefined) continue;
    const pairs = Object.entries(labels).map(
      ([k, v]) => `${k}="${escaped(v).replace(/"/g, '\\"')}"`,
    );
    lines.push(
      `${family.name}${pairs.length === 0 ? "" : `{${pairs.join(",")}}`} ${number(value)}`,
    );
  }
  // As prom-client: a metric without labels shows 0 when it has no sample.
  if (lines.length === 2 && family.labelNames.length === 0) lines.push(`${family.name} 0`);
  return lines.join("\n");
}

function escaped(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function number(value: number): string {
  if (Number.isNaN(value)) return "Nan";
  if (!Number.isFinite(value)) return value < 0 ? "-Inf" : "+Inf";
  return `${value}`;
}

const family = <S>(
  type: Family<S>["type"],
  name: string,
  help: string,
  labelNames: readonly string[],
  samples: (now: S) => Iterable<Sample>,
): Family<S> => ({ type, name, help, labelNames, samples });

const STATE_FAMILIES: readonly Family<StateSnapshot>[] = [
  family(
    "gauge",
    "hapgent_build_info",
    "Always 1; the labels say which hapgent runs on which Node.js.",
    ["version", "nodejs"],
    (now) => [[{ version: VERSION, nodejs: now.nodeVersion }, 1]],
  ),
  family(
    "gauge",
    "hapgent_status",
    "1 for the status the agent answers (the instance's, or a service's with the service label), 0 for the others.",
    ["service", "status"],
    (now) =>
      now.answered.flatMap(([labels, state]) =>
        STATUSES.map((status): Sample => [{ ...labels, status }, state.status === status ? 1 : 0]),
      ),
  ),
  family(
    "gauge",
    "hapgent_weight_percent",
    "The weight the agent answers, in percent of the weight in haproxy.cfg (100 when the file sets none).",
    ["service"],
    (now) =>
      now.answered.map(([labels, state]) => [labels, state.weight ?? DEFAULT_WEIGHT_PERCENT]),
  ),
  family(
    "gauge",
    "hapgent_maxconn",
    "The maxconn the agent answers; absent when the file sets none.",
    ["service"],
    (now) => now.answered.map(([labels, state]) => [labels, state.maxconn]),
  ),
  family(
    "gauge",
    "hapgent_state_file_valid",
    "1 when the state file, as the agent last read or wrote it, is valid; 0 when it is missing or invalid (reading it made the agent answer MAINT) and no change has been saved over it since.",
    [],
    (now) => [[{}, now.stats.fileValid ? 1 : 0]],
  ),
  family(
    "counter",
    "hapgent_state_changes_total",
    "Changes of the answered state, by cause: signal (SIGUSR1, SIGUSR2), reload (SIGHUP, which is also how the command line applies a change when it cannot reach the control socket; the file read at start-up is not a change), control (the command line, through the control socket), expiry (a change made with --for that ran out).",
    ["cause"],
    (now) => CHANGE_CAUSES.map((cause) => [{ cause }, now.stats.changes[cause]]),
  ),
  family(
    "counter",
    "hapgent_save_failures_total",
    "Saves of the state file that failed (each is retried).",
    [],
    (now) => [[{}, now.stats.saveFailures]],
  ),
];

const byPoller = (value: (p: Poller) => number | undefined) => (now: CountersSnapshot) =>
  now.pollers.map((p): Sample => [{ address: p.address, ...serviceLabel(p.service) }, value(p)]);
const byCheck = (value: (c: CheckView) => number | undefined) => (now: CountersSnapshot) =>
  now.checks.map((c): Sample => [checkLabels(c), value(c)]);

const COUNTER_FAMILIES: readonly Family<CountersSnapshot>[] = [
  // The instance's series is there from the start, so a rate over it is never missing.
  family(
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
  ),
  // From the probe ledger: bounded by it (never one series per client port).
  family(
    "gauge",
    "hapgent_load_balancers",
    "Load balancers (source addresses that probed at least twice) polling the agent now; one that stops polling is forgotten after three of its intervals (at least 10 s, at most 10 min).",
    [],
    (now) => [[{}, new Set(now.pollers.map((p) => p.address)).size]],
  ),
  family(
    "gauge",
    "hapgent_load_balancer_last_probe_seconds",
    "When each load balancer polling now last probed, by address and service asked for (Unix time).",
    ["address", "service"],
    byPoller((p) => p.lastSeenMs / 1000),
  ),
  family(
    "gauge",
    "hapgent_load_balancer_interval_seconds",
    "How often each load balancer polls, learnt from the median of the gaps between its last probes.",
    ["address", "service"],
    byPoller((p) => (p.intervalMs === undefined ? undefined : p.intervalMs / 1000)),
  ),
  family(
    "gauge",
    "hapgent_check_passing",
    "1 while the agent's check passes (as rise and fall count), 0 while it fails and has its say in the reply; by check, and the service it rules (none: the instance).",
    ["check", "service"],
    byCheck((c) => (c.passing ? 1 : 0)),
  ),
  family(
    "gauge",
    "hapgent_check_duration_seconds",
    "How long the check's last run took, to its result or its timeout.",
    ["check", "service"],
    byCheck((c) => (c.last === undefined ? undefined : c.last.durationMs / 1000)),
  ),
  family(
    "counter",
    "hapgent_check_runs_total",
    "Runs of the check since the agent read its checks file, by result: pass, or fail (whatever the failure meant for the reply).",
    ["check", "service", "result"],
    (now) =>
      now.checks.flatMap((c): Sample[] => [
        [{ ...checkLabels(c), result: "pass" }, c.runs - c.failedRuns],
        [{ ...checkLabels(c), result: "fail" }, c.failedRuns],
      ]),
  ),
];

const fleet = (value: (f: FleetView) => Sample[]) => (now: CountersSnapshot) =>
  now.fleet === undefined ? [] : value(now.fleet);

/** Only with a fleet: a metric without labels shows 0 even with no sample. */
const FLEET: readonly Family<CountersSnapshot>[] = [
  family(
    "gauge",
    "hapgent_fleet_connected",
    "1 while every fleet key is watched on a live etcd endpoint, 0 while etcd cannot be reached (the last word stands).",
    [],
    fleet((f) => [[{}, f.connected ? 1 : 0]]),
  ),
  family(
    "gauge",
    "hapgent_fleet_heard_seconds",
    "When etcd last confirmed the fleet's word (a change, a read, the health read), Unix time; from the cache file after a start without etcd.",
    [],
    fleet((f) => [[{}, f.heardAt === null ? undefined : Date.parse(f.heardAt) / 1000]]),
  ),
  family(
    "gauge",
    "hapgent_fleet_following",
    "1 for the fleet key whose word the agent follows, with its etcd revision as a label; no series while no key holds a word.",
    ["key", "revision"],
    fleet((f) =>
      f.word === null ? [] : [[{ key: f.word.key, revision: String(f.word.revision) }, 1]],
    ),
  ),
  family(
    "gauge",
    "hapgent_fleet_value_valid",
    "0 while the first fleet key that exists holds a value that is not a valid state (the word before stands), else 1.",
    [],
    fleet((f) => [[{}, f.problem === null ? 1 : 0]]),
  ),
];

function checkLabels(check: CheckView): Labels {
  return { check: check.name, ...serviceLabel(check.service ?? "") };
}

/** The instance ("") has no service label, as in every hapgent metric. */
export function serviceLabel(service: string): Labels {
  return service === "" ? {} : { service };
}
