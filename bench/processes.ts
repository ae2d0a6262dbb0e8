/**
 * The benchmark's processes: the targets it starts, the load generator it builds and runs, and
 * what /proc says of them. Every child is tracked, so an interrupted run leaves nothing behind.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync, statSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { probeOnce } from "./load.js";
import type { LoadResult } from "./report.js";
import type { TargetSpec } from "./targets.js";

export const LINE = "up ready 100%\n";
export const PLAIN_FILE = '{"status":"UP"}\n';
const CLOCK_TICKS_PER_S = 100;

const children = new Set<ChildProcess>();
function track<T extends ChildProcess>(child: T): T {
  children.add(child);
  child.on("close", () => children.delete(child));
  return child;
}

/** On INT, TERM or HUP: kill every child, say so, and exit. */
export function stopChildrenOnSignal(say: (text: string) => void): void {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(signal, () => {
      for (const child of children) child.kill("SIGKILL");
      say(`bench: ${signal}: stopped`);
      process.exit(130);
    });
  }
}

/** Builds `source` into `out` with cc unless `out` is newer; returns why it could not. */
export async function buildC(source: string, out: string): Promise<string | undefined> {
  if (existsSync(out) && statSync(out).mtimeMs >= statSync(source).mtimeMs) return undefined;
  await mkdir(dirname(out), { recursive: true });
  const built = spawnSync("cc", ["-O2", "-Wall", "-o", out, source], { encoding: "utf8" });
  return built.status === 0 ? undefined : (built.error?.message ?? built.stderr);
}

/** Why `path` cannot be started as a program, or undefined when it can. */
export function notExecutable(path: string): string | undefined {
  try {
    if (!statSync(path).isFile()) return `${path} is not a file`;
    accessSync(path, constants.X_OK);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ENOENT" ? `${path} does not exist` : `${path} cannot be run (${code})`;
  }
}

/**
 * Drops an executable from the page cache, so it is read as after a reboot. A file just written
 * in one piece (a build's output) sits in large folios, and each page fault then maps a whole
 * folio: measured here, that alone adds up to 27 MiB of RSS to the same program.
 */
function dropFromPageCache(path: string): void {
  spawnSync("dd", [`if=${path}`, "iflag=nocache", "count=0"], { stdio: "ignore" });
}

let nextPort = 20_000 + (process.pid % 5000) * 2;

/** The checks file of the targets with checks (see useChecks). */
let checksFile: string | undefined;

/** How many checks a target with checks runs, and how often each. */
export const BENCH_CHECKS = 10;
const CHECK_INTERVAL = "1s";

/**
 * A small HTTP service answering 200, and a checks file in `dir` with BENCH_CHECKS checks of it:
 * what the targets with checks run. Returns a function that stops the service.
 */
export async function useChecks(dir: string): Promise<() => Promise<void>> {
  const { createServer } = await import("node:http");
  const server = createServer((_req, res) => res.end("ok"));
  await new Promise<void>((ready) => server.listen(0, "127.0.0.1", ready));
  const { port } = server.address() as { port: number };
  checksFile = join(dir, "checks.json");
  const checks = Array.from({ length: BENCH_CHECKS }, (_, i) => ({
    name: `check${i}`,
    http: `http://127.0.0.1:${port}/health/${i}`,
    interval: CHECK_INTERVAL,
  }));
  await writeFile(checksFile, JSON.stringify({ checks }), { mode: 0o644 });
  return () =>
    new Promise<void>((done) => {
      server.closeAllConnections();
      server.close(() => done());
    });
}

/** The etcd of the targets that follow a fleet (see useFleet). */
let fleetEndpoint: string | undefined;
/** What those targets watch: a host key that does not exist and a fleet key that says UP. */
export const BENCH_FLEET_KEYS = "/bench/host,/bench/all";

/**
 * A single etcd member on loopback (Debian's etcd-server) with `/bench/all` saying UP: what the
 * targets with a fleet watch. Undefined when etcd is not installed; else a function that stops it.
 */
export async function useFleet(dir: string): Promise<(() => Promise<void>) | undefined> {
  if (spawnSync("etcd", ["--version"], { stdio: "ignore" }).status !== 0) return undefined;
  const client = nextPort++;
  const peer = nextPort++;
  const url = `http://127.0.0.1:${client}`;
  const etcd = track(
    spawn(
      "etcd",
      [
        "--name=bench",
        `--data-dir=${join(dir, "etcd")}`,
        `--listen-client-urls=${url}`,
        `--advertise-client-urls=${url}`,
        `--listen-peer-urls=http://127.0.0.1:${peer}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
        `--initial-cluster=bench=http://127.0.0.1:${peer}`,
        "--logger=zap",
        "--log-level=error",
      ],
      { stdio: "ignore" },
    ),
  );
  const b64 = (text: string) => Buffer.from(text).toString("base64");
  const put = () =>
    fetch(`${url}/v3/kv/put`, {
      method: "POST",
      body: JSON.stringify({ key: b64("/bench/all"), value: b64(PLAIN_FILE) }),
    }).then((r) => r.ok);
  for (let i = 0; !(await put().catch(() => false)); i++) {
    if (i > 200) throw new Error("bench: etcd did not start");
    await new Promise((next) => setTimeout(next, 50));
  }
  fleetEndpoint = url;
  return async () => {
    etcd.kill("SIGKILL");
    await new Promise((done) => etcd.on("close", done));
  };
}

