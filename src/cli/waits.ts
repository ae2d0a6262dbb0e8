/**
 * What a change waits for, in order: the agent's own answer (a probe, unless --no-confirm), every
 * load balancer that was polling having heard the new reply (--wait), and the service's port
 * having no connection left (--idle PORT).
 */
import { readFile } from "node:fs/promises";
import { formatAddress } from "../config.js";
import type { PollerView, StatusReply } from "../control-protocol.js";
import { printable } from "../core/state.js";
import { request } from "./control.js";
import { CLI_EXIT } from "./exit.js";
import type { CliIo } from "./io.js";
import { ask, INSTANCE_PAYLOAD, servicePayload } from "./probe.js";
import type { Target } from "./target.js";

const POLL_MS = 100;
const PROBE_TIMEOUT_MS = 2000;
/** A load balancer silent for this many of its intervals (and a second) has stopped polling. */
const STOPPED_AFTER_INTERVALS = 3;
const STOPPED_AFTER_MIN_MS = 1000;

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
 * Waits until every load balancer in `pollers` that had not heard the current reply has heard it,
 * saying so as each does; one that stops polling is reported and no longer waited for.
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
  const waiting = new Map(pollers.filter((p) => !p.current).map((p) => [key(p), p]));
  const began = Date.now();
  const deadline = began + (timeoutMs ?? defaultWaitMs(pollers));
  while (waiting.size > 0 && Date.now() < deadline) {
    await sleep(POLL_MS);
    const status = (await request(socket, { op: "status" }, PROBE_TIMEOUT_MS)) as StatusReply;
    const now = new Map(status.pollers.map((p) => [key(p), p]));
    for (const [k, before] of waiting) {
      const p = now.get(k);
      const interval = p?.intervalMs ?? before.intervalMs;
      if (p?.current) {
        done++;
        io.out(
          `${who(p)} heard ${JSON.stringify(p.heard)} after ${seconds(Date.now() - began)} (${done} of ${total})\n`,
        );
        waiting.delete(k);
      } else if (
        p === undefined ||
        (interval !== null &&
          p.lastProbeAgoMs > Math.max(STOPPED_AFTER_MIN_MS, STOPPED_AFTER_INTERVALS * interval))
      ) {
        io.out(
          `${who(before)} stopped polling (last probe ${seconds(p?.lastProbeAgoMs ?? Date.now() - began)} ago): not waited for\n`,
        );
        waiting.delete(k);
      }
    }
  }
  if (waiting.size === 0) return CLI_EXIT.OK;
  const left = [...waiting.values()].map(
    (p) => `${who(p)} (polls every ${p.intervalMs === null ? "?" : seconds(p.intervalMs)})`,
  );
  io.err(
    `hapgent: ${waiting.size} of ${total} load balancers did not hear the new state within ${seconds(deadline - began)}: ${left.join(", ")}\n`,
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
