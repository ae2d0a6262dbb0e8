/** Shared test helpers: temp dirs, probes, free ports, unprivileged runs. */
import {
  type ChildProcess,
  execFile,
  execFileSync,
  type SpawnOptions,
  spawn,
} from "node:child_process";
import { createSocket } from "node:dgram";
import { lstatSync, readdirSync, readFileSync, rmSync } from "node:fs";
import {
  chmod,
  chown,
  copyFile,
  cp,
  mkdtemp,
  readFile,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after } from "node:test";
import { fileURLToPath } from "node:url";
import { nodeFlags } from "../scripts/node-flags.js";

export const DIST_SRC = fileURLToPath(new URL("../src", import.meta.url));
export const MAIN = join(DIST_SRC, "main.js");
/**
 * How the tests start hapgent: the compiled sources on this Node, or, with HAPGENT_TEST_BINARY
 * set, that standalone executable, so the same suites judge the binary.
 */
export const HAPGENT_BINARY = process.env.HAPGENT_TEST_BINARY || undefined;

/** The Node flags main.js's `#!/usr/bin/env -S node …` line gives the installed command. */
export const NODE_FLAGS: readonly string[] = nodeFlags(MAIN);

/** The command line that runs hapgent with `args`, as the tests configured it. */
export function hapgentArgv(args: readonly string[] = []): [string, ...string[]] {
  return HAPGENT_BINARY === undefined
    ? [process.execPath, ...NODE_FLAGS, MAIN, ...args]
    : [HAPGENT_BINARY, ...args];
}

/** Spawns hapgent (the daemon without arguments, else a command) as the tests configured it. */
export function spawnHapgent(args: readonly string[], options: SpawnOptions): ChildProcess {
  const [file, ...rest] = hapgentArgv(args);
  return spawn(file, rest, options);
}
export const IS_ROOT = process.getuid?.() === 0;
export const NOBODY = 65534;

/** A fresh directory, removed when the test ends, even after a test took its write permission. */
export async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "hapgent-test-"));
  t.after(async () => {
    await chmod(dir, 0o700).catch(() => {});
    await rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
  });
  return dir;
}

/** Connects, optionally sends a payload, and returns everything received until the agent closes. */
export function probe(
  port: number,
  { host = "127.0.0.1", payload }: { host?: string; payload?: string } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let received = "";
    socket.setEncoding("utf8");
    socket.on("connect", () => {
      if (payload !== undefined) socket.write(payload);
    });
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.on("end", () => socket.end());
    socket.on("close", () => resolve(received));
    socket.on("error", reject);
    socket.setTimeout(5000, () => socket.destroy(new Error("probe timed out")));
  });
}

/** Below the kernel's ephemeral range, so no outgoing connection or port-0 listener takes it. */
const EPHEMERAL_LOW = (() => {
  try {
    return Number(
      readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0],
    );
  } catch {
    return 32768;
  }
})();

