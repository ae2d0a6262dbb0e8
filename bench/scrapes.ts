/**
 * `npm run bench -- --scrapes`: what a flood of metrics scrapes costs the probes of an agent with
 * a large state. Each hapgent (this build with metrics on, and every --compare build, such as an
 * older one) answers a state file of 1,000 services, its probe ledger kept full (1,024 pairs of
 * address and service, polled again every few seconds as load balancers would), and is measured
 * in turn, round after round: open-loop latency without scrapes, then the same while scrapers
 * fetch /metrics back to back. The figures are set side by side in one table.
 */
import { writeFile } from "node:fs/promises";
import { Agent, get } from "node:http";
import { probeOnce } from "./load.js";
import type { Params } from "./options.js";
import { cpuSeconds, loadgen, type Running, sleep, start } from "./processes.js";
import { type LoadResult, median } from "./report.js";
import type { TargetSpec } from "./targets.js";

/** As many as the agent lets one address hold (METRICS_LIMITS.maxConnectionsPerAddress). */
export const SCRAPERS = 4;
export const SERVICES = 1000;
/** The ledger's bound (MAX_PAIRS in ledger.ts): 1,000 services from one address, 24 more. */
const LEDGER_PAIRS = 1024;
/** How often each pair polls again, so the ledger never forgets one during the run. */
const POLL_CYCLE_MS = 4000;
const POLLERS_IN_FLIGHT = 4;

const serviceName = (i: number) => `be_${i}/srv1`;
const STATE_FILE = `${JSON.stringify({
  status: "UP",
  services: Object.fromEntries(
    Array.from({ length: SERVICES }, (_, i) => [serviceName(i), { status: "UP", weight: 99 }]),
  ),
})}\n`;
/** What each service answers: not what the instance of the file the agent starts with does. */
const LINE = "up ready 99%\n";
/** The measured probes name a service, as HAProxy's do once a file names them. */
const PAYLOAD = `${serviceName(0)}\n`;

export interface ScrapeFigures {
  quiet: LoadResult[];
  flooded: LoadResult[];
  scrapesPerSecond: number[];
  /** The agent's CPU time per scrape during the flood, less its CPU time per probe without. */
  cpuMsPerScrape: number[];
  scrapeBytes: number;
  series: number;
  errors: number;
}

export interface ScrapeBench {
  readonly specs: readonly TargetSpec[];
  readonly params: Params;
  readonly loadgen: string;
  readonly dir: string;
  readonly say: (text: string) => void;
}

/** Runs the measurement; the figures by target name. */
export async function measureScrapes(bench: ScrapeBench): Promise<Map<string, ScrapeFigures>> {
  const { params, say } = bench;
  const results = new Map<string, ScrapeFigures>();
  const running: Running[] = [];
  const stops: (() => Promise<void>)[] = [];
  try {
    for (const spec of bench.specs) {
      const r = await start({ ...spec, metrics: true }, bench.dir);
      running.push(r);
      say(`${spec.name}: ${SERVICES} services, filling the probe ledger`);
      await loadState(r);
      stops.push(keepPolling(r));
      const first = await ledgerFull(r);
      results.set(spec.name, {
        quiet: [],
        flooded: [],
        scrapesPerSecond: [],
        cpuMsPerScrape: [],
        scrapeBytes: first.bytes,
        series: first.series,
        errors: 0,
      });
    }
    for (let round = 1; round <= params.rounds; round++) {
      // Each round begins with another target: none is always measured just after a flood.
      const order = running.map((_, i) => running[(i + round) % running.length] as Running);
      for (const r of order) {
        const f = results.get(r.spec.name) as ScrapeFigures;
        say(`round ${round}/${params.rounds}: ${r.spec.name}, latency at ${params.rate}/s`);
        const cpuBefore = cpuSeconds(r.pid);
        const quiet = await latency(bench, r);
        const cpuQuiet = cpuSeconds(r.pid) - cpuBefore;
        say(`round ${round}/${params.rounds}: ${r.spec.name}, the same with ${SCRAPERS} scrapers`);
        const flood = scrape(r.metricsPort ?? 0);
        const flooded = await latency(bench, r);
        const scrapes = await flood.stop();
        const cpuFlooded = cpuSeconds(r.pid) - cpuBefore - cpuQuiet;
        f.quiet.push(quiet);
        f.flooded.push(flooded);
        f.scrapesPerSecond.push(scrapes.count / scrapes.seconds);
        // The probes cost the same in both halves: what is left is the scrapes'.
        f.cpuMsPerScrape.push(((cpuFlooded - cpuQuiet) * 1000) / Math.max(1, scrapes.count));
        f.errors += quiet.errors + flooded.errors + scrapes.errors;
      }
    }
  } finally {
    await Promise.all(stops.map((stop) => stop()));
    await Promise.all(running.map((r) => r.stop()));
  }
  return results;
}

function latency(bench: ScrapeBench, r: Running): Promise<LoadResult> {
  const { rate, seconds } = bench.params;
  const args = ["open", "127.0.0.1", String(r.port), LINE, PAYLOAD, String(rate), String(seconds)];
  return loadgen(bench.loadgen, args, bench.say);
}

async function loadState(r: Running): Promise<void> {
  await writeFile(r.stateFile, STATE_FILE);
  r.child.kill("SIGHUP");
  const last = { host: "127.0.0.1", port: r.port, payload: `${serviceName(SERVICES - 1)}\n` };
  for (
    let i = 0;
    !(await probeOnce({ ...last, expect: LINE }).then(
      () => true,
      () => false,
    ));
    i++
  ) {
    if (i > 500)
      throw new Error(`${r.spec.name} did not read the state file of ${SERVICES} services`);
    await sleep(10);
  }
}

