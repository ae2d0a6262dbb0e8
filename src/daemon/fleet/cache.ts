/**
 * The fleet's cache: the word last followed, kept in a file so that a restart while etcd cannot be
 * reached keeps it too.
 */
import type { FleetEntry } from "../../core/fleet.js";
import { parseJsonFile } from "../../core/json.js";
import { formatAnswered, isTimestamp, validateState } from "../../core/state.js";
import type { Logger } from "../../log.js";
import { isTransientReadError, type ReadResult, readCapped } from "../../store.js";
import { START_READ_HOLD_MS } from "../operator.js";
import type { Fleet } from "./follow.js";

/** A cache larger than this was not written by the agent. */
const MAX_CACHE_BYTES = 256 * 1024;
const CACHE_FORMAT = 1;

function cacheText(fleet: Fleet): string {
  const { entry, heardAt } = fleet;
  return `${JSON.stringify({
    format: CACHE_FORMAT,
    keys: fleet.keys,
    word: entry === undefined ? null : entry,
    heardAt: new Date(heardAt ?? fleet.now()).toISOString(),
  })}\n`;
}

/**
 * Saves the word now followed, once; fleet.cacheSaves runs it, so a burst of changes costs one
 * save at a time, the last wins.
 */
export async function saveCache(fleet: Fleet): Promise<void> {
  if (fleet.stopped) return;
  const { cache, config, log } = fleet;
  try {
    await cache.save(cacheText(fleet));
    if (fleet.saveFailed) log.notice(`fleet: saved the cache ${config.cacheFile} again`);
    fleet.saveFailed = false;
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    if (!fleet.saveFailed) {
      log.warning(
        `fleet: cannot save the cache ${config.cacheFile} (${code === "EPERM" ? message : (code ?? message)}); a restart while etcd is unreachable would not know the fleet's word`,
      );
    }
    fleet.saveFailed = true;
  }
}

/**
 * Follows the cached word until etcd answers, if the cache is the agent's for these keys; whether
 * it was.
 */
export async function followCache(fleet: Fleet): Promise<boolean> {
  const { config, log } = fleet;
  await fleet.cache.removeStaleTemporaries();
  const cached = await readCache(config.cacheFile, fleet.keys, log);
  if (cached === undefined) return false;
  const { entry } = cached;
  fleet.entry = entry;
  fleet.heardAt = cached.heardAt;
  fleet.fromCache = true;
  fleet.generation++;
  log.notice(
    entry === undefined
      ? `fleet: the cache ${config.cacheFile} says no key held a word when etcd was last heard`
      : `fleet: following the cached word until etcd answers: ${entry.key} (revision ${entry.revision}): ${formatAnswered(entry.state)}`,
  );
  return true;
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
): Promise<{ entry: FleetEntry | undefined; heardAt: number } | undefined> {
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
  if (raw === null) return { entry: undefined, heardAt };
  const state = validateState(raw.state);
  if (!state.ok) {
    log.warning(
      `fleet: the cache ${path} is not used: its word is not a valid state: ${state.reason}`,
    );
    return undefined;
  }
  return {
    entry: Object.freeze({
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
  const entry = cache.word as Record<string, unknown>;
  if (typeof entry !== "object" || typeof entry.key !== "string" || !keys.includes(entry.key)) {
    return "its word names none of the keys";
  }
  if (!Number.isSafeInteger(entry.revision) || (entry.revision as number) < 1) {
    return "its word has no revision";
  }
  return undefined;
}
