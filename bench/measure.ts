/**
 * The measurements, in the order they run: start-ups, idle memory, rounds of throughput and
 * latency that take the targets in turn (a machine that slows down for a while slows all of them
 * alike), the long run, signal to reply, and the peak.
 */
import { writeFile } from "node:fs/promises";
import { probeOnce } from "./load.js";
import type { Params } from "./options.js";
import {
  cpuSeconds,
  LINE,
  loadgen,
  PLAIN_FILE,
  type Running,
  sleep,
  start,
  startOnce,
  status,
} from "./processes.js";
import { emptyFigures, type Figures, type Kind } from "./report.js";
import type { TargetSpec } from "./targets.js";

const DOWN_LINE = "down ready 100%\n";
const PAYLOAD = "be_web/srv1\n";
/**
 * The state file of the "service" measurements: the service answers LINE, the instance another
 * line, so a probe answered for the wrong one counts as failed.
 */
const SERVICES_FILE = '{"status":"UP","weight":50,"services":{"be_web/srv1":{"status":"UP"}}}\n';
const KINDS: readonly [Kind, string][] = [
  ["plain", ""],
  ["payload", PAYLOAD],
  ["service", PAYLOAD],
];

export interface Bench {
  readonly specs: readonly TargetSpec[];
  readonly params: Params;
  readonly loadgen: string;
  /** A directory for the targets' state files. */
  readonly dir: string;
  readonly say: (text: string) => void;
}

/** Runs every measurement; the figures by target name. */
export async function measure(bench: Bench): Promise<Map<string, Figures>> {
  const { specs, params, say } = bench;
  const results = new Map(specs.map((spec) => [spec.name, emptyFigures()]));
  const figures = (spec: TargetSpec) => results.get(spec.name) as Figures;

  say(`start-up, ${params.starts} times each (after one not counted)`);
  for (let i = 0; i <= params.starts; i++) {
    for (const spec of specs) {
      const took = await startOnce(spec, bench.dir);
      if (i > 0) figures(spec).startupMs.push(took);
    }
  }
  const running: Running[] = [];
  try {
    for (const spec of specs) running.push(await start(spec, bench.dir));
    await sleep(1000);
    for (const r of running) {
      figures(r.spec).idle = { rssMiB: status(r.pid, "VmRSS"), anonMiB: status(r.pid, "RssAnon") };
    }
    for (let round = 1; round <= params.rounds; round++) {
      await throughputRound(bench, running, figures, round);
      await latencyRound(bench, running, figures, round);
    }
    await useServices(running, false);
    for (const r of running) await longRun(bench, r, figures(r.spec));
    for (const r of running) {
      if (!r.spec.agent) continue;
      say(`${r.spec.name}: signal to reply`);
      figures(r.spec).signalMs = await signalToReply(r, params.signals);
    }
    for (const r of running) {
      // VmHWM is the peak of the whole run; the anonymous part is what the process cannot share.
      figures(r.spec).peak = {
        rssMiB: status(r.pid, "VmHWM"),
        anonMiB: status(r.pid, "RssAnon"),
        fileMiB: status(r.pid, "RssFile"),
      };
    }
  } finally {
    await Promise.all(running.map((r) => r.stop()));
  }
  return results;
}

const closed = (
  bench: Bench,
  port: number,
  payload: string,
  count: number,
  seconds: number,
  mark = 0,
) => [
  "closed",
  "127.0.0.1",
  String(port),
  LINE,
  payload,
  String(bench.params.concurrency),
  String(count),
  String(seconds),
  String(mark),
];