function bindable(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.on("error", () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * A port free right now on `host` (the daemon takes no port 0). Chosen at random below the
 * ephemeral range: tests run in parallel, and a debugger on --inspect-port=0 or an outgoing
 * connection would otherwise take the same port between this check and the daemon's bind.
 */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  const low = 10_000;
  const high = Math.max(low + 1000, EPHEMERAL_LOW - 1);
  for (;;) {
    const port = low + Math.floor(Math.random() * (high - low));
    if ((await holdPort(port)) && (await bindable(port, host))) {
      handedOut.set(port, socketsNamedAfter(port));
      return port;
    }
  }
}

/**
 * Every port this test process handed out (a daemon's control socket is named after it), with
 * the sockets of that name already there, by inode: another run's, never this one's to judge.
 */
const handedOut = new Map<number, Map<string, number>>();

/**
 * Where a daemon keeps its control socket when its environment names none: /run/hapgent for
 * root, $XDG_RUNTIME_DIR/hapgent, /tmp/hapgent-UID (config.ts, defaultControlSocket).
 */
function defaultSocketDirectories(): string[] {
  const tmp = readdirSync(tmpdir()).filter((name) => /^hapgent-[0-9]+$/.test(name));
  const xdg = process.env.XDG_RUNTIME_DIR;
  return [
    "/run/hapgent",
    ...tmp.map((name) => join(tmpdir(), name)),
    ...(xdg ? [join(xdg, "hapgent")] : []),
  ];
}

/**
 * The control sockets that daemons on this process's ports left where every test run would
 * find them: removed, and named, so the test file that left them fails. Tests give their
 * daemons a socket in a temporary directory of their own (startDaemon does).
 */
export function removeLeftSockets(): string[] {
  const left: string[] = [];
  for (const [port, before] of handedOut) {
    for (const [path, ino] of socketsNamedAfter(port)) {
      if (before.get(path) === ino) continue;
      left.push(path);
      rmSync(path, { force: true });
    }
  }
  return left;
}

/** The files named after `port` where daemons put their sockets by default, by inode. */
function socketsNamedAfter(port: number): Map<string, number> {
  const found = new Map<string, number>();
  for (const dir of defaultSocketDirectories()) {
    const path = join(dir, `${port}.sock`);
    try {
      found.set(path, lstatSync(path).ino);
    } catch {
      // None there.
    }
  }
  return found;
}

after(() => {
  const left = removeLeftSockets();
  if (left.length > 0) {
    throw new Error(
      `this test file left control sockets outside its temporary directories: ${left.join(", ")}`,
    );
  }
});

/**
 * Test files run in parallel, each in its own process: two that pick the same free port in the
 * same moment would both start a daemon on it. A port handed out is held for the life of the
 * process that took it by a UDP socket bound to that port on every address: the kernel refuses
 * the same bind to every other test process (and to this one again), and frees the port however
 * the process ends. Nothing that the tests start listens on UDP, so the TCP port stays free for
 * the daemon.
 */
function holdPort(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createSocket("udp4");
    socket.once("error", () => {
      socket.close();
      resolve(false);
    });
    socket.bind({ port, address: "0.0.0.0", exclusive: true }, () => {
      socket.unref();
      resolve(true);
    });
  });
}

/** Polls until `check` returns a value other than undefined, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 5000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Where other users can run hapgent: a checkout or a Node under /root is out of their reach, so
 * node (or the binary under test) and the compiled sources are copied to a world-readable
 * temporary directory when needed. Made once, on first use.
 */
let forOthers: Promise<{ node: string; src: string; binary: string | undefined }> | undefined;
export function reachableCopy(): Promise<{
  node: string;
  src: string;
  binary: string | undefined;
}> {
  forOthers ??= (async () => {
    if (!IS_ROOT) return { node: process.execPath, src: DIST_SRC, binary: HAPGENT_BINARY };
    const dir = await mkdtemp(join(tmpdir(), "hapgent-nobody-"));
    process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
    await chmod(dir, 0o755);
    const src = join(dir, "src");
    await cp(DIST_SRC, src, { recursive: true });
    const reachable = async (path: string, name: string) => {
      if (await reachableByOthers(path)) return path;
      const copy = join(dir, name);
      await copyFile(path, copy);
      await chmod(copy, 0o755);
      return copy;
    };
    const node = await reachable(process.execPath, "node");
    const binary =
      HAPGENT_BINARY === undefined ? undefined : await reachable(HAPGENT_BINARY, "hapgent");
    return { node, src, binary };
  })();
  return forOthers;
}

/** The command line that runs hapgent with `args` as another user may run it. */
export async function hapgentArgvForOthers(
  args: readonly string[] = [],
): Promise<[string, ...string[]]> {
  const { node, src, binary } = await reachableCopy();
  return binary === undefined
    ? [node, ...NODE_FLAGS, join(src, "main.js"), ...args]
    : [binary, ...args];
}

async function reachableByOthers(path: string): Promise<boolean> {
  for (let at = path; ; at = dirname(at)) {
    const mode = (await stat(at)).mode;
    if ((mode & 0o001) === 0) return false;
    if (at === dirname(at)) return true;
  }
}

