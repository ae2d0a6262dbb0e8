#!/usr/bin/env node
// Start-up time and idle memory of hapgent builds, side by side in one run.
//   node scripts/measure-start.mjs [RUNS] NAME=COMMAND...
// e.g. node scripts/measure-start.mjs 20 binary=build/hapgent "node20=node dist/src/main.js"
// For each: the median and worst time from spawn to the first answered probe, `--version` wall
// time, and RSS after one idle second.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [first, ...rest] = process.argv.slice(2);
const runs = /^\d+$/.test(first ?? "") ? Number(first) : 20;
const builds = (/^\d+$/.test(first ?? "") ? rest : process.argv.slice(2)).map((spec) => {
  const at = spec.indexOf("=");
  if (at < 1) throw new Error(`expected NAME=COMMAND, got ${JSON.stringify(spec)}`);
  return { name: spec.slice(0, at), argv: spec.slice(at + 1).split(" ") };
});
if (builds.length === 0) {
  process.stderr.write("usage: measure-start.mjs [RUNS] NAME=COMMAND...\n");
  process.exit(2);
}

const dir = mkdtempSync(join(tmpdir(), "hapgent-measure-"));
const stateFile = join(dir, "state.json");
writeFileSync(stateFile, '{"status":"UP"}\n');
const port = 20000 + (process.pid % 10000);

const answers = () =>
  new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    let text = "";
    socket.on("data", (chunk) => {
      text += chunk;
    });
    socket.on("close", () => resolve(text.endsWith("\n")));
    socket.on("error", () => resolve(false));
  });

async function startOnce(argv, { idleMs = 0 } = {}) {
  const started = process.hrtime.bigint();
  const child = spawn(argv[0], argv.slice(1), {
    env: {
      PATH: process.env.PATH,
      HAPGENT_IP: "127.0.0.1",
      HAPGENT_PORT: String(port),
      HAPGENT_STATE_FILE: stateFile,
    },
    stdio: "ignore",
  });
  while (!(await answers())) await new Promise((r) => setTimeout(r, 1));
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  let rssKiB = 0;
  if (idleMs > 0) {
    await new Promise((r) => setTimeout(r, idleMs));
    rssKiB = Number(readFileSync(`/proc/${child.pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)?.[1]);
  }
  const exited = new Promise((r) => child.on("exit", r));
  child.kill("SIGTERM");
  await exited;
  return { ms, rssKiB };
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const rows = [];
for (const { name, argv } of builds) {
  await startOnce(argv); // warms the page cache
  const times = [];
  for (let i = 0; i < runs; i++) times.push((await startOnce(argv)).ms);
  const { rssKiB } = await startOnce(argv, { idleMs: 1000 });
  const version = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    spawnSync(argv[0], [...argv.slice(1), "--version"], { stdio: "ignore" });
    version.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  rows.push([
    name,
    `${median(times).toFixed(0)} ms`,
    `${Math.max(...times).toFixed(0)} ms`,
    `${median(version).toFixed(0)} ms`,
    `${(rssKiB / 1024).toFixed(1)} MiB`,
  ]);
}
rmSync(dir, { recursive: true, force: true });

const header = ["build", "start to first probe (median)", "(worst)", "--version", "RSS idle"];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
console.log(line(header));
console.log(line(widths.map((w) => "-".repeat(w))));
for (const row of rows) console.log(line(row));
console.log(
  `\n${runs} runs each; ${process.arch}, ${(await import("node:os")).cpus().length} cores`,
);
