/**
 * The benchmark's report: figures in, text out. Pure, so it can be checked with made-up figures.
 */

/** What hapgent aims for on a small machine (2 cores). */
export const TARGETS = Object.freeze({
  throughputVsBaseline: 0.9,
  p99Ms: 1,
  peakRssMiB: 64,
  startupMs: 150,
  signalMs: 10,
});

export type Kind = "plain" | "payload" | "service";
export const KIND_NAMES: readonly Kind[] = ["plain", "payload", "service"];

/** One run of the load generator, as it prints it. */
export interface LoadResult {
  probes: number;
  errors: number;
  seconds: number;
  perSecond: number;
  cpuSeconds: number;
  p50?: number;
  p99?: number;
  p999?: number;
  max?: number;
  firstError: string;
}

/** What is measured of one target. */
export interface Figures {
  startupMs: number[];
  idle: { rssMiB: number; anonMiB: number };
  throughput: Record<Kind, { perSecond: number[]; targetCpu: number[]; generatorCpu: number[] }>;
  latency: Record<Kind, LoadResult[]>;
  long?: { probes: number; perSecond: number; rssHalfMiB: number; rssEndMiB: number };
  peak?: { rssMiB: number; anonMiB: number; fileMiB: number };
  signalMs?: number[];
  errors: number;
}

/** A target as the report needs it. */
export interface Column {
  readonly name: string;
  /** Judged against TARGETS. */
  readonly judged: boolean;
  /** The column its throughput is compared with. */
  readonly baseline: string;
}

/** The column set beside every other in the row "× the floor", when the run has it. */
export const FLOOR_COLUMN = "floor: C, epoll";

export interface ReportParams {
  readonly concurrency: number;
  readonly rate: number;
  readonly probes: number;
}

export interface Check {
  readonly target: string;
  readonly name: string;
  readonly value: string;
  readonly ok: boolean;
}

export function emptyFigures(): Figures {
  const throughput = () => ({ perSecond: [], targetCpu: [], generatorCpu: [] });
  return {
    startupMs: [],
    idle: { rssMiB: 0, anonMiB: 0 },
    throughput: { plain: throughput(), payload: throughput(), service: throughput() },
    latency: { plain: [], payload: [], service: [] },
    errors: 0,
  };
}

export const median = (values: readonly number[]): number =>
  [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? Number.NaN;

const ms = (v: number | undefined) =>
  v === undefined || !Number.isFinite(v) ? "-" : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms`;
const mib = (v: number | undefined) =>
  v === undefined || !Number.isFinite(v) ? "-" : `${v.toFixed(1)} MiB`;
export const perSecond = (v: number) => `${Math.round(v).toLocaleString("en-US")}/s`;
const pct = (v: number) => `${Math.round(v * 100)}%`;

/** Reads the figures of every column; all functions below take one. */
export type Results = ReadonlyMap<string, Figures>;

function figuresOf(results: Results, name: string): Figures {
  const f = results.get(name);
  if (f === undefined) throw new Error(`no figures for ${name}`);
  return f;
}

/** Throughput as the median of per-round ratios to its baseline measured in the same round. */
export function ratio(results: Results, column: Column, kind: Kind): number {
  const own = figuresOf(results, column.name).throughput[kind].perSecond;
  const base = figuresOf(results, column.baseline).throughput[kind].perSecond;
  return median(own.map((value, i) => value / (base[i] ?? Number.NaN)));
}

function percentile(f: Figures, kind: Kind, key: "p50" | "p99" | "p999"): number {
  return median(f.latency[kind].map((result) => result[key] ?? Number.NaN));
}

function latencies(f: Figures, kind: Kind): string {
  return `${ms(percentile(f, kind, "p50"))} / ${ms(percentile(f, kind, "p99"))} / ${ms(percentile(f, kind, "p999"))}`;
}

/** The table, in Markdown: one row per figure, one column per target. */
export function table(columns: readonly Column[], results: Results, params: ReportParams): string {
  const through = (kind: Kind) => (f: Figures, c: Column) =>
    `${perSecond(median(f.throughput[kind].perSecond))} (${ratio(results, c, kind).toFixed(2)}×)`;
  const rows: [string, (f: Figures, c: Column) => string][] = [
    [
      "start-up to first probe, median (max)",
      (f) => `${ms(median(f.startupMs))} (${ms(Math.max(...f.startupMs))})`,
    ],
    ["RSS idle (anonymous)", (f) => `${mib(f.idle.rssMiB)} (${mib(f.idle.anonMiB)})`],
    [`throughput, ${params.concurrency} in flight (× its baseline)`, through("plain")],
    ["  with agent-send payload", through("payload")],
    ["  with payload naming a service", through("service")],
    ...(results.has(FLOOR_COLUMN)
      ? [
          [
            "  × the C floor (plain / with payload)",
            (_f: Figures, c: Column) =>
              (["plain", "payload"] as const)
                .map(
                  (kind) => `${ratio(results, { ...c, baseline: FLOOR_COLUMN }, kind).toFixed(2)}×`,
                )
                .join(" / "),
          ] as [string, (f: Figures, c: Column) => string],
        ]
      : []),
    [
      "  CPU: target / load generator",
      (f) =>
        `${pct(median(f.throughput.plain.targetCpu))} / ${pct(median(f.throughput.plain.generatorCpu))}`,
    ],
    [`latency at ${params.rate}/s: p50 / p99 / p99.9`, (f) => latencies(f, "plain")],
    ["  with agent-send payload", (f) => latencies(f, "payload")],
    ["  with payload naming a service", (f) => latencies(f, "service")],
    [
      `RSS after ${(params.probes / 2).toLocaleString("en-US")} / ${params.probes.toLocaleString("en-US")} probes`,
      (f) => `${mib(f.long?.rssHalfMiB)} / ${mib(f.long?.rssEndMiB)}`,
    ],
    ["RSS peak (anonymous at the end)", (f) => `${mib(f.peak?.rssMiB)} (${mib(f.peak?.anonMiB)})`],
    [
      "signal to reply, median (max)",
      (f) => (f.signalMs ? `${ms(median(f.signalMs))} (${ms(Math.max(...f.signalMs))})` : "-"),
    ],
    ["probes failed", (f) => String(f.errors)],
  ];
  const header = ["", ...columns.map((c) => c.name)];
  const cells = [
    header,
    ...rows.map(([label, cell]) => [
      label,
      ...columns.map((c) => cell(figuresOf(results, c.name), c)),
    ]),
  ];
  const widths = header.map((_, i) => Math.max(...cells.map((row) => (row[i] ?? "").length)));
  const line = (row: string[]) =>
    `| ${row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...cells.slice(1).map(line)].join(
    "\n",
  );
}

