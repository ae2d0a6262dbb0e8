/**
 * etcd's JSON replies read into records: every field checked for the shape etcd gives it, and
 * no text parsed that could take the small heap past its end.
 */
import type { KeyValueRecord, Listing, WatchEvent } from "./client.js";
import { EtcdError } from "./error.js";

/**
 * How deep etcd's replies nest: a read is reply > responses > response > range > kvs > kv (6), a
 * watch message result > events > event > kv (5). Bytes that nest deeper are not etcd's, and
 * 2 MiB of `[[[…` would take JSON.parse past the heap.
 */
const MAX_JSON_DEPTH = 16;
/**
 * Values in one reply or message (bounded by its opening brackets and commas). etcd sends a
 * dozen per key read or event, and at most 1,000 revisions' events in one watch message; 20,000
 * values of any shape within MAX_REPLY_BYTES parse in a few MiB, where 690,000 `[]` would not.
 */
const MAX_JSON_VALUES = 20_000;

export const b64 = (text: string) => Buffer.from(text, "utf8").toString("base64");

/** A reply that is JSON but not of etcd's shape: whoever answered is not etcd, or is broken. */
export class Malformed extends Error {}

/** The value of `make()`, or an EtcdError saying `origin` did not answer as etcd does. */
export function shaped<T>(origin: string, make: () => T): T {
  try {
    return make();
  } catch (err) {
    if (!(err instanceof Malformed)) throw err;
    throw new EtcdError(`${origin}: not etcd's answer (${err.message})`, undefined, origin);
  }
}

/** etcd's 64-bit integers come as decimal strings; a revision is at least 1. */
export function revisionText(value: unknown, what: string): number {
  const n = typeof value === "string" && /^[0-9]{1,15}$/.test(value) ? Number(value) : Number.NaN;
  if (!(n >= 1)) throw new Malformed(`${what} is not a revision`);
  return n;
}

export function objectOf(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Malformed(`${what} is not an object`);
  }
  return value as Record<string, unknown>;
}

export function revisionOf(reply: Record<string, unknown>): number {
  return revisionText(objectOf(reply.header, "header").revision, "header.revision");
}

/** etcd leaves out empty fields: an absent value is an empty one. */
function base64Field(value: unknown, what: string): Buffer {
  if (value === undefined) return Buffer.alloc(0);
  if (typeof value !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) {
    throw new Malformed(`${what} is not base64`);
  }
  return Buffer.from(value, "base64");
}

export function record(value: unknown): KeyValueRecord & { readonly value: Buffer } {
  const kv = objectOf(value, "kv");
  return {
    key: base64Field(kv.key, "kv.key").toString("utf8"),
    value: base64Field(kv.value, "kv.value"),
    modRevision: revisionText(kv.mod_revision, "kv.mod_revision"),
    lease: typeof kv.lease === "string" && kv.lease !== "0" ? kv.lease : undefined,
  };
}

export function event(value: unknown): WatchEvent {
  const raw = objectOf(value, "event");
  const kv = record(raw.kv);
  return {
    type: raw.type === "DELETE" ? "delete" : "put",
    key: kv.key,
    value: kv.value,
    modRevision: kv.modRevision,
  };
}

/** A JSON object, if `text` is one (and not too costly to parse: see whyTooCostly). */
export function parseObject(text: string): Record<string, unknown> | undefined {
  if (whyTooCostly(text) !== undefined) return undefined;
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Why JSON.parse must not be given `text`: it nests deeper than MAX_JSON_DEPTH or holds more
 * than MAX_JSON_VALUES values, which no reply of etcd's for these keys does and which could take
 * the small heap past its end. One pass over the characters, outside strings only.
 */
export function whyTooCostly(text: string): string | undefined {
  let depth = 0;
  let values = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // A string: skip to its closing quote, past escaped characters.
      for (i++; i < text.length && text.charCodeAt(i) !== 0x22; i++) {
        if (text.charCodeAt(i) === 0x5c) i++;
      }
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > MAX_JSON_DEPTH) return `it nests deeper than ${MAX_JSON_DEPTH} levels`;
      if (++values > MAX_JSON_VALUES) return `it holds more than ${MAX_JSON_VALUES} values`;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    } else if (c === 0x2c && ++values > MAX_JSON_VALUES) {
      return `it holds more than ${MAX_JSON_VALUES} values`;
    }
  }
  return undefined;
}

/** A read's listing (keys_only): its revision, and each key that exists, without its value. */
export function listing(reply: Record<string, unknown>, keys: readonly string[]): Listing {
  const revision = revisionOf(reply);
  const responses = reply.responses;
  if (!Array.isArray(responses) || responses.length !== keys.length) {
    throw new Malformed(`${keys.length} responses expected`);
  }
  const found = new Map<string, KeyValueRecord>();
  keys.forEach((key, i) => {
    const range = objectOf(objectOf(responses[i], "response").response_range, "range");
    const kvs = range.kvs ?? [];
    if (!Array.isArray(kvs) || kvs.length > 1) throw new Malformed("kvs is not one key");
    if (kvs.length === 0) return;
    const kv = record(kvs[0]);
    if (kv.key !== key) throw new Malformed("another key came back");
    found.set(key, { ...kv, value: undefined });
  });
  return { revision, found };
}
