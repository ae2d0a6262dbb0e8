/** The key-value requests: reads at one revision, listings, puts, deletes and leases. */
import type { KeyValueRecord, Listing, Snapshot } from "./client.js";
import { type Connection, call, current } from "./connection.js";
import { b64, listing, Malformed, record, revisionOf, shaped } from "./decode.js";
import { EtcdError, GRPC } from "./error.js";

/** A one-key range reply beside its value's base64: header, key, revisions, lease. */
const VALUE_REPLY_OVERHEAD_BYTES = 2048;

/** `known`'s value at `revision`, unless its reply is larger than such a value can need. */
async function valueAt(
  conn: Connection,
  known: KeyValueRecord,
  revision: number,
  maxValueBytes: number,
): Promise<KeyValueRecord> {
  let reply: Record<string, unknown>;
  try {
    reply = await call(
      conn,
      "/v3/kv/range",
      { key: b64(known.key), revision: String(revision) },
      Math.ceil(maxValueBytes / 3) * 4 + VALUE_REPLY_OVERHEAD_BYTES,
    );
  } catch (err) {
    if (err instanceof EtcdError && err.tooLarge) return known;
    throw err;
  }
  const value = shaped(current(conn).origin, () => {
    const kvs = reply.kvs ?? [];
    if (!Array.isArray(kvs) || kvs.length !== 1) throw new Malformed("kvs is not one key");
    const kv = record(kvs[0]);
    if (kv.key !== known.key || kv.modRevision !== known.modRevision) {
      throw new Malformed("another key or revision came back");
    }
    return kv.value;
  });
  return value !== undefined && value.length > maxValueBytes ? known : { ...known, value };
}

export async function list(
  conn: Connection,
  keys: readonly string[],
  at?: number,
): Promise<Listing> {
  const listed = await call(conn, "/v3/kv/txn", {
    success: keys.map((key) => ({
      request_range: {
        key: b64(key),
        keys_only: true,
        ...(at === undefined ? {} : { revision: String(at) }),
      },
    })),
  });
  return shaped(current(conn).origin, () => listing(listed, keys));
}

export async function read(
  conn: Connection,
  keys: readonly string[],
  maxValueBytes: number,
  at?: number,
): Promise<Snapshot> {
  // Which keys exist, at one revision, without their values; then each value at that
  // revision, alone and capped: etcd allows values of 1.5 MiB, 16 of which no reply can hold.
  for (let attempt = 1; ; attempt++) {
    const shape = await list(conn, keys, at);
    const { found } = shape;
    const revision = at ?? shape.revision;
    try {
      // One after another, on the one connection reads keep.
      const values = new Map<string, KeyValueRecord | undefined>();
      for (const key of keys) {
        const known = found.get(key);
        values.set(key, known && (await valueAt(conn, known, revision, maxValueBytes)));
      }
      return { revision, values };
    } catch (err) {
      // Compacted between the two steps: list again at a revision etcd still has.
      if (
        !(err instanceof EtcdError) ||
        err.code !== GRPC.OUT_OF_RANGE ||
        at !== undefined ||
        attempt >= 3
      ) {
        throw err;
      }
    }
  }
}

export async function put(
  conn: Connection,
  key: string,
  value: string,
  lease?: string,
): Promise<number> {
  const reply = await call(conn, "/v3/kv/put", {
    key: b64(key),
    value: b64(value),
    ...(lease === undefined ? {} : { lease }),
  });
  return shaped(current(conn).origin, () => revisionOf(reply));
}

export async function putIfUnchanged(
  conn: Connection,
  key: string,
  value: string,
  modRevision: number,
  lease?: string,
): Promise<number | undefined> {
  const compare =
    modRevision === 0
      ? { key: b64(key), target: "VERSION", result: "EQUAL", version: "0" }
      : { key: b64(key), target: "MOD", result: "EQUAL", mod_revision: String(modRevision) };
  const reply = await call(conn, "/v3/kv/txn", {
    compare: [compare],
    success: [
      {
        request_put: {
          key: b64(key),
          value: b64(value),
          ...(lease === undefined ? {} : { lease }),
        },
      },
    ],
  });
  return reply.succeeded === true
    ? shaped(current(conn).origin, () => revisionOf(reply))
    : undefined;
}

export async function remove(
  conn: Connection,
  key: string,
): Promise<{ deleted: number; revision: number }> {
  const reply = await call(conn, "/v3/kv/deleterange", { key: b64(key) });
  return shaped(current(conn).origin, () => ({
    deleted: reply.deleted === "1" ? 1 : 0,
    revision: revisionOf(reply),
  }));
}

export async function grantLease(conn: Connection, ttlSeconds: number): Promise<string> {
  const reply = await call(conn, "/v3/lease/grant", { TTL: String(ttlSeconds) });
  if (typeof reply.ID !== "string") {
    throw new EtcdError(
      `${current(conn).origin}: lease grant gave no ID`,
      -1,
      current(conn).origin,
    );
  }
  return reply.ID;
}
