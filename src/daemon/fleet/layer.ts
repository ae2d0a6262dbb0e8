/**
 * The fleet's layer of the reply (HAPGENT_ETCD_ENDPOINTS, HAPGENT_ETCD_KEYS): the keys read at one
 * revision, then watched from the revision read, each on one endpoint at a time. A stream that
 * breaks or stalls (the health read sees a change it did not bring), or an endpoint that stops
 * answering the health read, ends the session: the next endpoint
 * is tried, with backoff once all have failed, and the watches resume after the last revision seen
 * of each key, so no change is missed or applied twice. A revision etcd has compacted meanwhile
 * means the keys are read again. While etcd cannot be reached the last word stands, and it is kept
 * in a cache file, so a restart without etcd keeps it too.
 */
import type { FleetConfig } from "../../config.js";
import type { FleetView } from "../../control-protocol.js";
import type { Verdict } from "../../core/compose.js";
import { fleetVerdict } from "../../core/fleet.js";
import { createEtcd, type Etcd, type EtcdError, type EtcdOptions } from "../../etcd/client.js";
import type { Logger } from "../../log.js";
import type { TextFile } from "../../store.js";
import { createSaveQueue } from "../saves.js";
import { followCache, saveCache } from "./cache.js";
import { type Fleet, offline } from "./follow.js";
import { type Outcome, session } from "./session.js";

export type { FleetView };

export interface FleetLayer {
  /** The fleet's verdict on an answer for `name` (undefined: the instance); none without a word. */
  verdict(name: string | undefined): Verdict | undefined;
  /** Goes up whenever the word changes. */
  generation(): number;
  view(): FleetView;
  /** Reads the cache, starts watching; resolves once etcd was read, or soon without it. */
  start(): Promise<void>;
  stop(): void;
}

export interface FleetTiming {
  /** How often the endpoint in use must answer a read, or it is left. */
  readonly healthMs: number;
  /** First pause after every endpoint failed; doubles up to maxBackoffMs. */
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  /** How long a start without a cached word waits for etcd before answering probes. */
  readonly startWaitMs: number;
}

export const FLEET_TIMING: FleetTiming = Object.freeze({
  healthMs: 3000,
  backoffMs: 250,
  maxBackoffMs: 5000,
  startWaitMs: 1500,
});

export function createFleetLayer(parts: {
  readonly config: FleetConfig;
  readonly options: EtcdOptions;
  readonly log: Logger;
  /** Where the word is cached (config.cacheFile; for root, guarded as the state file is). */
  readonly cache: TextFile;
  readonly now?: () => number;
  readonly timing?: FleetTiming;
}): FleetLayer {
  const { config, options, log, cache, now = Date.now, timing = FLEET_TIMING } = parts;
  const fleet: Fleet = {
    config,
    keys: config.keys,
    options,
    log,
    cache,
    now,
    timing,
    values: new Map(),
    applied: new Map(),
    seen: new Map(),
    cacheSaves: createSaveQueue(() => saveCache(fleet)),
    etcd: undefined,
    entry: undefined,
    problem: undefined,
    generation: 0,
    connected: false,
    fromCache: false,
    heardAt: undefined,
    lost: undefined,
    needRead: true,
    stalled: false,
    stopped: false,
    endSession: undefined,
    wake: undefined,
    firstRead: undefined,
    saveFailed: false,
  };
  return {
    verdict: (name) => (fleet.entry === undefined ? undefined : fleetVerdict(fleet.entry, name)),
    generation: () => fleet.generation,
    view: () => view(fleet),
    start: () => start(fleet),
    stop: () => stop(fleet),
  };
}

function view(fleet: Fleet): FleetView {
  const { entry, heardAt, lost } = fleet;
  const at = fleet.now();
  return {
    keys: fleet.keys,
    endpoint: fleet.etcd?.endpoint ?? fleet.options.endpoints[0]?.origin ?? "",
    connected: fleet.connected,
    word:
      entry === undefined ? null : { key: entry.key, revision: entry.revision, state: entry.state },
    problem: fleet.problem ?? null,
    heardAt: heardAt === undefined ? null : new Date(heardAt).toISOString(),
    heardAgoMs: heardAt === undefined ? null : at - heardAt,
    lostAt: lost === undefined ? null : new Date(lost.at).toISOString(),
    lostReason: lost?.reason ?? null,
    fromCache: fleet.fromCache,
  };
}

async function start(fleet: Fleet): Promise<void> {
  const cached = await followCache(fleet);
  const etcd = await createEtcd(fleet.options);
  fleet.etcd = etcd;
  const read = new Promise<void>((resolve) => {
    fleet.firstRead = resolve;
  });
  void run(fleet, etcd);
  // Without a cached word, the first probes should already hear the fleet's: wait a little.
  if (!cached) {
    await Promise.race([
      read,
      new Promise((resolve) => setTimeout(resolve, fleet.timing.startWaitMs)),
    ]);
  }
}

function stop(fleet: Fleet): void {
  fleet.stopped = true;
  fleet.endSession?.();
  fleet.wake?.();
  fleet.etcd?.close();
}

/** Sessions one after another until stopped: the next endpoint, or a pause, after each. */
async function run(fleet: Fleet, client: Etcd): Promise<void> {
  const { log, options, timing } = fleet;
  // Sessions in a row that ended before passing a health read.
  let failures = 0;
  let rereadLogged = false;
  while (!fleet.stopped) {
    let outcome: Outcome;
    try {
      outcome = await session(fleet, client);
    } catch (error) {
      outcome = { error: error as EtcdError, stable: false };
    }
    if (fleet.stopped) return;
    if (outcome.stable) {
      failures = 0;
      rereadLogged = false;
    }
    failures++;
    let immediate: boolean;
    if (outcome.reread !== undefined) {
      if (!rereadLogged) log.notice(`fleet: ${outcome.reread}; reading the keys again`);
      rereadLogged = true;
      // At once the first time; a reason that comes back session after session waits.
      immediate = failures === 1;
    } else {
      offline(fleet, outcome.error?.message ?? "the session ended");
      client.rotate();
      // Each endpoint once at once; then, round after round, a growing pause.
      immediate = failures < options.endpoints.length;
    }
    if (immediate) continue;
    const rounds = Math.max(1, Math.floor(failures / options.endpoints.length));
    const backoff = Math.min(timing.maxBackoffMs, timing.backoffMs * 2 ** (rounds - 1));
    await pause(fleet, backoff * (0.8 + Math.random() * 0.4));
  }
}

function pause(fleet: Fleet, ms: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    fleet.wake = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}
