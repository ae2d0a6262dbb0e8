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
import {
  chooseWord,
  type FleetWord,
  fleetVerdict,
  type KeyValue,
  MAX_FLEET_VALUE_BYTES,
  parseFleetValue,
  readValue,
} from "../../core/fleet.js";
import { parseJsonFile } from "../../core/json.js";
import { formatAnswered, isTimestamp, validateState } from "../../core/state.js";
import {
  createEtcd,
  type Etcd,
  EtcdError,
  type EtcdOptions,
  type KeyValueRecord,
  type Snapshot,
} from "../../etcd/client.js";
import type { Logger } from "../../log.js";
import { isTransientReadError, type ReadResult, readCapped, type TextFile } from "../../store.js";
import { START_READ_HOLD_MS } from "../operator.js";

export type { FleetView };

export interface FleetLayer {
  /** The fleet's verdict on an answer for `name` (undefined: the instance); none without a word. */
  verdict(name: string | undefined): Verdict | undefined;
  /** Goes up whenever the word changes. */
  version(): number;
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

/** How a session on one endpoint ended. */
interface Outcome {
  readonly error?: EtcdError;
  /** Why the keys must be read afresh (a compaction, etcd's data replaced). */
  readonly reread?: string;
  /** It had every watch and passed a health read: etcd was there. */
  readonly stable: boolean;
}

/** A cache larger than this was not written by the agent. */
const MAX_CACHE_BYTES = 256 * 1024;
const CACHE_FORMAT = 1;

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
  const { keys } = config;
  const values = new Map<string, KeyValue>();
  /** Per key, the revision up to which its changes are applied: a watch resumes after it. */
  const applied = new Map<string, number>();
  let etcd: Etcd | undefined;
  let word: FleetWord | undefined;
  let problem: string | undefined;
  let version = 0;
  let connected = false;
  let fromCache = false;
  let heardAt: number | undefined;
  let lost: { at: number; reason: string } | undefined;
  let needRead = true;
  /** A watch did not bring a change a read saw: read at each session's start until one works. */
  let stalled = false;
  let stopped = false;
  let endSession: (() => void) | undefined;
  let wake: (() => void) | undefined;
  let firstRead: (() => void) | undefined;
  /** One save at a time; changes meanwhile are written together by the next. */
  let saving = false;
  let dirty = false;
  let saveFailed = false;

  const heard = () => {
    heardAt = now();
  };

  const cacheText = () =>
    `${JSON.stringify({
      format: CACHE_FORMAT,
      keys,
      word: word === undefined ? null : word,
      heardAt: new Date(heardAt ?? now()).toISOString(),
    })}\n`;

  /** Saves the word now followed; a burst of changes costs one save at a time, the last wins. */
  const saveCache = () => {
    dirty = true;
    if (saving) return;
    saving = true;
    void (async () => {
      while (dirty && !stopped) {
        dirty = false;
        try {
          await cache.save(cacheText());
          if (saveFailed) log.notice(`fleet: saved the cache ${config.cacheFile} again`);
          saveFailed = false;
        } catch (err) {
          const { code, message } = err as NodeJS.ErrnoException;
          if (!saveFailed) {
            log.warning(
              `fleet: cannot save the cache ${config.cacheFile} (${code === "EPERM" ? message : (code ?? message)}); a restart while etcd is unreachable would not know the fleet's word`,
            );
          }
          saveFailed = true;
        }
      }
      saving = false;
    })();
  };

  /** Decides the word from the values; logs and caches what changed. */
  const decide = (cause: string) => {
    const chosen = chooseWord(keys, values, word);
    if (chosen.problem !== problem) {
      problem = chosen.problem;
      if (problem !== undefined) log.warning(`fleet: ${problem}`);
    }
    if (chosen.word === word) return;
    word = chosen.word;
    fromCache = false;
    version++;
    if (word === undefined) {
      log.notice(
        `fleet: ${cause}: no key holds a word (${keys.join(", ")}); the operator's state alone decides`,
      );
    } else {
      log.notice(
        `fleet: ${cause}: following ${word.key} (revision ${word.revision}): ${formatAnswered(word.state)}`,
      );
    }
    saveCache();
  };

  /**
   * Per key, the bytes and revision last applied (null: absent; no value: too large to read), to
   * check etcd against.
   */
  const seen = new Map<
    string,
    { readonly modRevision: number; readonly value: Buffer | undefined } | null
  >();

  const applyRead = (snapshot: Snapshot) => {
    for (const key of keys) {
      const record = snapshot.values.get(key);
      values.set(key, readValue(record, snapshot.revision));
      seen.set(key, record ?? null);
      applied.set(key, snapshot.revision);
    }
    heard();
    // What etcd says now, even where it is what the cache said.
    fromCache = false;
    decide(`read at revision ${snapshot.revision}`);
  };

