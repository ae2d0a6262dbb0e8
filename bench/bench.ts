/**
 * `npm run bench`: hapgent against a bare Node `net` server (the floor for any Node agent) and a
 * C epoll responder (the floor for any agent at all), driven by the same load generator in the
 * same run and shown side by side.
 *
 * For each target: start-up to the first answered probe; RSS idle; closed-loop throughput at
 * concurrency 32 and open-loop latency at 2,000 probes/s, without and with an agent-send
 * payload, and with the payload naming a service of a state file that has services; RSS half way
 * through and at the end of a long run (1,000,000 probes) and at its peak; for hapgent, the time
 * from USR2/USR1 to the first reply that shows it (measure.ts). Prints a table, checks the
 * targets, writes the figures as JSON (report.ts).
 *
 * The load generator is bench/loadgen.c (epoll, one thread), compiled here with `cc`: a Node
 * generator saturates its own core before a Node server saturates its.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, release, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { nodeFlags } from "../scripts/node-flags.js";
import { measure } from "./measure.js";
import { type Options, parseOptions } from "./options.js";
import { buildC, notExecutable, stopChildrenOnSignal, useChecks, useFleet } from "./processes.js";
import { checks, limits, TARGETS, table } from "./report.js";
import { measureScrapes, scrapeTable } from "./scrapes.js";
import {
  node24Path,
  olderThanSources,
  repeatedName,
  type TargetSpec,
  targetSpecs,
} from "./targets.js";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const MAIN = join(REPO, "dist/src/main.js");

function say(text: string): void {
  process.stderr.write(`${text}\n`);
}

/** The steps in order: options, the generator, the targets, the measurements, the report. */
async function main(): Promise<number> {
  const parsed = parseOptions(process.argv.slice(2));
  if (parsed.kind === "help") {
    process.stdout.write(parsed.text);
    return 0;
  }
  if (parsed.kind === "error") {
    say(`bench: ${parsed.message} (see npm run bench -- --help)`);
    return 2;
  }
  const { options } = parsed;
  const loadgen = join(REPO, "dist/bench/loadgen");
  const floor = join(REPO, "dist/bench/floor");
  for (const [program, what] of [
    [loadgen, "the load generator"],
    [floor, "the C floor"],
  ] as const) {
    const failed = await buildC(join(REPO, `bench/${basename(program)}.c`), program);
    if (failed !== undefined) {
      say(`bench: cannot build ${what} with cc: ${failed}`);
      return 2;
    }
  }
  for (const { name, path } of options.compare) {
    const why = notExecutable(path);
    if (why !== undefined) {
      say(`bench: --compare ${name}=${path}: ${why}; expected an executable build of hapgent`);
      return 2;
    }
  }
  const unusable = options.binary === undefined ? undefined : notExecutable(options.binary);
  if (unusable !== undefined) {
    say(`bench: --binary ${options.binary}: ${unusable}; build it with npm run build:binary`);
    return 2;
  }
  const built = join(REPO, "build/hapgent");
  const stale = existsSync(built) && olderThanSources(built, join(REPO, "src"));
  if (options.binary === undefined && stale) {
    say(
      "bench: build/hapgent is older than src/, so it is not measured; npm run build:binary rebuilds it",
    );
  }
  const binary = options.binary ?? (existsSync(built) && !stale ? built : undefined);
  const node24 = node24Path(options.node24, process.env);
  const flags = nodeFlags(MAIN);
  const programs = {
    floor,
    node: process.execPath,
    nodeFlags: flags,
    main: MAIN,
    baseline: join(REPO, "dist/bench/baseline.js"),
    binary,
    node24: binary !== undefined && existsSync(node24) ? node24 : undefined,
    compare: options.compare,
  };

  const twice = repeatedName(targetSpecs({ ...programs, etcd: true }));
  if (twice !== undefined) {
    say(`bench: two columns would be named ${JSON.stringify(twice)}; give --compare another name`);
    return 2;
  }

  stopChildrenOnSignal(say);
  const dir = await mkdtemp(join(tmpdir(), "hapgent-bench-"));
  if (options.scrapes) return scrapeRun(options, specsOf(programs), loadgen, dir);
  // The checks' own target lives in this process, which mostly waits for the load generator.
  const stopChecks = await useChecks(dir);
  // The fleet's target watches a local etcd, when one is installed.
  const stopFleet = await useFleet(dir);
  if (stopFleet === undefined)
    say("bench: etcd is not installed: the fleet's target is not measured");
  const specs = targetSpecs({ ...programs, etcd: stopFleet !== undefined });
  const results = await measure({ specs, params: options.params, loadgen, dir, say }).finally(
    async () => {
      await stopChecks();
      await stopFleet?.();
      await rm(dir, { recursive: true, force: true });
    },
  );

  const machine = `${cpus().length} × ${cpus()[0]?.model.trim() ?? "unknown CPU"}, Linux ${release()}, Node ${process.version}`;
  const judged = checks(specs, results, options.params);
  process.stdout.write(`\n${machine}\n\n${table(specs, results, options.params)}\n\n`);
  for (const check of judged) {
    process.stdout.write(
      `${check.ok ? "met   " : "MISSED"} ${check.target}: ${check.name} ${check.value}\n`,
    );
  }
  process.stdout.write(`\n${limits(specs, results)}\n`);
  const json = {
    date: new Date().toISOString(),
    machine,
    command: [
      "npm",
      "run",
      "bench",
      ...(process.argv.length > 2 ? ["--", ...process.argv.slice(2)] : []),
    ].join(" "),
    nodeFlags: flags,
    params: options.params,
    targets: TARGETS,
    results: Object.fromEntries(results),
    checks: judged,
  };
  await writeFile(options.json, `${JSON.stringify(json, null, 2)}\n`);
  process.stdout.write(`figures written to ${options.json}\n`);
  return 0;
}

/** The targets of a scrape run: this build with metrics on, and every --compare build. */
function specsOf(programs: Omit<Parameters<typeof targetSpecs>[0], "etcd">) {
  const compared = new Set(programs.compare.map((c) => c.name));
  return targetSpecs({ ...programs, etcd: false }).filter(
    (spec) => spec.name === "hapgent, metrics on" || compared.has(spec.name),
  );
}

/** `--scrapes`: only the scrape flood, its table and its figures. */
async function scrapeRun(
  options: Options,
  specs: readonly TargetSpec[],
  loadgen: string,
  dir: string,
): Promise<number> {
  const results = await measureScrapes({
    specs,
    params: options.params,
    loadgen,
    dir,
    say,
  }).finally(() => rm(dir, { recursive: true, force: true }));
  const machine = `${cpus().length} × ${cpus()[0]?.model.trim() ?? "unknown CPU"}, Linux ${release()}, Node ${process.version}`;
  process.stdout.write(`\n${machine}\n\n${scrapeTable(results, options.params.rate)}\n\n`);
  const json = {
    date: new Date().toISOString(),
    machine,
    command: ["npm", "run", "bench", "--", ...process.argv.slice(2)].join(" "),
    params: options.params,
    scrapes: Object.fromEntries(results),
  };
  await writeFile(options.json, `${JSON.stringify(json, null, 2)}\n`);
  process.stdout.write(`figures written to ${options.json}\n`);
  return 0;
}

process.exitCode = await main();