/** Each judged column against TARGETS. */
export function checks(
  columns: readonly Column[],
  results: Results,
  params: ReportParams,
): Check[] {
  const out: Check[] = [];
  for (const column of columns.filter((c) => c.judged)) {
    const f = figuresOf(results, column.name);
    const p99 = Math.max(...KIND_NAMES.map((kind) => percentile(f, kind, "p99")));
    const growth = (f.long?.rssEndMiB ?? Number.NaN) - (f.long?.rssHalfMiB ?? Number.NaN);
    const ratios = KIND_NAMES.map((kind) => ratio(results, column, kind));
    const slowestSignal = Math.max(...(f.signalMs ?? [Number.POSITIVE_INFINITY]));
    const check = (target: string, value: string, ok: boolean) =>
      out.push({ target, name: column.name, value, ok });
    check(
      `throughput ≥ ${TARGETS.throughputVsBaseline}× the bare server on the same Node and V8 flags`,
      `${ratios[0]?.toFixed(2)}×, with payload ${ratios[1]?.toFixed(2)}×, naming a service ${ratios[2]?.toFixed(2)}×`,
      Math.min(...ratios) >= TARGETS.throughputVsBaseline,
    );
    check(`p99 ≤ ${TARGETS.p99Ms} ms at ${params.rate}/s`, ms(p99), p99 <= TARGETS.p99Ms);
    check(
      `RSS peak ≤ ${TARGETS.peakRssMiB} MiB`,
      mib(f.peak?.rssMiB),
      (f.peak?.rssMiB ?? Number.POSITIVE_INFINITY) <= TARGETS.peakRssMiB,
    );
    check(
      "no RSS growth from half way to the end of the long run",
      `${growth >= 0 ? "+" : ""}${growth.toFixed(1)} MiB`,
      growth <= 1,
    );
    check(
      `start-up ≤ ${TARGETS.startupMs} ms`,
      ms(median(f.startupMs)),
      median(f.startupMs) <= TARGETS.startupMs,
    );
    check(
      `signal to reply ≤ ${TARGETS.signalMs} ms`,
      ms(slowestSignal),
      slowestSignal <= TARGETS.signalMs,
    );
  }
  return out;
}

/** Whether the load generator or the server was the limit, per judged column. */
export function limits(columns: readonly Column[], results: Results): string {
  // The generator is not the limit for a target it drove more slowly than it drove another.
  const fastest = columns
    .map((column) => ({
      column,
      rate: median(figuresOf(results, column.name).throughput.plain.perSecond),
    }))
    .sort((a, b) => b.rate - a.rate)[0];
  if (fastest === undefined) return "";
  const cpu = (name: string, key: "targetCpu" | "generatorCpu") =>
    pct(median(figuresOf(results, name).throughput.plain[key]));
  const lines = [
    `load generator: reached ${perSecond(fastest.rate)} (${fastest.column.name}, server CPU ${cpu(fastest.column.name, "targetCpu")}, generator CPU ${cpu(fastest.column.name, "generatorCpu")}).`,
  ];
  for (const column of columns.filter((c) => c.judged)) {
    const rate = median(figuresOf(results, column.name).throughput.plain.perSecond);
    lines.push(
      column === fastest.column
        ? `  ${column.name} is that target: at ${cpu(column.name, "targetCpu")} CPU for the server, the machine's cores are the ceiling.`
        : `  ${column.name}: ${perSecond(rate)} at ${cpu(column.name, "targetCpu")} CPU, below what the generator reached: the server is the limit.`,
    );
  }
  return lines.join("\n");
}