  /**
   * Whether etcd holds, at revisions the watches have passed, other keys than they delivered
   * (with `bytes`, other values too): its data was replaced (restored from a backup, made anew)
   * under the same revisions. A read older than what a watch applied since says nothing of it.
   */
  const differs = (at: Records, bytes: boolean): boolean =>
    keys.some((key) => {
      const theirs = at.records.get(key);
      const mine = seen.get(key);
      const upTo = applied.get(key) ?? 0;
      if (at.revision < upTo) return false;
      if (theirs === undefined) return at.revision === upTo && mine != null;
      if (theirs.modRevision > upTo) return false;
      return (
        mine == null ||
        mine.modRevision !== theirs.modRevision ||
        (bytes && !sameBytes(mine.value, theirs.value))
      );
    });

  /** Per key, the revision of a change etcd holds and the watches have not applied. */
  const ahead = (at: Records): Map<string, number> => {
    const owed = new Map<string, number>();
    for (const key of keys) {
      const theirs = at.records.get(key);
      const upTo = applied.get(key) ?? 0;
      if (theirs !== undefined && theirs.modRevision > upTo) owed.set(key, theirs.modRevision);
      // Deleted after what was applied (at a revision up to the read's): any later one will do.
      if (theirs === undefined && seen.get(key) != null && at.revision > upTo) {
        owed.set(key, upTo + 1);
      }
    }
    return owed;
  };

  /**
   * Session start: the keys read alone with their values. Applied if the watches cannot be trusted
   * (first, after a compaction or a stall); else only checked against what they delivered, as
   * resumed watches bring every change since, in order.
   */
  const startRead = async (client: Etcd): Promise<Outcome | undefined> => {
    const snapshot = await client.read(keys, MAX_FLEET_VALUE_BYTES);
    if (stopped) return { stable: false };
    if (!needRead && !stalled) {
      if (!differs({ revision: snapshot.revision, records: snapshot.values }, true)) return;
      needRead = true;
      return { reread: DATA_REPLACED, stable: false };
    }
    applyRead(snapshot);
    needRead = false;
    firstRead?.();
    return undefined;
  };

  /** One session on the current endpoint; resolves with how it ended. */
  const session = async (client: Etcd): Promise<Outcome> => {
    const early = await startRead(client);
    if (early !== undefined) return early;
    return new Promise((resolve) => {
      let done = false;
      let created = 0;
      let stable = false;
      let health: ReturnType<typeof setTimeout> | undefined;
      const watches: { close(): void }[] = [];
      const finish = (outcome: Omit<Outcome, "stable">) => {
        if (done) return;
        done = true;
        clearTimeout(health);
        for (const watch of watches) watch.close();
        connected = false;
        endSession = undefined;
        resolve({ ...outcome, stable });
      };
      const reread = (why: string) => {
        needRead = true;
        finish({ reread: why });
      };
      endSession = () => finish({});
      for (const key of keys) {
        const after = applied.get(key) ?? 0;
        watches.push(
          client.watch(key, after + 1, {
            created(revision) {
              if (revision < after) {
                return reread(
                  `etcd's revision ${revision} is below the ${after} already seen (its data was made anew)`,
                );
              }
              heard();
              if (++created === keys.length) {
                connected = true;
                stalled = false;
              }
            },
            events(events) {
              heard();
              // Each change in its order, as the history says it: a resumed watch delivers all
              // that happened while it was away, in one message.
              for (const event of events) {
                if (event.key !== key || event.modRevision <= (applied.get(key) ?? 0)) continue;
                applied.set(key, event.modRevision);
                seen.set(
                  key,
                  event.type === "delete"
                    ? null
                    : { modRevision: event.modRevision, value: event.value },
                );
                values.set(
                  key,
                  event.type === "delete"
                    ? { kind: "absent", revision: event.modRevision }
                    : parseFleetValue(event.value, event.modRevision),
                );
                decide(`${key} changed at revision ${event.modRevision}`);
              }
            },
            compacted(revision) {
              reread(
                revision === 0
                  ? "a watch message was too large to read"
                  : `etcd compacted its history past the revisions last seen (to ${revision})`,
              );
            },
            ended(error) {
              finish({ error });
            },
          }),
        );
      }
      /**
       * Per key, a revision a health read saw that the watch had not delivered yet, and when the
       * read that first saw it started.
       */
      const owed = new Map<string, { readonly revision: number; readonly since: number }>();
      // The endpoint must keep answering, and agree with what the watches delivered. One
      // listing, no values: what etcd holds is told by each key's mod_revision. One read at a
      // time, the next a period after the last ended, however slow etcd answers.
      const check = async () => {
        const started = now();
        const listed = await client.list(keys);
        if (done) return;
        if (differs({ revision: listed.revision, records: listed.found }, false)) {
          return reread(DATA_REPLACED);
        }
        // A change a read saw, still not brought by a read that started a health period later:
        // the watch is stalled and etcd's values are what counts. Until watches work again, each
        // session reads before it watches, so changes are followed even while every watch is
        // swallowed.
        const missed = [...owed].find(
          ([key, { revision, since }]) =>
            (applied.get(key) ?? 0) < revision && started - since >= timing.healthMs,
        );
        if (missed !== undefined) {
          const [key, { revision }] = missed;
          const snapshot = await client.read(keys, MAX_FLEET_VALUE_BYTES);
          if (done) return;
          applyRead(snapshot);
          stalled = true;
          return finish({ error: stalledWatch(client, [key, revision], timing.healthMs) });
        }
        for (const [key, revision] of ahead({ revision: listed.revision, records: listed.found })) {
          const before = owed.get(key);
          if (before === undefined || (applied.get(key) ?? 0) >= before.revision) {
            owed.set(key, { revision, since: started });
          }
        }
        for (const [key, { revision }] of owed) {
          if ((applied.get(key) ?? 0) >= revision) owed.delete(key);
        }
        // The read confirms the word only where it agrees with what is followed.
        if (owed.size > 0) return;
        heard();
        if (connected && !stable) {
          stable = true;
          settled();
        }
      };
      const schedule = () => {
        health = setTimeout(() => {
          check().then(
            () => {
              if (!done) schedule();
            },
            (error: EtcdError) => finish({ error }),
          );
        }, timing.healthMs);
      };
      schedule();
    });
  };