/**
 * Runs a Node script without privileges: as `nobody` when the tests run as root, else as the
 * caller, who has none. Tests that use it deny the access they test to every user but root (a
 * mode of 000 or 0555), so the step is refused whoever runs it. `script` receives the directory
 * holding the compiled sources.
 */
export async function runUnprivileged(script: (src: string) => string): Promise<Finished> {
  const { node, src } = await reachableCopy();
  const child = spawn(node, ["--input-type=module", "-e", script(src)], {
    ...(IS_ROOT ? { uid: NOBODY, gid: NOBODY } : {}),
    stdio: ["ignore", "pipe", "pipe"],
    cwd: "/",
  });
  return collect(child);
}

export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Everything a child writes, and its exit code; killed after `timeoutMs`. */
export function collect(child: ChildProcess, timeoutMs = 10_000): Promise<Finished> {
  return new Promise((resolve) => {
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d) => {
      stdout += d;
    });
    child.stderr?.on("data", (d) => {
      stderr += d;
    });
    let exited = false;
    child.once("exit", () => {
      exited = true;
    });
    // What the command started may hold its pipes open after it is killed (dpkg in a container
    // nsenter entered): its output ends with it, so a timeout always ends the wait.
    const endOutput = () => {
      child.stdout?.destroy();
      child.stderr?.destroy();
    };
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      if (exited) endOutput();
      else child.once("exit", endOutput);
    }, timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export interface InProcess extends Finished {
  /** The pids the command sent SIGHUP. */
  readonly reloaded: number[];
  /** The users the command asked to become (only with `become: "record"`). */
  readonly became: number[];
}

/**
 * Runs a command in this process (no child, no real /proc unless `procRoot` names it): for the
 * command line's own logic, usage errors above all. It never switches users: asked to, it fails,
 * or with `become: "record"` notes the uid and goes on as itself.
 */
export async function cliInProcess(
  t: { after: (fn: () => Promise<void>) => void },
  args: readonly string[],
  {
    env = {},
    procRoot,
    reload = () => {},
    become = "fail",
  }: {
    env?: Record<string, string>;
    procRoot?: string;
    reload?: (pid: number) => void;
    become?: "fail" | "record";
  } = {},
): Promise<InProcess> {
  const { runCli } = await import("../src/cli/cli.js");
  let stdout = "";
  let stderr = "";
  const reloaded: number[] = [];
  const became: number[] = [];
  const code = await runCli({
    args,
    env,
    cwd: "/",
    // The command's own pid, which it never takes for a daemon: none of a test's made-up /proc
    // entries. This process's real pid may be one of them (401 in a pid namespace of its own,
    // as CI runs the suite in), and that daemon would silently vanish.
    pid: 0,
    procRoot: procRoot ?? (await tempDir(t)),
    uid: process.getuid?.() ?? 0,
    become: (uid) => {
      if (become === "fail") throw new Error(`a test in this process cannot become uid ${uid}`);
      became.push(uid);
    },
    userName: () => undefined,
    by: "tester",
    out: (text) => {
      stdout += text;
    },
    err: (text) => {
      stderr += text;
    },
    kill: (pid, signal) => process.kill(pid, signal),
    reload: (pid) => {
      reloaded.push(pid);
      reload(pid);
    },
  });
  return { code, stdout, stderr, reloaded, became };
}

/** Runs the command line against a daemon's file and port, as a deploy script would. */
export function cliFor(d: { stateFile: string; port: number }, ...args: string[]) {
  return runHapgent(args, {
    HAPGENT_STATE_FILE: d.stateFile,
    HAPGENT_IP: "127.0.0.1",
    HAPGENT_PORT: String(d.port),
  });
}