async function throughputRound(
  bench: Bench,
  running: readonly Running[],
  figures: (spec: TargetSpec) => Figures,
  round: number,
): Promise<void> {
  const { params, say } = bench;
  for (const [kind, payload] of KINDS) {
    say(
      `round ${round}/${params.rounds}: throughput at concurrency ${params.concurrency}, ${kind}`,
    );
    await useServices(running, kind === "service");
    for (const r of running) {
      const cpuBefore = cpuSeconds(r.pid);
      const result = await loadgen(
        bench.loadgen,
        closed(bench, r.port, payload, 0, params.seconds),
        say,
      );
      const f = figures(r.spec).throughput[kind];
      f.perSecond.push(result.perSecond);
      f.targetCpu.push((cpuSeconds(r.pid) - cpuBefore) / result.seconds);
      f.generatorCpu.push(result.cpuSeconds / result.seconds);
      figures(r.spec).errors += result.errors;
    }
  }
}

async function latencyRound(
  bench: Bench,
  running: readonly Running[],
  figures: (spec: TargetSpec) => Figures,
  round: number,
): Promise<void> {
  const { params, say } = bench;
  for (const [kind, payload] of KINDS) {
    say(`round ${round}/${params.rounds}: latency at ${params.rate}/s, ${kind}`);
    await useServices(running, kind === "service");
    for (const r of running) {
      const args = [
        "open",
        "127.0.0.1",
        String(r.port),
        LINE,
        payload,
        String(params.rate),
        String(params.seconds),
      ];
      const result = await loadgen(bench.loadgen, args, say);
      figures(r.spec).latency[kind].push(result);
      figures(r.spec).errors += result.errors;
    }
  }
}

/** The long run: RSS half way through and at the end. */
async function longRun(bench: Bench, r: Running, f: Figures): Promise<void> {
  const { params, say } = bench;
  say(`${r.spec.name}: ${params.probes.toLocaleString("en-US")} probes`);
  let rssHalfMiB = Number.NaN;
  const args = closed(bench, r.port, "", params.probes, 0, Math.floor(params.probes / 2));
  const result = await loadgen(bench.loadgen, args, say, () => {
    rssHalfMiB = status(r.pid, "VmRSS");
  });
  f.long = {
    probes: result.probes,
    perSecond: result.perSecond,
    rssHalfMiB,
    rssEndMiB: status(r.pid, "VmRSS"),
  };
  f.errors += result.errors;
}

/** From kill() to the first reply that shows the new state, alternating USR2 and USR1. */
async function signalToReply(running: Running, signals: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < signals; i++) {
    const [signal, line] =
      i % 2 === 0 ? (["SIGUSR2", DOWN_LINE] as const) : (["SIGUSR1", LINE] as const);
    await sleep(50);
    const sent = performance.now();
    running.child.kill(signal);
    let seenAt = 0;
    // Four probers back to back: one of them is always close to its next reply.
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (seenAt === 0 && performance.now() - sent < 5000) {
          const ok = await probeOnce({ host: "127.0.0.1", port: running.port, expect: line }).then(
            () => true,
            () => false,
          );
          if (ok && seenAt === 0) seenAt = performance.now();
        }
      }),
    );
    if (seenAt === 0) throw new Error(`${signal} never showed in the reply`);
    times.push(seenAt - sent);
  }
  return times;
}

/**
 * Gives every agent the state file with services, or the plain one, and waits until each answers
 * from it: a service's name gets the service, an empty line the instance.
 */
async function useServices(targets: readonly Running[], on: boolean): Promise<void> {
  for (const r of targets) {
    if (!r.spec.agent) continue;
    await writeFile(r.stateFile, on ? SERVICES_FILE : PLAIN_FILE);
    r.child.kill("SIGHUP");
    const instance = on ? "up ready 50%\n" : LINE;
    const began = performance.now();
    for (;;) {
      const answered = await Promise.all([
        probeOnce({ host: "127.0.0.1", port: r.port, payload: PAYLOAD, expect: LINE }),
        probeOnce({ host: "127.0.0.1", port: r.port, payload: "\n", expect: instance }),
      ]).then(
        () => true,
        () => false,
      );
      if (answered) break;
      if (performance.now() - began > 5000) throw new Error(`${r.spec.name} did not reload`);
      await sleep(10);
    }
  }
}