  /** A session that passed a health read: the outage, if any, is over. */
  const settled = () => {
    if (lost === undefined) return;
    log.notice(
      `fleet: etcd at ${etcd?.endpoint} answers again after ${Math.round((now() - lost.at) / 1000)} s; watching ${keys.length} key${keys.length === 1 ? "" : "s"} from the revisions last seen`,
    );
    lost = undefined;
  };

  const offline = (reason: string) => {
    // Once per outage: sessions that end before they prove themselves are the same outage.
    if (lost !== undefined) return;
    lost = { at: now(), reason };
    const kept =
      word === undefined
        ? "no fleet word is followed"
        : `keeping the fleet's last word, ${word.key} (revision ${word.revision})`;
    log.warning(`fleet: cannot reach etcd: ${reason}; ${kept}, and retrying every endpoint`);
    saveCache();
  };

  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  const run = async (client: Etcd) => {
    // Sessions in a row that ended before passing a health read.
    let failures = 0;
    let rereadLogged = false;
    while (!stopped) {
      let outcome: Outcome;
      try {
        outcome = await session(client);
      } catch (error) {
        outcome = { error: error as EtcdError, stable: false };
      }
      if (stopped) return;
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
        offline(outcome.error?.message ?? "the session ended");
        client.rotate();
        // Each endpoint once at once; then, round after round, a growing pause.
        immediate = failures < options.endpoints.length;
      }
      if (immediate) continue;
      const rounds = Math.max(1, Math.floor(failures / options.endpoints.length));
      const backoff = Math.min(timing.maxBackoffMs, timing.backoffMs * 2 ** (rounds - 1));
      await pause(backoff * (0.8 + Math.random() * 0.4));
    }
  };

  return {
    verdict: (name) => (word === undefined ? undefined : fleetVerdict(word, name)),
    version: () => version,
    view() {
      const at = now();
      return {
        keys,
        endpoint: etcd?.endpoint ?? options.endpoints[0]?.origin ?? "",
        connected,
        word:
          word === undefined ? null : { key: word.key, revision: word.revision, state: word.state },
        problem: problem ?? null,
        heardAt: heardAt === undefined ? null : new Date(heardAt).toISOString(),
        heardAgoMs: heardAt === undefined ? null : at - heardAt,
        lostAt: lost === undefined ? null : new Date(lost.at).toISOString(),
        lostReason: lost?.reason ?? null,
        fromCache,
      };
    },
    async start() {
      await cache.removeStaleTemporaries();
      const cached = await readCache(config.cacheFile, keys, log);
      if (cached !== undefined) {
        word = cached.word;
        heardAt = cached.heardAt;
        fromCache = true;
        version++;
        log.notice(
          word === undefined
            ? `fleet: the cache ${config.cacheFile} says no key held a word when etcd was last heard`
            : `fleet: following the cached word until etcd answers: ${word.key} (revision ${word.revision}): ${formatAnswered(word.state)}`,
        );
      }
      etcd = await createEtcd(options);
      const read = new Promise<void>((resolve) => {
        firstRead = resolve;
      });
      void run(etcd);
      // Without a cached word, the first probes should already hear the fleet's: wait a little.
      if (cached === undefined) {
        await Promise.race([
          read,
          new Promise((resolve) => setTimeout(resolve, timing.startWaitMs)),
        ]);
      }
    },
    stop() {
      stopped = true;
      endSession?.();
      wake?.();
      etcd?.close();
    },
  };
}