function envFor(
  spec: TargetSpec,
  port: number,
  stateFile: string,
  metricsPort = spec.metrics ? nextPort++ : undefined,
): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HAPGENT_IP: "127.0.0.1",
    HAPGENT_PORT: String(port),
    HAPGENT_STATE_FILE: stateFile,
    BASELINE_PORT: String(port),
    ...(metricsPort === undefined ? {} : { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` }),
    ...(spec.checks && checksFile !== undefined ? { HAPGENT_CHECKS_FILE: checksFile } : {}),
    ...(spec.fleet && fleetEndpoint !== undefined
      ? { HAPGENT_ETCD_ENDPOINTS: fleetEndpoint, HAPGENT_ETCD_KEYS: BENCH_FLEET_KEYS }
      : {}),
  };
}

export interface Running {
  readonly spec: TargetSpec;
  readonly child: ChildProcess;
  readonly pid: number;
  readonly port: number;
  /** Where it serves metrics, when it does. */
  readonly metricsPort: number | undefined;
  readonly stateFile: string;
  stop(): Promise<void>;
}

/** Starts a target with a state file in `dir`; resolves once it listens. */
export async function start(spec: TargetSpec, dir: string): Promise<Running> {
  const port = nextPort++;
  const metricsPort = spec.metrics ? nextPort++ : undefined;
  const stateFile = join(dir, `${port}.json`);
  await writeFile(stateFile, PLAIN_FILE);
  const [file = "", ...args] = spec.argv;
  dropFromPageCache(file);
  const env = envFor(spec, port, stateFile, metricsPort);
  const child = track(spawn(file, args, { env, stdio: ["ignore", "ignore", "pipe"] }));
  const exited = new Promise<void>((done) => child.on("close", () => done()));
  let stderr = "";
  await new Promise<void>((ready, fail) => {
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
      if (/listening/.test(stderr)) ready();
    });
    void exited.then(() => fail(new Error(`${spec.name} exited: ${stderr}`)));
  });
  return {
    spec,
    child,
    pid: child.pid ?? 0,
    port,
    metricsPort,
    stateFile,
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

export const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

/** Spawn to the first answered probe, once; a fresh process each time. */
export async function startOnce(spec: TargetSpec, dir: string): Promise<number> {
  const port = nextPort++;
  const stateFile = join(dir, `${port}.json`);
  await writeFile(stateFile, PLAIN_FILE);
  const [file = "", ...args] = spec.argv;
  const began = performance.now();
  const child = track(spawn(file, args, { env: envFor(spec, port, stateFile), stdio: "ignore" }));
  const exited = new Promise<void>((done) => child.on("close", () => done()));
  for (;;) {
    const ok = await probeOnce({ host: "127.0.0.1", port, expect: LINE }).then(
      () => true,
      () => false,
    );
    if (ok) break;
    if (performance.now() - began > 10_000) throw new Error(`${spec.name} did not start`);
    await sleep(1);
  }
  const took = performance.now() - began;
  child.kill("SIGTERM");
  await exited;
  return took;
}

/** A field of /proc/PID/status, in MiB. */
export function status(pid: number, field: "VmRSS" | "VmHWM" | "RssAnon" | "RssFile"): number {
  const text = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(text.match(new RegExp(`^${field}:\\s+(\\d+) kB$`, "m"))?.[1]) / 1024;
}

/** CPU seconds a process has used, from /proc/PID/stat (utime + stime). */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_S;
}

/** Runs the load generator; `onMark` is called when it prints "mark". */
export function loadgen(
  binary: string,
  args: string[],
  say: (text: string) => void,
  onMark?: () => void,
): Promise<LoadResult> {
  return new Promise((done, fail) => {
    const child = track(spawn(binary, args, { stdio: ["ignore", "pipe", "inherit"] }));
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      out += chunk;
      if (onMark && out.includes("mark\n")) {
        out = out.replace("mark\n", "");
        onMark();
        onMark = undefined;
      }
    });
    child.on("close", (code) => {
      const last = out.trim().split("\n").at(-1) ?? "";
      if (code !== 0) return fail(new Error(`loadgen exited ${code}: ${out}`));
      const result = JSON.parse(last) as LoadResult;
      if (result.errors > 0) say(`  ${result.errors} errors, first: ${result.firstError}`);
      done(result);
    });
  });
}
