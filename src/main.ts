#!/usr/bin/env -S node --max-semi-space-size=1 --max-old-space-size=32
/**
 * hapgent's entry point, and the only module that touches `process`.
 *
 * The first line sizes V8's heap for a small daemon: a 1 MiB young generation (the default
 * grows to 16 MiB per semi-space under load, though a probe's garbage dies young) and an old
 * generation capped at 32 MiB, six times what the agent keeps alive, so the heap does not grow
 * just because it may. Under load this keeps the daemon near 60 MiB where V8's defaults take it
 * past 90 (BENCHMARKS.md). The standalone binary and the tests take the flags from this line.
 *
 * Its first statements install the signal handlers, before any other module is loaded: until they
 * exist, SIGUSR2 and SIGHUP kill Node and SIGUSR1 opens its debugger. In the daemon, signals that
 * arrive before it is ready are queued and applied in order once it is. A command (`hapgent set
 * …`) ignores USR1, USR2 and HUP, so `pkill -USR2 hapgent` never kills it.
 */
import type { DaemonSignal } from "./daemon.js";

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

/** The rest loads after the handlers exist. A function, not top-level await: the standalone
 * binary runs this file as CommonJS. */
async function main(): Promise<void> {
  const inspector = await import("node:inspector");
  const { guardInspector, inspectorRequested } = await import("./inspector-guard.js");
  const inspectorWanted = inspectorRequested(process.execArgv, process.env.NODE_OPTIONS);

  process.on("uncaughtException", (err) => {
    // A bug, not bad input: say so once and exit, so the service manager restarts the agent.
    process.stderr.write(`hapgent: internal error, exiting: ${err.stack ?? String(err)}\n`);
    process.exit(70);
  });

  if (args.length > 0) {
    const stopOn = (signal: DaemonSignal) => {
      if (signal === "SIGINT") process.exit(130);
      if (signal === "SIGTERM") process.exit(143);
    };
    deliver = stopOn;
    for (const signal of early.splice(0)) stopOn(signal);
    if (!inspectorWanted) {
      guardInspector({
        url: () => inspector.url(),
        close: () => inspector.close(),
        onClosed: () => {},
      });
    }
    const { runCli } = await import("./cli.js");
    process.exitCode = await runCli({
      args,
      env: process.env,
      cwd: process.cwd(),
      pid: process.pid,
      procRoot: "/proc",
      out: (text) => {
        process.stdout.write(text);
      },
      err: (text) => {
        process.stderr.write(text);
      },
      reload: (pid) => {
        process.kill(pid, "SIGHUP");
      },
    });
  } else {
    const { fstatSync } = await import("node:fs");
    const { runDaemon } = await import("./daemon.js");

    /** True when stderr is the systemd journal's stream (systemd sets JOURNAL_STREAM to dev:ino). */
    const stderrIsJournal = (): boolean => {
      const expected = process.env.JOURNAL_STREAM;
      if (!expected) return false;
      try {
        const stats = fstatSync(2);
        return expected === `${stats.dev}:${stats.ino}`;
      } catch {
        return false;
      }
    };

    await runDaemon({
      env: process.env,
      cwd: process.cwd(),
      nodeVersion: process.version,
      journal: stderrIsJournal(),
      write: (text) => {
        process.stderr.write(text);
      },
      inspector: {
        url: () => inspector.url(),
        close: () => inspector.close(),
        requested: inspectorWanted,
      },
      onSignal: (handler) => {
        deliver = handler;
        for (const signal of early.splice(0)) handler(signal);
      },
      exit: (code) => process.exit(code),
    });
  }
}

void main();
