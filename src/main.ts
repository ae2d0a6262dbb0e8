#!/usr/bin/env node
/**
 * hapgent's entry point, and the only module that touches `process`.
 *
 * Its first statements install the signal handlers, before any other module is loaded: until they
 * exist, SIGUSR2 and SIGHUP kill Node and SIGUSR1 opens its debugger. Signals that arrive before
 * the agent is ready are queued and applied in order once it is.
 */
import type { DaemonSignal } from "./daemon.js";

const SIGNALS: readonly DaemonSignal[] = ["SIGUSR1", "SIGUSR2", "SIGHUP", "SIGTERM", "SIGINT"];
const early: DaemonSignal[] = [];
let deliver = (signal: DaemonSignal): void => {
  early.push(signal);
};
for (const signal of SIGNALS) process.on(signal, () => deliver(signal));
// Only now take the name `pkill hapgent` looks for: a process it matches can no longer die of it.
process.title = "hapgent";

const { fstatSync } = await import("node:fs");
const inspector = await import("node:inspector");
const { inspectorRequested } = await import("./inspector-guard.js");
const { runDaemon } = await import("./daemon.js");

/** True when stderr is the systemd journal's stream (systemd sets JOURNAL_STREAM to its dev:ino). */
function stderrIsJournal(): boolean {
  const expected = process.env.JOURNAL_STREAM;
  if (!expected) return false;
  try {
    const stats = fstatSync(2);
    return expected === `${stats.dev}:${stats.ino}`;
  } catch {
    return false;
  }
}

process.on("uncaughtException", (err) => {
  // A bug, not bad input: say so once and exit, so the service manager restarts the agent.
  process.stderr.write(`hapgent: internal error, exiting: ${err.stack ?? String(err)}\n`);
  process.exit(70);
});

await runDaemon({
  args: process.argv.slice(2),
  env: process.env,
  cwd: process.cwd(),
  nodeVersion: process.version,
  journal: stderrIsJournal(),
  write: (text) => {
    process.stderr.write(text);
  },
  out: (text) => {
    process.stdout.write(text);
  },
  inspector: {
    url: () => inspector.url(),
    close: () => inspector.close(),
    requested: inspectorRequested(process.execArgv, process.env.NODE_OPTIONS),
  },
  onSignal: (handler) => {
    deliver = handler;
    for (const signal of early.splice(0)) handler(signal);
  },
  exit: (code) => process.exit(code),
});
