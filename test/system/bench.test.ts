/**
 * A short run of the benchmark (`npm run bench -- --smoke`): the real generator against the real
 * daemon and baseline, a few seconds in all. It proves the benchmark works and that nothing it
 * measures fails; the figures themselves are judged by a full run, not here.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { execOk, missing, REPO, tempDir } from "../helpers.js";

const SKIP = missing("the benchmark's smoke run", { commands: ["cc", "dd"] });

interface Figures {
  startupMs: number[];
  idle: { rssMiB: number };
  throughput: Record<string, { perSecond: number[] }>;
  latency: Record<string, { probes: number; p99: number }[]>;
  long: { probes: number };
  peak: { rssMiB: number };
  signalMs?: number[];
  errors: number;
}

test("npm run bench -- --smoke measures every target without a failed probe", {
  skip: SKIP,
}, async (t) => {
  const dir = await tempDir(t);
  const json = join(dir, "bench.json");
  const { stdout } = await execOk(
    process.execPath,
    [join(REPO, "dist/bench/bench.js"), "--smoke", "--json", json],
    { cwd: REPO, timeoutMs: 120_000 },
  );
  const report = JSON.parse(await readFile(json, "utf8")) as {
    results: Record<string, Figures>;
    checks: { target: string; ok: boolean }[];
  };
  for (const name of [
    "floor: C, epoll",
    "baseline, V8 defaults",
    "hapgent, V8 defaults",
    "baseline",
    "hapgent",
    "hapgent, metrics on",
    "hapgent, ten checks",
    // Measured where etcd is installed, as in CI.
    ...(spawnSync("etcd", ["--version"], { stdio: "ignore" }).status === 0
      ? ["hapgent, fleet from etcd"]
      : []),
  ]) {
    const f = report.results[name];
    assert.ok(f, `${name} measured`);
    assert.equal(f.errors, 0, `${name}: no probe failed`);
    assert.ok(f.startupMs.every((ms) => ms > 0));
    assert.ok(f.idle.rssMiB > 0 && f.peak.rssMiB >= f.idle.rssMiB);
    for (const kind of ["plain", "payload"]) {
      assert.ok((f.throughput[kind]?.perSecond[0] ?? 0) > 100, `${name} ${kind} throughput`);
      assert.ok((f.latency[kind]?.[0]?.probes ?? 0) > 0, `${name} ${kind} latency`);
    }
    assert.equal(f.long.probes, 4000);
    if (name.startsWith("hapgent"))
      assert.ok((f.signalMs?.length ?? 0) > 0, `${name} signal to reply`);
  }
  assert.ok(report.checks.length >= 6, "the targets were checked");
  assert.match(stdout, /\| start-up to first probe/);
  assert.match(
    stdout,
    /\| {3}× the C floor \(plain \/ with payload\) +\| 1\.00× \/ 1\.00× +\| [0-9]/,
  );
  assert.match(stdout, /load generator: reached [0-9,]+\/s/);
});

test("npm run bench -- --scrapes --smoke fills the ledger and measures probes beside a scrape flood", {
  skip: SKIP,
}, async (t) => {
  const dir = await tempDir(t);
  const json = join(dir, "scrapes.json");
  const { stdout } = await execOk(
    process.execPath,
    [join(REPO, "dist/bench/bench.js"), "--scrapes", "--smoke", "--json", json],
    { cwd: REPO, timeoutMs: 180_000 },
  );
  const report = JSON.parse(await readFile(json, "utf8")) as {
    scrapes: Record<
      string,
      {
        quiet: { probes: number }[];
        flooded: { probes: number }[];
        scrapesPerSecond: number[];
        series: number;
      }
    >;
  };
  const f = report.scrapes["hapgent, metrics on"];
  assert.ok(f, "this build measured");
  // 1,000 services × 7 statuses, the ledger's 1,024 pairs twice, and the rest.
  assert.ok(f.series > 10_000, `a scrape of the full state and ledger: ${f.series} series`);
  assert.ok((f.quiet[0]?.probes ?? 0) > 0 && (f.flooded[0]?.probes ?? 0) > 0);
  assert.ok((f.scrapesPerSecond[0] ?? 0) > 0, "scrapes answered during the flood");
  assert.match(stdout, /\| {3}while 4 scrapers fetch \/metrics +\| [0-9.]+ ms \//);
});
