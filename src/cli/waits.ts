/**
 * What a change waits for, in order: the agent's own answer (a probe, unless --no-confirm), every
 * load balancer that was polling having heard the new reply (--wait), and the service's port
 * having no connection left (--idle PORT).
 */
import { readFile } from "node:fs/promises";
import { formatAddress } from "../config.js";
import type { PollerView, StatusReply } from "../control-protocol.js";
import { printable } from "../core/state.js";
import { ControlError, request } from "./control.js";
import { CLI_EXIT } from "./exit.js";
import type { CliIo } from "./io.js";
import { ask, INSTANCE_PAYLOAD, servicePayload } from "./probe.js";
import type { Target } from "./target.js";

const POLL_MS = 100;
const PROBE_TIMEOUT_MS = 2000;
/** A load balancer silent for this many of its intervals (and a second) has stopped polling. */
const STOPPED_AFTER_INTERVALS = 3;
const STOPPED_AFTER_MIN_MS = 1000;
/** The daemon's ledger keeps a poller at least this long (MIN_FORGET_MS in the daemon). */
const UNKNOWN_INTERVAL_STOPPED_AFTER_MS = 10_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** Probes until the agent answers `expected` or `timeoutS` has passed. */
export async function confirm(
  io: CliIo,
  target: Target,
  pid: number,
  service: string | undefined,
  expected: string,
  timeoutS: number,
): Promise<number> {
  const payload = service === undefined ? INSTANCE_PAYLOAD : servicePayload(service);
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
        : `it answers ${JSON.stringify(printable(asked.answer.trimEnd()))}`;
    if (Date.now() >= deadline) break;
    await sleep(50);
  }
  io.err(
    `hapgent: hapgent pid ${pid} did not confirm within ${timeoutS} s: at ${formatAddress(target.probeHost, target.probePort)} ${last}; expected ${JSON.stringify(expected.trimEnd())}\n`,
  );
  return CLI_EXIT.NOT_CONFIRMED;
}

const key = (p: PollerView) => `${p.address} ${p.service}`;
const who = (p: PollerView) => (p.service === "" ? p.address : `${p.address} (${p.service})`);

/** The default wait: long enough for the slowest poller to ask three times, and at least 10 s. */
export function defaultWaitMs(pollers: readonly PollerView[]): number {
  const slowest = Math.max(0, ...pollers.map((p) => p.intervalMs ?? 0));
  return Math.max(10_000, STOPPED_AFTER_INTERVALS * slowest + 2000);
}

/**
 * How long a load balancer may go without a probe before it counts as stopped. Without a learnt
 * interval, as long as the daemon's ledger keeps any poller (10 s).
 */
export function stoppedAfterMs(intervalMs: number | null): number {
  return intervalMs === null
    ? UNKNOWN_INTERVAL_STOPPED_AFTER_MS
    : Math.max(STOPPED_AFTER_MIN_MS, STOPPED_AFTER_INTERVALS * intervalMs);
}

/** One look at the daemon's ledger: its pollers, or why it could not say. */
type Look =
  | { readonly pollers: readonly PollerView[] }
  | { readonly busy: string }
  | { readonly gone: string };

async function look(socket: string): Promise<Look> {
  const reply = await request(socket, { op: "status" }, PROBE_TIMEOUT_MS).catch(
    (err: ControlError) => err,
  );
  // Refused or missing: the daemon is restarting, or stopped; a new one may take the socket.
  if (reply instanceof ControlError) return { gone: reply.message };
  const status = reply as Partial<StatusReply> & { error?: unknown };
  if (status.ok === true && Array.isArray(status.pollers)) return { pollers: status.pollers };
  // Busy (too many clients), or an answer of another kind: asked again at the next round.
  return { busy: typeof status.error === "string" ? status.error : "an unexpected reply" };
}

/** A poller still waited for, and when (on this clock) it was last known to probe. */
interface Waiting {
  readonly poller: PollerView;
  lastProbeAtMs: number;
}

/**
 * Waits until every load balancer in `pollers` that had not heard the current reply has heard it,
 * saying so as each does; one that stops polling is reported and no longer waited for. A busy or
 * restarting daemon is asked again until the deadline: a new daemon's ledger learns each load
 * balancer at its next probe, so one missing from it counts as stopped only by the same rule.
 */
export async function waitHeard(
  io: CliIo,
  socket: string,
  pollers: readonly PollerView[],
  timeoutMs: number | undefined,
): Promise<number> {
  if (pollers.length === 0) {
    io.out("no load balancer is polling this agent: nothing to wait for\n");
    return CLI_EXIT.OK;
  }
  const total = pollers.length;
  let done = 0;
  // Those that polled between the change and now, and those the change did not concern.
  for (const p of pollers.filter((p) => p.current)) {
    done++;
    io.out(`${who(p)} hears ${JSON.stringify(p.heard)} already (${done} of ${total})\n`);
  }
  const began = Date.now();
  const waiting = new Map<string, Waiting>(
    pollers
      .filter((p) => !p.current)
      .map((p) => [key(p), { poller: p, lastProbeAtMs: began - p.lastProbeAgoMs }]),
  );
  const deadline = began + (timeoutMs ?? defaultWaitMs(pollers));
  let trouble: Exclude<Look, { pollers: unknown }> | undefined;
  while (waiting.size > 0 && Date.now() < deadline) {
    await sleep(POLL_MS);
    const seen = await look(socket);
    if (!("pollers" in seen)) {
      if (trouble === undefined) io.out(`note: ${troubleText(socket, seen)}; still waiting\n`);
      trouble = seen;
      continue;
    }
    if (trouble !== undefined) io.out("note: the control socket answers again\n");
    trouble = undefined;
    done = heardOrStopped(io, waiting, seen.pollers, began, { done, total });
  }
  if (waiting.size === 0) return CLI_EXIT.OK;
  return notHeard(io, socket, [...waiting.values()], total, deadline - began, trouble);
}