/** Runs hapgent with `args` and only `env` (plus PATH) to its exit. */
export function runHapgent(
  args: readonly string[],
  env: Record<string, string>,
): Promise<Finished> {
  const child = spawnHapgent(args, {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return collect(child);
}

export function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}

export interface Daemon {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly port: number;
  readonly dir: string;
  readonly stateFile: string;
  /** Everything the daemon wrote to stderr so far. */
  stderr(): string;
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  probe(options?: { host?: string; payload?: string }): Promise<string>;
  /** Waits until a probe answers `line`. */
  waitForReply(line: string, timeoutMs?: number): Promise<void>;
  /**
   * The state file without its audit record (`changed`, which says when: see withoutRecord);
   * the tests of the record read it with `readRawState`.
   */
  readState(): Promise<string>;
  readRawState(): Promise<string>;
  /** Waits until the state file holds exactly `content`, the audit record aside. */
  waitForFile(content: string, timeoutMs?: number): Promise<void>;
  signal(name: NodeJS.Signals): void;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface DaemonOptions {
  /** State file content; null leaves the file missing. */
  state?: string | null;
  env?: Record<string, string>;
  dir?: string;
  /** Wait for the "listening" line (default true). */
  ready?: boolean;
  /** An executable to run as the daemon instead of the hapgent under test (e.g. an installed one). */
  exec?: string;
  /** Its arguments. */
  args?: readonly string[];
  /** A fixed port, e.g. to restart an agent where HAProxy expects it. */
  port?: number;
  /** Runs the daemon as this user (the test runs as root); `dir` must be reachable by it. */
  user?: { uid: number; gid: number };
}

/** Starts the real daemon as a child process on a free loopback port. */
export async function startDaemon(
  t: { after: (fn: () => Promise<void> | void) => void },
  {
    state = '{"status":"UP"}',
    env = {},
    dir,
    ready = true,
    exec,
    args = [],
    port: fixedPort,
    user,
  }: DaemonOptions = {},
): Promise<Daemon> {
  // Not tempDir(): the daemon must be gone before its directory is removed, and after-hooks run
  // in the order they were added.
  const home = dir ?? (await mkdtemp(join(tmpdir(), "hapgent-test-")));
  const stateFile = join(home, "state.json");
  if (state !== null) await writeFile(stateFile, state);
  const port = fixedPort ?? (await freePort());
  // Its own directory, which the daemon's user controls, removed with it: a daemon killed
  // with SIGKILL leaves its socket behind.
  const sockets = await mkdtemp(join(tmpdir(), "hapgent-sock-"));
  if (user !== undefined) await chown(sockets, user.uid, user.gid);
  const options: SpawnOptions = {
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HAPGENT_IP: "127.0.0.1",
      HAPGENT_PORT: String(port),
      HAPGENT_STATE_FILE: stateFile,
      HAPGENT_CONTROL_SOCKET: join(sockets, `${port}.sock`),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
    ...(user === undefined ? {} : { uid: user.uid, gid: user.gid, cwd: "/" }),
  };
  const [file, ...rest] =
    exec !== undefined
      ? [exec, ...args]
      : user !== undefined
        ? await hapgentArgvForOthers()
        : hapgentArgv();
  const child = spawn(file, rest, options);
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  child.stdout?.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    // "close" comes after "exit" and after stderr has been read to its end.
    child.on("close", (code, signal) => resolve({ code, signal })),
  );
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
    if (dir === undefined) await rm(home, { recursive: true, force: true });
    await rm(sockets, { recursive: true, force: true });
  });
  const daemon: Daemon = {
    child,
    pid: child.pid ?? 0,
    port,
    dir: home,
    stateFile,
    exited,
    stderr: () => stderr,
    waitForLog: (pattern, timeoutMs = 5000) =>
      waitFor(`log ${pattern}`, () => stderr.match(pattern)?.[0], timeoutMs),
    probe: (options) => probe(port, options),
    async waitForReply(line, timeoutMs = 5000) {
      let last = "";
      await waitFor(
        `reply ${JSON.stringify(line)}`,
        async () => {
          last = await probe(port).catch((err: Error) => `(${err.message})`);
          return last === line ? true : undefined;
        },
        timeoutMs,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; last reply ${JSON.stringify(last)}; stderr:\n${stderr}`);
      });
    },
    readState: async () => withoutRecord(await readFile(stateFile, "utf8")),
    readRawState: () => readFile(stateFile, "utf8"),
    async waitForFile(content, timeoutMs = 5000) {
      let last = "";
      await waitFor(
        `state file ${JSON.stringify(content)}`,
        async () => {
          last = await readFile(stateFile, "utf8").then(
            withoutRecord,
            (err: Error) => `(${err.message})`,
          );
          return last === content ? true : undefined;
        },
        timeoutMs,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; file holds ${JSON.stringify(last)}; stderr:\n${stderr}`);
      });
    },
    signal: (name) => {
      process.kill(child.pid ?? 0, name);
    },
  };
  // How long a start takes is not what a test of a started agent is about: a loaded machine (two
  // lanes, the binary without its JIT) can take longer than 5 s.
  if (ready) await daemon.waitForLog(/listening on/, 15_000);
  return daemon;
}

