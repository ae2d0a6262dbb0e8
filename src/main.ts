#!/usr/bin/env -S node --max-semi-space-size=1 --max-old-space-size=32 --inspect-port=255.255.255.255:0
/**
 * hapgent's entry point, and the only module that touches `process`.
 *
 * The first line is the one place the Node flags are set; the standalone binary, `npm start`,
 * the tests and the benchmark all take them from here (scripts/node-flags.ts):
 * - a 1 MiB young generation (the default grows to 16 MiB per semi-space under load, though a
 *   probe's garbage dies young) and an old generation capped at 32 MiB, six times what the agent
 *   keeps alive, so the heap does not grow just because it may. Under load this keeps the daemon
 *   near 60 MiB where V8's defaults take it past 90 (BENCHMARKS.md);
 * - the debugger's address, should a SIGUSR1 open it before the agent's handler exists: the
 *   limited broadcast address, where the kernel lets a socket listen but no TCP connection can
 *   ever reach it (connect() fails with ENETUNREACH, from this host or any other). So nobody can
 *   attach to a debugger opened that way, and the guard's close() never waits for a session.
 *
 * Its first statements install the signal handlers, before any other module is loaded: until they
 * exist, SIGUSR2 and SIGHUP kill Node and SIGUSR1 opens its debugger. In the daemon, signals that
 * arrive before it is ready are queued and applied in order once it is. A command (`hapgent set
 * …`) ignores USR1, USR2 and HUP, so `pkill -USR2 hapgent` never kills it.
 */
import type { DaemonIo, DaemonSignal } from "./daemon/daemon.js";
import type { LogStream } from "./log-sink.js";

const SIGNALS: readonly DaemonSignal[] = ["SIGUSR1", "SIGUSR2", "SIGHUP", "SIGTERM", "SIGINT"];
const early: DaemonSignal[] = [];
let deliver = (signal: DaemonSignal): void => {
  early.push(signal);
};
for (const signal of SIGNALS) process.on(signal, () => deliver(signal));

const args = process.argv.slice(2);
// Only the daemon takes the name `pkill hapgent` looks for, and only now that a process it
// matches can no longer die of the signal.
if (args.length === 0) process.title = "hapgent";

/** Writes out what the daemon's log still holds, for a moment at most, before any exit. */
let drainLog = (): Promise<void> => Promise.resolve();
/** How long an exit may wait for the log: a reader that stalled must not keep the process. */
const LOG_DRAIN_MS = 500;

function exit(code: number): void {
  void drainLog().finally(() => process.exit(code));
}

/** How an internal error is reported: on stderr, or through the daemon's log once it has one. */
let reportCrash = (_text: string): void => {};

/** The rest loads after the handlers exist. A function, not top-level await: the standalone
 * binary runs this file as CommonJS. */
async function main(): Promise<void> {
  const { writeSync } = await import("node:fs");
  /** Writes to stdout or stderr, never failing: output nobody can read is not a reason to stop. */
  const say = (fd: number, text: string): void => {
    try {
      const bytes = Buffer.from(text);
      for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done);
    } catch {
      // EPIPE, ENOSPC, EAGAIN: the reader is gone or stuck; the exit code still tells.
    }
  };
  reportCrash = (text) => say(2, text);
  process.on("uncaughtException", (err) => {
    // A bug, not bad input: say so once and exit, so the service manager restarts the agent.
    reportCrash(`hapgent: internal error, exiting: ${err.stack ?? String(err)}\n`);
    exit(70);
  });
  const inspector = await import("node:inspector");
  const { guardInspector, inspectorRequested } = await import("./inspector-guard.js");
  const requested = inspectorRequested(process.execArgv, process.env.NODE_OPTIONS);
  const debuggerIo = {
    url: () => inspector.url(),
    close: () => inspector.close(),
    requested,
  };
  if (args.length === 0) return runAgent(debuggerIo);
  if (!requested) guardInspector({ ...debuggerIo, onClosed: () => {} });
  return runCommand(say);
}