/** Records read or listed at one revision: a key absent from them was absent then. */
interface Records {
  readonly revision: number;
  readonly records: ReadonlyMap<string, KeyValueRecord | undefined>;
}

const DATA_REPLACED = "etcd holds other values than its watches delivered (its data was replaced)";

/** The error that ends a session whose watch of `key` did not bring `revision` in time. */
function stalledWatch(client: Etcd, [key, revision]: [string, number], ms: number): EtcdError {
  return new EtcdError(
    `${client.endpoint}: the watch of ${key} did not bring a change a read saw ${ms / 1000} s before (revision ${revision}; a stalled stream)`,
    undefined,
    client.endpoint,
  );
}

/** Both unread (too large), or both the same bytes. */
function sameBytes(a: Buffer | undefined, b: Buffer | undefined): boolean {
  return a === undefined || b === undefined ? a === b : a.equals(b);
}

/**
 * The cache's bytes. A read that fails for a fault of the moment (EMFILE, EIO …) is tried again
 * for START_READ_HOLD_MS, as the state file's first read is: giving up on it would forget the
 * fleet's word while etcd is unreachable.
 */
async function readCacheBytes(path: string, log: Logger): Promise<ReadResult> {
  const started = performance.now();
  let read = await readCapped(path, MAX_CACHE_BYTES);
  let attempts = 1;
  for (
    let delayMs = 50;
    !read.ok && isTransientReadError(read.code);
    delayMs = Math.min(2 * delayMs, 1000)
  ) {
    if (attempts === 1) log.warning(`fleet: the cache ${path} ${read.reason}; trying again`);
    const leftMs = START_READ_HOLD_MS - (performance.now() - started);
    if (leftMs <= 0) break;
    await new Promise((resolve) => setTimeout(resolve, Math.min(delayMs, leftMs)));
    read = await readCapped(path, MAX_CACHE_BYTES);
    attempts++;
  }
  if (read.ok && attempts > 1)
    log.notice(
      `fleet: read the cache ${path} after ${attempts - 1} failed attempt${attempts === 2 ? "" : "s"}`,
    );
  return read;
}

/** The cached word, if the cache is the agent's for these keys; undefined otherwise (logged). */
async function readCache(
  path: string,
  keys: readonly string[],
  log: Logger,
): Promise<{ word: FleetWord | undefined; heardAt: number } | undefined> {
  const read = await readCacheBytes(path, log);
  if (!read.ok) {
    if (read.code !== "ENOENT") log.warning(`fleet: the cache ${path} ${read.reason}; not used`);
    return undefined;
  }
  const parsed = parseJsonFile(read.bytes, MAX_CACHE_BYTES);
  const why = parsed.ok ? whyNotCache(parsed.value, keys) : parsed.reason;
  if (why !== undefined) {
    log.warning(`fleet: the cache ${path} is not used: ${why}`);
    return undefined;
  }
  const cache = (parsed as { value: Record<string, unknown> }).value;
  const heardAt = Date.parse(cache.heardAt as string);
  const raw = cache.word as Record<string, unknown> | null;
  if (raw === null) return { word: undefined, heardAt };
  const state = validateState(raw.state);
  if (!state.ok) {
    log.warning(
      `fleet: the cache ${path} is not used: its word is not a valid state: ${state.reason}`,
    );
    return undefined;
  }
  return {
    word: Object.freeze({
      key: raw.key as string,
      revision: raw.revision as number,
      state: state.state,
    }),
    heardAt,
  };
}

function whyNotCache(value: unknown, keys: readonly string[]): string | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "not an object";
  const cache = value as Record<string, unknown>;
  if (cache.format !== CACHE_FORMAT)
    return `format ${String(cache.format)}, expected ${CACHE_FORMAT}`;
  if (
    !Array.isArray(cache.keys) ||
    cache.keys.length !== keys.length ||
    cache.keys.some((key, i) => key !== keys[i])
  ) {
    return `it was kept for other keys (${JSON.stringify(cache.keys)}), not HAPGENT_ETCD_KEYS`;
  }
  if (!isTimestamp(cache.heardAt)) return "heardAt is not a timestamp";
  if (cache.word === null) return undefined;
  const word = cache.word as Record<string, unknown>;
  if (typeof word !== "object" || typeof word.key !== "string" || !keys.includes(word.key)) {
    return "its word names none of the keys";
  }
  if (!Number.isSafeInteger(word.revision) || (word.revision as number) < 1) {
    return "its word has no revision";
  }
  return undefined;
}
