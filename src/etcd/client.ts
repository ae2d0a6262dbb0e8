/**
 * A small etcd v3 client over etcd's JSON gateway (`/v3/…`, served on every client URL since
 * etcd 3.3): reads in one transaction, puts, deletes, leases, and watches that resume from a
 * revision. Node's own http/https carry it; nothing else is loaded. Used by the daemon's fleet
 * layer and `hapgent fleet`. Passwords and tokens never appear in an error or a log line.
 */
import { closeConnection, connect, current, rotate } from "./connection.js";
import type { EtcdError } from "./error.js";
import * as kv from "./kv.js";
import { watch } from "./watch.js";

export { whyTooCostly } from "./decode.js";
export { EtcdError, GRPC } from "./error.js";

export interface EtcdTls {
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

export interface EtcdOptions {
  /** Client URLs, e.g. http://10.0.0.1:2379; tried in turn. */
  readonly endpoints: readonly URL[];
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  readonly tls?: EtcdTls | undefined;
  /** How long a request (not a watch) may take. */
  readonly timeoutMs: number;
}

export interface KeyValueRecord {
  readonly key: string;
  /** Undefined: larger than the read's maxValueBytes, so not read. */
  readonly value: Buffer | undefined;
  readonly modRevision: number;
  readonly lease: string | undefined;
}

export interface Snapshot {
  /** The store's revision the values were read at. */
  readonly revision: number;
  /** Per key asked, its value then; undefined: absent. */
  readonly values: ReadonlyMap<string, KeyValueRecord | undefined>;
}

/** A listing (keys_only): the store's revision, and each key that exists, without its value. */
export interface Listing {
  readonly revision: number;
  readonly found: ReadonlyMap<string, KeyValueRecord>;
}

export interface WatchEvent {
  readonly type: "put" | "delete";
  readonly key: string;
  readonly value: Buffer;
  readonly modRevision: number;
}

export interface WatchHandlers {
  /** The watch exists; etcd's revision then (header). */
  readonly created: (revision: number) => void;
  readonly events: (events: readonly WatchEvent[], revision: number) => void;
  /**
   * The changes since the revision asked for cannot be had (compacted, or one message too large
   * to read): read again, then watch after what was read. 0 when etcd named no revision.
   */
  readonly compacted: (compactRevision: number) => void;
  /** The stream ended or failed; it is closed. Not called after close(). */
  readonly ended: (error: EtcdError) => void;
}

export interface Watch {
  close(): void;
}

export interface Etcd {
  /** The endpoint requests go to now, as text. */
  readonly endpoint: string;
  /** Moves on to the next endpoint. */
  rotate(): void;
  /**
   * Reads `keys` at one revision for all (`at`, or the latest); a value larger than
   * `maxValueBytes` is not read (its record has no value), so one key's value never stops the
   * others'. A revision etcd has compacted fails with GRPC.OUT_OF_RANGE.
   */
  read(keys: readonly string[], maxValueBytes: number, at?: number): Promise<Snapshot>;
  /**
   * Which of `keys` exist, and each one's mod_revision, at one revision: one request, no value
   * (each record's value is undefined). What a periodic check costs etcd.
   */
  list(keys: readonly string[], at?: number): Promise<Listing>;
  put(key: string, value: string, lease?: string): Promise<number>;
  /**
   * Puts `value` only if `key` is still at `modRevision` (0: still absent); resolves with the new
   * revision, or undefined when someone changed the key meanwhile.
   */
  putIfUnchanged(
    key: string,
    value: string,
    modRevision: number,
    lease?: string,
  ): Promise<number | undefined>;
  /** Deletes `key`; resolves with how many keys it removed (0 or 1) and the revision. */
  remove(key: string): Promise<{ deleted: number; revision: number }>;
  /** A lease of `ttlSeconds`: a key put with it is removed when it runs out. */
  grantLease(ttlSeconds: number): Promise<string>;
  /** Watches `key` from `startRevision` on the current endpoint. */
  watch(key: string, startRevision: number, handlers: WatchHandlers): Watch;
  close(): void;
}

/**
 * With `failover`, a request (never a watch) that finds its endpoint dead moves on to the next:
 * what a command wants. The daemon's watcher moves on itself, session by session.
 */
export async function createEtcd(options: EtcdOptions, failover = false): Promise<Etcd> {
  if (options.endpoints.length === 0) throw new Error("no etcd endpoint");
  const conn = await connect(options, failover);
  return {
    get endpoint() {
      return current(conn).origin;
    },
    rotate() {
      rotate(conn);
    },
    list: (keys, at) => kv.list(conn, keys, at),
    read: (keys, maxValueBytes, at) => kv.read(conn, keys, maxValueBytes, at),
    put: (key, value, lease) => kv.put(conn, key, value, lease),
    putIfUnchanged: (key, value, modRevision, lease) =>
      kv.putIfUnchanged(conn, key, value, modRevision, lease),
    remove: (key) => kv.remove(conn, key),
    grantLease: (ttlSeconds) => kv.grantLease(conn, ttlSeconds),
    watch: (key, startRevision, handlers) => watch(conn, key, startRevision, handlers),
    close() {
      closeConnection(conn);
    },
  };
}