/** Every pair of the ledger polls again each POLL_CYCLE_MS, until the function returned is called. */
function keepPolling(r: Running): () => Promise<void> {
  const pairs = Array.from({ length: LEDGER_PAIRS }, (_, i) => ({
    localAddress: i < SERVICES ? "127.0.0.1" : "127.0.0.2",
    payload: `${serviceName(i % SERVICES)}\n`,
  }));
  let stopped = false;
  const loop = (async () => {
    // Twice in a row at first: a pair probed once waits on probation (at most 256 of them),
    // and a thousand at once would push each other out before their second probe.
    for (let cycle = 0; !stopped; cycle++) {
      const began = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: POLLERS_IN_FLIGHT }, async () => {
          while (!stopped && next < pairs.length) {
            const pair = { host: "127.0.0.1", port: r.port, expect: LINE, ...pairs[next++] };
            for (let i = cycle === 0 ? 2 : 1; i > 0; i--) await probeOnce(pair).catch(() => {});
          }
        }),
      );
      await sleep(Math.max(0, POLL_CYCLE_MS - (performance.now() - began)));
    }
  })();
  return async () => {
    stopped = true;
    await loop;
  };
}

/** Waits until a scrape shows every pair of the ledger; that scrape's size and series. */
async function ledgerFull(r: Running): Promise<{ bytes: number; series: number }> {
  const began = performance.now();
  // A connection per request: none is left open to count against the scrapers' own.
  const once = new Agent({ keepAlive: false });
  for (;;) {
    const text = String(await getMetrics(r.metricsPort ?? 0, once, true));
    const pollers = text.match(/^hapgent_load_balancer_last_probe_seconds\{/gm)?.length ?? 0;
    if (pollers >= LEDGER_PAIRS) {
      const series = text.split("\n").filter((l) => l !== "" && !l.startsWith("#")).length;
      return { bytes: Buffer.byteLength(text), series };
    }
    if (performance.now() - began > 60_000) {
      throw new Error(`${r.spec.name}: the ledger holds ${pollers} pairs, not ${LEDGER_PAIRS}`);
    }
    await sleep(500);
  }
}

/**
 * SCRAPERS clients fetching /metrics back to back, each on its kept-alive connection (never more
 * connections than the agent lets one address hold). The bodies are counted, not kept.
 */
function scrape(port: number) {
  const agent = new Agent({ keepAlive: true, maxSockets: SCRAPERS });
  let stopped = false;
  let count = 0;
  let errors = 0;
  const began = performance.now();
  const loops = Array.from({ length: SCRAPERS }, async () => {
    while (!stopped) {
      const ok = await getMetrics(port, agent).then(
        () => true,
        () => false,
      );
      if (ok) count++;
      else errors++;
    }
  });
  return {
    async stop() {
      stopped = true;
      const seconds = (performance.now() - began) / 1000;
      await Promise.all(loops);
      agent.destroy();
      return { count, errors, seconds };
    },
  };
}

/** One GET /metrics; resolves with the body's text when `keep`, else with its size. */
function getMetrics(port: number, agent: Agent, keep = false): Promise<string | number> {
  return new Promise((resolve, reject) => {
    const request = get({ host: "127.0.0.1", port, path: "/metrics", agent }, (response) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      response.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        if (keep) chunks.push(chunk);
      });
      response.on("end", () =>
        response.statusCode === 200
          ? resolve(keep ? Buffer.concat(chunks).toString() : bytes)
          : reject(new Error(`status ${response.statusCode}`)),
      );
      response.on("error", reject);
    });
    request.on("error", reject);
  });
}

const ms = (v: number) => (Number.isFinite(v) ? `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms` : "-");

function latencies(results: readonly LoadResult[]): string {
  const of = (key: "p50" | "p99" | "p999") => ms(median(results.map((r) => r[key] ?? Number.NaN)));
  return `${of("p50")} / ${of("p99")} / ${of("p999")}`;
}

/** The table, in Markdown: one row per figure, one column per target. */
export function scrapeTable(results: ReadonlyMap<string, ScrapeFigures>, rate: number): string {
  const columns = [...results.keys()];
  const rows: [string, (f: ScrapeFigures) => string][] = [
    ["scrape: size, series", (f) => `${(f.scrapeBytes / 1024).toFixed(0)} KiB, ${f.series}`],
    [`latency at ${rate}/s: p50 / p99 / p99.9`, (f) => latencies(f.quiet)],
    [`  while ${SCRAPERS} scrapers fetch /metrics`, (f) => latencies(f.flooded)],
    ["scrapes answered", (f) => `${Math.round(median(f.scrapesPerSecond))}/s`],
    ["agent CPU per scrape", (f) => ms(median(f.cpuMsPerScrape))],
    ["probes or scrapes failed", (f) => String(f.errors)],
  ];
  const cells = [
    ["", ...columns],
    ...rows.map(([label, cell]) => [
      label,
      ...columns.map((name) => cell(results.get(name) as ScrapeFigures)),
    ]),
  ];
  const widths = (cells[0] ?? []).map((_, i) =>
    Math.max(...cells.map((row) => (row[i] ?? "").length)),
  );
  const line = (row: string[]) =>
    `| ${row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [
    line(cells[0] ?? []),
    line(widths.map((w) => "-".repeat(w))),
    ...cells.slice(1).map(line),
  ].join("\n");
}