/**
 * A state file's text without the audit record of the last change, which holds the time it was
 * made: what the agent answers from, as most tests compare it. Anything that is not a JSON object
 * is returned as it is.
 */
export function withoutRecord(text: string): string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return text;
  }
  if (typeof value !== "object" || value === null || !("changed" in value)) return text;
  const { changed: _, ...rest } = value as Record<string, unknown>;
  return `${JSON.stringify(rest)}${text.endsWith("\n") ? "\n" : ""}`;
}

/** The repository: the compiled tests live in dist/test. */
export const REPO = fileURLToPath(new URL("../..", import.meta.url));

/** Runs a command to its end; killed after `timeoutMs`. */
export function exec(
  file: string,
  args: readonly string[],
  { timeoutMs = 60_000, ...options }: SpawnOptions & { timeoutMs?: number } = {},
): Promise<Finished> {
  const child = spawn(file, [...args], { stdio: ["ignore", "pipe", "pipe"], ...options });
  return collect(child, timeoutMs);
}

/** Like exec, but fails with everything the command wrote unless it exits 0. */
export async function execOk(
  file: string,
  args: readonly string[],
  options: SpawnOptions & { timeoutMs?: number } = {},
): Promise<Finished> {
  const result = await exec(file, args, options);
  if (result.code !== 0) {
    throw new Error(
      `${file} ${args.join(" ")} exited ${result.code}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`,
    );
  }
  return result;
}