/** `hapgent COMMAND …`: INT and TERM end it; USR1, USR2 and HUP are ignored. */
async function runCommand(say: (fd: number, text: string) => void): Promise<void> {
  const stopOn = (signal: DaemonSignal) => {
    if (signal === "SIGINT") exit(130);
    if (signal === "SIGTERM") exit(143);
  };
  deliver = stopOn;
  for (const signal of early.splice(0)) stopOn(signal);
  const { runCli } = await import("./cli/cli.js");
  const { accountOf, isAccount } = await import("./cli/accounts.js");
  const { invoker } = await import("./cli/user.js");
  const { userInfo } = await import("node:os");
  const uid = process.getuid?.() ?? 0;
  let name: string | undefined;
  try {
    name = userInfo().username;
  } catch {
    // No entry in the user database (a container's arbitrary uid): recorded by uid.
  }
  process.exitCode = await runCli({
    args,
    env: process.env,
    cwd: process.cwd(),
    pid: process.pid,
    procRoot: "/proc",
    uid,
    // Before any switch of user: the record names who asked, not whose rights wrote.
    by: invoker({ uid, name, sudoUser: process.env.SUDO_USER, isAccount }),
    become: (uid) => {
      const account = accountOf(uid);
      if (account === undefined) throw new Error(`uid ${uid} has no account`);
      if (!process.setgroups || !process.setgid || !process.setuid) {
        throw new Error("this system cannot switch users");
      }
      // Groups first: only root may change them, and root stops being root at setuid.
      process.setgroups(account.groups);
      process.setgid(account.gid);
      process.setuid(uid);
    },
    userName: (uid) => accountOf(uid)?.name,
    out: (text) => say(1, text),
    err: (text) => say(2, text),
    reload: (pid) => {
      process.kill(pid, "SIGHUP");
    },
    kill: (pid, signal) => process.kill(pid, signal),
  });
}

/** `hapgent`: the daemon, logging to stderr through a sink that never stops it. */
async function runAgent(inspector: DaemonIo["inspector"]): Promise<void> {
  const { fstatSync } = await import("node:fs");
  const { Socket } = await import("node:net");
  const { runDaemon } = await import("./daemon/daemon.js");
  const { createLogSink } = await import("./log-sink.js");
  const { formatLine } = await import("./log.js");

  // True when stderr is the systemd journal's stream (systemd sets JOURNAL_STREAM to dev:ino).
  let journal = false;
  // A pipe or a socket, whose reader can stall: written through Node's own stream for it, which
  // makes the descriptor non-blocking (Node restores its flags at exit) and never closes it.
  let stream: LogStream | undefined;
  try {
    const stats = fstatSync(2);
    journal = process.env.JOURNAL_STREAM === `${stats.dev}:${stats.ino}`;
    // Not for a datagram socket, for which Node's stream would drop every line.
    if ((stats.isFIFO() || stats.isSocket()) && process.stderr instanceof Socket) {
      // A reader that went away (EPIPE) fails the write, which the sink counts; nothing more.
      process.stderr.on("error", () => {});
      stream = process.stderr;
    }
  } catch {
    // No stderr at all: nothing is written anyway.
  }
  const sink = createLogSink({
    fd: 2,
    ...(stream === undefined ? {} : { stream }),
    dropNote: (count, code) =>
      formatLine(
        "warning",
        `${count} log line${count === 1 ? " was" : "s were"} lost: stderr could not be written (${code})`,
        { journal },
      ),
  });
  drainLog = () => sink.drain(LOG_DRAIN_MS);
  // Through the queue, so a stalled reader cannot keep a crashed daemon from exiting either.
  reportCrash = (text) => sink.write(formatLine("error", text.trimEnd(), { journal }));
  await runDaemon({
    env: process.env,
    cwd: process.cwd(),
    nodeVersion: process.version,
    pid: process.pid,
    kill: (pid, signal) => process.kill(pid, signal),
    uid: process.getuid?.() ?? 0,
    journal,
    write: (text) => sink.write(text),
    inspector,
    onSignal: (handler) => {
      deliver = handler;
      for (const signal of early.splice(0)) handler(signal);
    },
    exit,
    atExit: (fn) => process.on("exit", fn),
  });
}

void main();