/**
 * Reports those of `waiting` that have heard or stopped polling, and forgets them; returns how
 * many have heard so far.
 */
function heardOrStopped(
  io: CliIo,
  waiting: Map<string, Waiting>,
  pollers: readonly PollerView[],
  began: number,
  count: { readonly done: number; readonly total: number },
): number {
  let { done } = count;
  const { total } = count;
  const at = Date.now();
  const now = new Map(pollers.map((p) => [key(p), p]));
  for (const [k, entry] of waiting) {
    const p = now.get(k);
    if (p !== undefined) entry.lastProbeAtMs = Math.max(entry.lastProbeAtMs, at - p.lastProbeAgoMs);
    const ago = at - entry.lastProbeAtMs;
    if (p?.current) {
      done++;
      io.out(
        `${who(p)} heard ${JSON.stringify(p.heard)} after ${seconds(at - began)} (${done} of ${total})\n`,
      );
      waiting.delete(k);
    } else if (ago > stoppedAfterMs(p?.intervalMs ?? entry.poller.intervalMs)) {
      io.out(
        `${who(entry.poller)} stopped polling (last probe ${seconds(ago)} ago): not waited for\n`,
      );
      waiting.delete(k);
    }
  }
  return done;
}

function troubleText(socket: string, trouble: Exclude<Look, { pollers: unknown }>): string {
  return "gone" in trouble
    ? `the control socket ${socket} does not answer (${trouble.gone}): waiting for the daemon`
    : `the control socket ${socket} is busy (${printable(trouble.busy)})`;
}

/** The deadline passed: who did not hear, or, when the daemon could not say, why. */
function notHeard(
  io: CliIo,
  socket: string,
  waiting: readonly Waiting[],
  total: number,
  waitedMs: number,
  trouble: Exclude<Look, { pollers: unknown }> | undefined,
): number {
  const left = waiting
    .map(
      ({ poller: p }) =>
        `${who(p)} (polls every ${p.intervalMs === null ? "?" : seconds(p.intervalMs)})`,
    )
    .join(", ");
  if (trouble !== undefined && "gone" in trouble) {
    io.err(
      `hapgent: the control socket ${socket} still does not answer (${trouble.gone}) after ${seconds(waitedMs)}: cannot tell whether ${left} heard the new state\n`,
    );
    return CLI_EXIT.NO_AGENT;
  }
  const why = trouble === undefined ? "" : ` (${troubleText(socket, trouble)})`;
  io.err(
    `hapgent: ${waiting.length} of ${total} load balancers did not hear the new state within ${seconds(waitedMs)}: ${left}${why}\n`,
  );
  return CLI_EXIT.NOT_HEARD;
}

/** TCP states in /proc/net/tcp: 01 is ESTABLISHED. */
const ESTABLISHED = "01";

/**
 * Established connections whose local port is `port`, in the rows of /proc/net/tcp and tcp6.
 * Pure: the tables' text in, a count out.
 */
export function establishedTo(port: number, tables: readonly string[]): number {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  let count = 0;
  for (const table of tables) {
    for (const row of table.split("\n").slice(1)) {
      const [, local, , state] = row.trim().split(/\s+/);
      if (state === ESTABLISHED && local?.endsWith(`:${hex}`)) count++;
    }
  }
  return count;
}

/** Waits until no connection to any of `ports` is established, saying the count as it falls. */
export async function waitIdle(
  io: CliIo,
  ports: readonly number[],
  timeoutMs: number,
): Promise<number> {
  const began = Date.now();
  const last = new Map<number, number>();
  for (;;) {
    const tables = await Promise.all(
      ["/proc/net/tcp", "/proc/net/tcp6"].map((path) => readFile(path, "utf8").catch(() => "")),
    );
    let left = 0;
    for (const port of ports) {
      const count = establishedTo(port, tables);
      left += count;
      if (last.get(port) !== count)
        io.out(`port ${port}: ${count} connection${count === 1 ? "" : "s"} open\n`);
      last.set(port, count);
    }
    if (left === 0) return CLI_EXIT.OK;
    if (Date.now() - began >= timeoutMs) {
      const counts = ports.map((port) => `port ${port}: ${last.get(port)}`).join(", ");
      io.err(`hapgent: connections still open after ${seconds(timeoutMs)}: ${counts}\n`);
      return CLI_EXIT.NOT_IDLE;
    }
    await sleep(POLL_MS);
  }
}