function has(command: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/**
 * unshare's arguments for `sh -c SCRIPT ARGS…` (ARGS from $0) in a mount namespace of its own,
 * which ends with it: what the script mounts (a tmpfs, a root's /proc) nothing else sees, and
 * nothing outlives it.
 */
export function privateMounts(script: string, args: readonly string[]): string[] {
  return ["--mount", "--propagation", "private", "--", "sh", "-c", script, ...args];
}

/**
 * Why a suite cannot run here, or false when it can. Outside CI a missing tool, or root, skips the
 * suite, loudly; under CI (CI=true) it fails, since CI must prove everything. CI's own run as an
 * unprivileged user (HAPGENT_CI_UNPRIVILEGED=1) skips what needs root: its root run proves that.
 */
export function missing(
  suite: string,
  { commands, root = false }: { commands: readonly string[]; root?: boolean },
): string | false {
  const absent = commands.filter((command) => !has(command));
  const needsRoot = root && process.getuid?.() !== 0;
  const reasons = [
    ...(absent.length > 0 ? [`missing ${absent.join(", ")}`] : []),
    ...(needsRoot ? ["needs root"] : []),
  ];
  if (reasons.length === 0) return false;
  const reason = `${suite}: ${reasons.join("; ")}`;
  // Needing root, the suite cannot run here whatever else is missing: the root run checks that.
  const excused = needsRoot && process.env.HAPGENT_CI_UNPRIVILEGED === "1";
  if (process.env.CI === "true" && !excused) {
    throw new Error(`${reason}, and CI must run it (see .ci/run)`);
  }
  process.stderr.write(`\n*** ${reason}: SKIPPED ***\n\n`);
  return reason;
}

/**
 * A load balancer as HAProxy polls: connect to `port` from `address` (a loopback address of its
 * own), read the line, close, every `everyMs`. `reset` closes each probe with RST once the line is
 * read, as HAProxy closes its checks (SO_LINGER 0) unless it saw the agent's FIN first. `deaf`
 * never closes: each probe stays open until the agent cuts it, so the agent never counts a reply
 * as heard.
 */
export function poller(
  port: number,
  address: string,
  everyMs: number,
  { reset = false, deaf = false }: { reset?: boolean; deaf?: boolean } = {},
) {
  let running = true;
  let probes = 0;
  const open = new Set<Socket>();
  const loop = (async () => {
    while (running) {
      const closed = new Promise<void>((resolve) => {
        // Half open when deaf: Node would otherwise answer the agent's FIN with its own.
        const socket = connect({
          host: "127.0.0.1",
          port,
          localAddress: address,
          allowHalfOpen: deaf,
        });
        open.add(socket);
        socket.on("data", () => {
          if (reset) socket.resetAndDestroy();
        });
        // Deaf, a probe counts once its reply came: the agent's FIN is the last it says.
        socket.on("end", () => (deaf ? probes++ : socket.end()));
        socket.on("close", () => {
          open.delete(socket);
          if (!deaf) probes++;
          resolve();
        });
        socket.on("error", () => {});
      });
      if (!deaf) await closed;
      await new Promise((resolve) => setTimeout(resolve, everyMs));
    }
  })();
  return {
    get probes() {
      return probes;
    },
    async stop() {
      running = false;
      await loop;
      for (const socket of open) socket.destroy();
    },
  };
}

/** Node's HTTP modules a daemon started with `env` has loaded once it listens. */
export async function httpModulesLoaded(
  t: { after: (fn: () => Promise<void>) => void },
  env: Record<string, string>,
): Promise<string[]> {
  const dir = await tempDir(t);
  await writeFile(join(dir, "state.json"), '{"status":"UP"}');
  const main = MAIN;
  const port = await freePort();
  // The daemon runs in this child; once it answers a probe, the child reports and exits.
  const script = `
    import { connect } from "node:net";
    const answered = () => new Promise((resolve) => {
      const socket = connect(${port}, "127.0.0.1");
      socket.on("data", () => { socket.destroy(); resolve(true); });
      socket.on("error", () => resolve(false));
    });
    await import(${JSON.stringify(main)});
    while (!(await answered())) await new Promise((next) => setTimeout(next, 20));
    const loaded = process.moduleLoadList.filter((m) => /^NativeModule (_?https?|_http_\\w+)$/.test(m));
    process.stdout.write(JSON.stringify(loaded), () => process.exit(0));
  `;
  const result = await execOk(process.execPath, ["--input-type=module", "-e", script], {
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HAPGENT_IP: "127.0.0.1",
      HAPGENT_PORT: String(port),
      HAPGENT_STATE_FILE: join(dir, "state.json"),
      HAPGENT_CONTROL_SOCKET: join(dir, "control.sock"),
      ...env,
    },
    timeoutMs: 20_000,
  });
  return JSON.parse(result.stdout) as string[];
}

/** Sends raw text on a Unix socket; resolves with every line received until it closes or `ms`. */
export function exchange(path: string, text: string | Buffer, ms = 1000): Promise<string[]> {
  return new Promise((resolve) => {
    const socket = connect(path);
    let received = "";
    const done = () => {
      socket.destroy();
      resolve(received.split("\n").filter(Boolean));
    };
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(text));
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.on("error", done);
    socket.on("close", done);
    setTimeout(done, ms);
  });
}

/** This process, as main.ts gives it to the store. */
export const SELF = {
  pid: process.pid,
  kill: (pid: number, signal: 0) => process.kill(pid, signal),
};
