/**
 * `hapgent set STATUS` and its short forms: validate, save crash-safely with the daemon's own
 * store, make the daemon reload, and probe until it answers the new state.
 */
import { applyChange, type Change, type FieldChange } from "../core/change.js";
import { reply } from "../core/reply.js";
import {
  formatState,
  isInService,
  isServiceName,
  MAX_SERVICE_NAME_CHARS,
  type Status,
  serviceState,
} from "../core/state.js";
import { createLogger } from "../log.js";
import { createStateStore } from "../store.js";
import type { Values } from "./args.js";
import { stillRunning } from "./daemons.js";
import { CLI_EXIT, usage } from "./exit.js";
import { DEFAULT_TIMEOUT_S } from "./help.js";
import type { CliIo } from "./io.js";
import { ask, formatAddress, INSTANCE_PAYLOAD } from "./probe.js";
import { findTarget, type Target } from "./target.js";

const MAX_TIMEOUT_S = 3600;
const CONFIRM_POLL_MS = 50;
const PROBE_TIMEOUT_MS = 2000;

export async function set(io: CliIo, values: Values, status: Status): Promise<number> {
  // Everything the arguments alone can get wrong is refused before anything is read.
  const timeoutS = parseTimeout(values.timeout);
  const change = changeOf(values, status);

  const target = await findTarget(io, values);
  const path = target.config.stateFile;
  // The store logs only the in-place save's warning, which the operator should see.
  const store = createStateStore(path, createLogger({ write: io.err, journal: false }));
  const current = await store.load();
  const next = applyChange(current.ok ? current.state : undefined, change);
  if (!next.ok) {
    io.err(`hapgent: ${path}: ${next.reason}; nothing was written\n`);
    return next.code === "no-instance" ? CLI_EXIT.INVALID_FILE : CLI_EXIT.USAGE;
  }
  if (target.agents.length > 1) {
    io.err(
      `hapgent: several hapgent processes serve ${path} (pids ${target.agents.join(", ")}); nothing was written. Stop all but one.\n`,
    );
    return CLI_EXIT.SEVERAL_AGENTS;
  }
  if (!current.ok && current.code !== "ENOENT") {
    io.err(
      `hapgent: the current state file ${path} is invalid (${current.reason}); replacing it\n`,
    );
  }
  try {
    await store.save(next.state);
  } catch (err) {
    io.err(`hapgent: cannot write ${path}: ${(err as Error).message}\n`);
    return CLI_EXIT.CANNOT_WRITE;
  }
  io.out(`wrote ${path}: ${formatState(next.state)}\n`);
  if (change.service !== undefined && !isInService(next.state.status)) {
    io.out(
      `note: the instance is ${next.state.status}, so every service answers its state until it is UP or READY\n`,
    );
  }

  const [daemon] = target.serving;
  const pid = daemon?.pid;
  if (daemon === undefined || pid === undefined) {
    for (const text of target.notes) io.err(`hapgent: ${text}\n`);
    io.err(
      `hapgent: no running hapgent serves ${path}, so none was signalled; the next start loads it\n`,
    );
    return CLI_EXIT.NO_AGENT;
  }
  // The pid was found before the save: a daemon that stopped since may have left it to another.
  if (!(await stillRunning(io.procRoot, daemon))) {
    io.err(
      `hapgent: hapgent pid ${pid} has stopped, so none was signalled; the next start loads ${path}\n`,
    );
    return CLI_EXIT.NO_AGENT;
  }
  try {
    io.reload(pid);
  } catch (err) {
    io.err(
      `hapgent: cannot signal hapgent pid ${pid}: ${(err as NodeJS.ErrnoException).code ?? err}\n`,
    );
    return CLI_EXIT.NO_AGENT;
  }
  if (values["no-wait"]) {
    io.out(`signalled hapgent pid ${pid} to reload\n`);
    return CLI_EXIT.OK;
  }
  const expected = reply(serviceState(next.state, change.service));
  return confirm(io, target, pid, change.service, expected, timeoutS);
}

function parseTimeout(text: string | undefined): number {
  if (text === undefined) return DEFAULT_TIMEOUT_S;
  const seconds = /^[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : Number.NaN;
  if (!(seconds > 0 && seconds <= MAX_TIMEOUT_S)) {
    throw usage(
      `--timeout must be a number of seconds above 0 and at most ${MAX_TIMEOUT_S}, got ${JSON.stringify(text)}`,
    );
  }
  return seconds;
}

function changeOf(values: Values, status: Status): Change {
  const service = values.service;
  if (service !== undefined && !isServiceName(service)) {
    throw usage(
      `--service must be 1-${MAX_SERVICE_NAME_CHARS} printable ASCII characters without spaces, as HAProxy sends it with agent-send (without the line end), got ${JSON.stringify(service)}`,
    );
  }
  const field = (name: "weight" | "maxconn" | "description"): FieldChange | undefined => {
    if (values[`no-${name}`]) return null;
    const given = values[name];
    if (given === undefined || name === "description") return given;
    // Numbers as numbers so the state rules judge them; anything else stays text and is refused.
    return /^-?[0-9]+(\.[0-9]+)?$/.test(given) ? Number(given) : given;
  };
  return {
    status,
    service,
    weight: field("weight"),
    maxconn: field("maxconn"),
    description: field("description"),
  };
}

/** Probes until the agent answers `expected` or the time is up. */
async function confirm(
  io: CliIo,
  target: Target,
  pid: number,
  service: string | undefined,
  expected: string,
  timeoutS: number,
): Promise<number> {
  const payload = service === undefined ? INSTANCE_PAYLOAD : `${service}\n`;
  const deadline = Date.now() + timeoutS * 1000;
  let last = "no answer";
  for (;;) {
    // A probe never outlives the deadline by much: a stopped agent accepts and says nothing.
    const timeoutMs = Math.max(50, Math.min(PROBE_TIMEOUT_MS, deadline - Date.now()));
    const asked = await ask(target.probeHost, target.probePort, payload, timeoutMs);
    if (asked.answer === expected) {
      const whom = service === undefined ? "" : ` ${service}`;
      io.out(`hapgent pid ${pid} answers${whom}: ${expected.trimEnd()}\n`);
      return CLI_EXIT.OK;
    }
    last =
      asked.answer === undefined
        ? `no answer (${asked.error})`
        : `it answers ${JSON.stringify(asked.answer.trimEnd())}`;
    if (Date.now() >= deadline) break;
    await new Promise((resolve) => setTimeout(resolve, CONFIRM_POLL_MS));
  }
  io.err(
    `hapgent: hapgent pid ${pid} did not confirm within ${timeoutS} s: at ${formatAddress(target.probeHost, target.probePort)} ${last}; expected ${JSON.stringify(expected.trimEnd())}\n`,
  );
  return CLI_EXIT.NOT_CONFIRMED;
}
