/**
 * What the fleet's layer follows: each key's value as etcd gave it, the revisions applied, the
 * word they decide, and whether etcd is heard. One object, which the functions of fleet/ take.
 */
import type { FleetConfig } from "../../config.js";
import {
  chooseEntry,
  type FleetEntry,
  type KeyValue,
  parseFleetValue,
  readValue,
} from "../../core/fleet.js";
import { formatAnswered } from "../../core/state.js";
import type { Etcd, EtcdOptions, KeyValueRecord, Snapshot, WatchEvent } from "../../etcd/client.js";
import type { Logger } from "../../log.js";
import type { TextFile } from "../../store.js";
import type { SaveQueue } from "../saves.js";
import type { FleetTiming } from "./layer.js";

export interface Fleet {
  readonly config: FleetConfig;
  readonly keys: readonly string[];
  readonly options: EtcdOptions;
  readonly log: Logger;
  /** Where the word is cached (config.cacheFile; for root, guarded as the state file is). */
  readonly cache: TextFile;
  readonly now: () => number;
  readonly timing: FleetTiming;
  readonly values: Map<string, KeyValue>;
  /** Per key, the revision up to which its changes are applied: a watch resumes after it. */
  readonly applied: Map<string, number>;
  /**
   * Per key, the bytes and revision last applied (null: absent; no value: too large to read), to
   * check etcd against.
   */
  readonly seen: Map<
    string,
    { readonly modRevision: number; readonly value: Buffer | undefined } | null
  >;
  /** One save at a time; changes meanwhile are written together by the next. */
  readonly cacheSaves: SaveQueue;
  etcd: Etcd | undefined;
  /** The key that speaks for this host, at its revision, and its state: the fleet's word. */
  entry: FleetEntry | undefined;
  problem: string | undefined;
  generation: number;
  connected: boolean;
  fromCache: boolean;
  heardAt: number | undefined;
  lost: { readonly at: number; readonly reason: string } | undefined;
  needRead: boolean;
  /** A watch did not bring a change a read saw: read at each session's start until one works. */
  stalled: boolean;
  stopped: boolean;
  endSession: (() => void) | undefined;
  wake: (() => void) | undefined;
  firstRead: (() => void) | undefined;
  /** The last save of the cache failed: the next that works is logged. */
  saveFailed: boolean;
}

export function heard(fleet: Fleet): void {
  fleet.heardAt = fleet.now();
}

/** Decides the word from the values; logs and caches what changed. */
export function decide(fleet: Fleet, cause: string): void {
  const { keys, log } = fleet;
  const chosen = chooseEntry(keys, fleet.values, fleet.entry);
  if (chosen.problem !== fleet.problem) {
    fleet.problem = chosen.problem;
    if (fleet.problem !== undefined) log.warning(`fleet: ${fleet.problem}`);
  }
  if (chosen.entry === fleet.entry) return;
  const entry = chosen.entry;
  fleet.entry = entry;
  fleet.fromCache = false;
  fleet.generation++;
  if (entry === undefined) {
    log.notice(
      `fleet: ${cause}: no key holds a word (${keys.join(", ")}); the operator's state alone decides`,
    );
  } else {
    log.notice(
      `fleet: ${cause}: following ${entry.key} (revision ${entry.revision}): ${formatAnswered(entry.state)}`,
    );
  }
  fleet.cacheSaves.request();
}

export function applyRead(fleet: Fleet, snapshot: Snapshot): void {
  for (const key of fleet.keys) {
    const record = snapshot.values.get(key);
    fleet.values.set(key, readValue(record, snapshot.revision));
    fleet.seen.set(key, record ?? null);
    fleet.applied.set(key, snapshot.revision);
  }
  heard(fleet);
  // What etcd says now, even where it is what the cache said.
  fleet.fromCache = false;
  decide(fleet, `read at revision ${snapshot.revision}`);
}

/** The events of a watch of `key`, each change in its order, as the history says it. */
export function applyEvents(fleet: Fleet, key: string, events: readonly WatchEvent[]): void {
  // A resumed watch delivers all that happened while it was away, in one message.
  for (const event of events) {
    if (event.key !== key || event.modRevision <= (fleet.applied.get(key) ?? 0)) continue;
    fleet.applied.set(key, event.modRevision);
    fleet.seen.set(
      key,
      event.type === "delete" ? null : { modRevision: event.modRevision, value: event.value },
    );
    fleet.values.set(
      key,
      event.type === "delete"
        ? { kind: "absent", revision: event.modRevision }
        : parseFleetValue(event.value, event.modRevision),
    );
    decide(fleet, `${key} changed at revision ${event.modRevision}`);
  }
}

/** Records read or listed at one revision: a key absent from them was absent then. */
export interface Records {
  readonly revision: number;
  readonly records: ReadonlyMap<string, KeyValueRecord | undefined>;
}

export const DATA_REPLACED =
  "etcd holds other values than its watches delivered (its data was replaced)";

/**
 * Whether etcd holds, at revisions the watches have passed, other keys than they delivered
 * (with `bytes`, other values too): its data was replaced (restored from a backup, made anew)
 * under the same revisions. A read older than what a watch applied since says nothing of it.
 */
export function differs(fleet: Fleet, at: Records, bytes: boolean): boolean {
  return fleet.keys.some((key) => {
    const theirs = at.records.get(key);
    const mine = fleet.seen.get(key);
    const upTo = fleet.applied.get(key) ?? 0;
    if (at.revision < upTo) return false;
    if (theirs === undefined) return at.revision === upTo && mine != null;
    if (theirs.modRevision > upTo) return false;
    return (
      mine == null ||
      mine.modRevision !== theirs.modRevision ||
      (bytes && !sameBytes(mine.value, theirs.value))
    );
  });
}

/** Per key, the revision of a change etcd holds and the watches have not applied. */
export function ahead(fleet: Fleet, at: Records): Map<string, number> {
  const owed = new Map<string, number>();
  for (const key of fleet.keys) {
    const theirs = at.records.get(key);
    const upTo = fleet.applied.get(key) ?? 0;
    if (theirs !== undefined && theirs.modRevision > upTo) owed.set(key, theirs.modRevision);
    // Deleted after what was applied (at a revision up to the read's): any later one will do.
    if (theirs === undefined && fleet.seen.get(key) != null && at.revision > upTo) {
      owed.set(key, upTo + 1);
    }
  }
  return owed;
}

/** Both unread (too large), or both the same bytes. */
function sameBytes(a: Buffer | undefined, b: Buffer | undefined): boolean {
  return a === undefined || b === undefined ? a === b : a.equals(b);
}

/** A session that passed a health read: the outage, if any, is over. */
export function reconnected(fleet: Fleet): void {
  const { keys, lost } = fleet;
  if (lost === undefined) return;
  fleet.log.notice(
    `fleet: etcd at ${fleet.etcd?.endpoint} answers again after ${Math.round((fleet.now() - lost.at) / 1000)} s; watching ${keys.length} key${keys.length === 1 ? "" : "s"} from the revisions last seen`,
  );
  fleet.lost = undefined;
}

export function offline(fleet: Fleet, reason: string): void {
  // Once per outage: sessions that end before they prove themselves are the same outage.
  if (fleet.lost !== undefined) return;
  fleet.lost = { at: fleet.now(), reason };
  const { entry } = fleet;
  const kept =
    entry === undefined
      ? "no fleet word is followed"
      : `keeping the fleet's last word, ${entry.key} (revision ${entry.revision})`;
  fleet.log.warning(`fleet: cannot reach etcd: ${reason}; ${kept}, and retrying every endpoint`);
  fleet.cacheSaves.request();
}
