/**
 * A small etcd v3 client over etcd's JSON gateway (`/v3/…`, served on every client URL since
 * etcd 3.3): reads in one transaction, puts, deletes, leases, and watches that resume from a
 * revision. Node's own http/https carry it; nothing else is loaded. Used by the daemon's fleet
 * layer and `hapgent fleet`. Passwords and tokens never appear in an error or a log line.
 */
import type { ClientRequest, Agent as HttpAgent, IncomingMessage } from "node:http";
import {
  b64,
  event,
  listing,
  Malformed,
  objectOf,
  parseObject,
  record,
  revisionOf,
  revisionText,
  shaped,
  whyTooCostly,
} from "./decode.js";
import { EtcdError, GRPC, isTokenError, isTokenText } from "./error.js";

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
 * A gateway reply larger than this is not one the agent reads (the agent runs in a small heap:
 * main.js's flags); a read of one key's value is capped lower, by what the value may be.
 */
const MAX_REPLY_BYTES = 2 * 1024 * 1024;
/**
 * One watch message larger than this (a watch resumed after many large changes) is not parsed:
 * the keys are read afresh instead, as after a compaction.
 */
const MAX_WATCH_LINE_BYTES = 1024 * 1024;
/** How long a watch's connection may stay silent before TCP checks that its peer is there. */
const WATCH_KEEPALIVE_MS = 5000;
/** A one-key range reply beside its value's base64: header, key, revisions, lease. */
const VALUE_REPLY_OVERHEAD_BYTES = 2048;

/**
 * With `failover`, a request (never a watch) that finds its endpoint dead moves on to the next:
 * what a command wants. The daemon's watcher moves on itself, session by session.
 */
export async function createEtcd(options: EtcdOptions, failover = false): Promise<Etcd> {
  if (options.endpoints.length === 0) throw new Error("no etcd endpoint");
  const http = await import("node:http");
  const https = options.endpoints.some((u) => u.protocol === "https:")
    ? await import("node:https")
    : undefined;
  const agents = new Map<string, HttpAgent>();
  const agentFor = (url: URL): HttpAgent => {
    let agent = agents.get(url.origin);
    if (agent === undefined) {
      agent =
        url.protocol === "https:" && https !== undefined
          ? new https.Agent({ keepAlive: true, maxSockets: 64, ...options.tls })
          : new http.Agent({ keepAlive: true, maxSockets: 64 });
      agents.set(url.origin, agent);
    }
    return agent;
  };
  let index = 0;
  let token: string | undefined;
  let authenticating: Promise<string> | undefined;

  const current = (): URL => options.endpoints[index % options.endpoints.length] as URL;

  /** A POST of `body` to `path` on `url`, as JSON; the caller reads the response. */
  const open = (
    url: URL,
    path: string,
    headers: Record<string, string>,
    body: unknown,
    onResponse: (response: IncomingMessage) => void,
  ): ClientRequest => {
    const request = (url.protocol === "https:" && https !== undefined ? https : http).request(
      new URL(path, url),
      {
        method: "POST",
        agent: agentFor(url),
        headers: { "content-type": "application/json", ...headers },
      },
      onResponse,
    );
    request.end(JSON.stringify(body));
    return request;
  };

  /**
   * One POST to the current endpoint; resolves with the reply's JSON, within the timeout. A reply
   * larger than `maxBytes` fails with `tooLarge`.
   */
  const post = (
    path: string,
    body: unknown,
    headers: Record<string, string>,
    maxBytes = MAX_REPLY_BYTES,
  ): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const url = current();
      const fail = (message: string, code?: number, tooLarge = false) =>
        reject(new EtcdError(message, code, url.origin, tooLarge));
      const request = open(url, path, headers, body, (response) => {
        readReply(response, maxBytes).then(
          (text) => {
            const costly = whyTooCostly(text);
            if (costly !== undefined) {
              return fail(`${url.origin}${path}: not etcd's answer, left unparsed: ${costly}`);
            }
            const parsed = parseObject(text);
            if (parsed === undefined) {
              return fail(`${url.origin}${path}: HTTP ${response.statusCode}, not etcd's JSON`);
            }
            if (response.statusCode !== 200 || typeof parsed.error === "string") {
              const code = typeof parsed.code === "number" ? parsed.code : -1;
              return fail(`${url.origin}: ${String(parsed.error ?? parsed.message)}`, code);
            }
            resolve(parsed);
          },
          (err: Error) => fail(`${url.origin}: ${err.message}`, undefined, err instanceof TooLarge),
        );
      });
      // The whole exchange, connecting included, not only a silent socket.
      const deadline = setTimeout(() => {
        request.destroy(new Error(`no answer within ${options.timeoutMs} ms`));
      }, options.timeoutMs);
      request.on("close", () => clearTimeout(deadline));
      request.on("error", (err: NodeJS.ErrnoException) =>
        fail(`${url.origin}: ${err.code ?? err.message}`, undefined, err instanceof TooLarge),
      );
    });

  const authenticate = async (): Promise<string> => {
    const reply = await post(
      "/v3/auth/authenticate",
      { name: options.username, password: options.password },
      {},
    );
    if (typeof reply.token !== "string" || reply.token === "") {
      throw new EtcdError(
        `${current().origin}: authentication gave no token`,
        -1,
        current().origin,
      );
    }
    return reply.token;
  };

  const authHeaders = async (): Promise<Record<string, string>> => {
    if (options.username === undefined) return {};
    if (token === undefined) {
      authenticating ??= authenticate().finally(() => {
        authenticating = undefined;
      });
      token = await authenticating;
    }
    return { authorization: token };
  };

  /**
   * A call with the token; an expired token (etcd's simple tokens last minutes) is renewed once.
   * With `failover`, an endpoint that does not answer hands the call to the next, once each.
   */
  const call = async (
    path: string,
    body: unknown,
    maxBytes?: number,
  ): Promise<Record<string, unknown>> => {
    if (!failover) return callOnce(path, body, maxBytes);
    for (let tried = 1; ; tried++) {
      try {
        return await callOnce(path, body, maxBytes);
      } catch (err) {
        if (
          !(err instanceof EtcdError) ||
          err.answered ||
          err.tooLarge ||
          tried >= options.endpoints.length
        ) {
          throw err;
        }
        index = (index + 1) % options.endpoints.length;
        token = undefined;
      }
    }
  };

  const callOnce = async (
    path: string,
    body: unknown,
    maxBytes?: number,
  ): Promise<Record<string, unknown>> => {
    try {
      return await post(path, body, await authHeaders(), maxBytes);
    } catch (err) {
      if (!(err instanceof EtcdError) || !isTokenError(err) || options.username === undefined) {
        throw err;
      }
      token = undefined;
      return post(path, body, await authHeaders(), maxBytes);
    }
  };

  /** `known`'s value at `revision`, unless its reply is larger than such a value can need. */
  const valueAt = async (
    known: KeyValueRecord,
    revision: number,
    maxValueBytes: number,
  ): Promise<KeyValueRecord> => {
    let reply: Record<string, unknown>;
    try {
      reply = await call(
        "/v3/kv/range",
        { key: b64(known.key), revision: String(revision) },
        Math.ceil(maxValueBytes / 3) * 4 + VALUE_REPLY_OVERHEAD_BYTES,
      );
    } catch (err) {
      if (err instanceof EtcdError && err.tooLarge) return known;
      throw err;
    }
    const value = shaped(current().origin, () => {
      const kvs = reply.kvs ?? [];
      if (!Array.isArray(kvs) || kvs.length !== 1) throw new Malformed("kvs is not one key");
      const kv = record(kvs[0]);
      if (kv.key !== known.key || kv.modRevision !== known.modRevision) {
        throw new Malformed("another key or revision came back");
      }
      return kv.value;
    });
    return value !== undefined && value.length > maxValueBytes ? known : { ...known, value };
  };

  const list = async (keys: readonly string[], at?: number): Promise<Listing> => {
    const listed = await call("/v3/kv/txn", {
      success: keys.map((key) => ({
        request_range: {
          key: b64(key),
          keys_only: true,
          ...(at === undefined ? {} : { revision: String(at) }),
        },
      })),
    });
    return shaped(current().origin, () => listing(listed, keys));
  };

  return {
    get endpoint() {
      return current().origin;
    },
    rotate() {
      index = (index + 1) % options.endpoints.length;
      token = undefined;
    },
    list,
    async read(keys, maxValueBytes, at) {
      // Which keys exist, at one revision, without their values; then each value at that
      // revision, alone and capped: etcd allows values of 1.5 MiB, 16 of which no reply can hold.
      for (let attempt = 1; ; attempt++) {
        const shape = await list(keys, at);
        const { found } = shape;
        const revision = at ?? shape.revision;
        try {
          // One after another, on the one connection reads keep.
          const values = new Map<string, KeyValueRecord | undefined>();
          for (const key of keys) {
            const known = found.get(key);
            values.set(key, known && (await valueAt(known, revision, maxValueBytes)));
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
    },
    async put(key, value, lease) {
      const reply = await call("/v3/kv/put", {
        key: b64(key),
        value: b64(value),
        ...(lease === undefined ? {} : { lease }),
      });
      return shaped(current().origin, () => revisionOf(reply));
    },
    async putIfUnchanged(key, value, modRevision, lease) {
      const compare =
        modRevision === 0
          ? { key: b64(key), target: "VERSION", result: "EQUAL", version: "0" }
          : { key: b64(key), target: "MOD", result: "EQUAL", mod_revision: String(modRevision) };
      const reply = await call("/v3/kv/txn", {
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
        ? shaped(current().origin, () => revisionOf(reply))
        : undefined;
    },
    async remove(key) {
      const reply = await call("/v3/kv/deleterange", { key: b64(key) });
      return shaped(current().origin, () => ({
        deleted: reply.deleted === "1" ? 1 : 0,
        revision: revisionOf(reply),
      }));
    },
    async grantLease(ttlSeconds) {
      const reply = await call("/v3/lease/grant", { TTL: String(ttlSeconds) });
      if (typeof reply.ID !== "string") {
        throw new EtcdError(`${current().origin}: lease grant gave no ID`, -1, current().origin);
      }
      return reply.ID;
    },
    watch(key, startRevision, handlers) {
      const url = current();
      let closed = false;
      let request: ReturnType<typeof http.request> | undefined;
      const end = (message: string, code?: number) => {
        if (closed) return;
        closed = true;
        request?.destroy();
        handlers.ended(new EtcdError(message, code, url.origin));
      };
      /** One message of the stream; throws on one that is not etcd's. */
      const watchMessage = (line: string) => {
        const costly = whyTooCostly(line);
        if (costly !== undefined) throw new Malformed(`left unparsed: ${costly}`);
        const message = parseObject(line);
        if (message === undefined) throw new Malformed("not JSON");
        if (message.error !== undefined) {
          const error = objectOf(message.error, "error");
          const text = typeof error.message === "string" ? error.message : "error";
          if (isTokenText(text)) token = undefined;
          return end(
            `${url.origin}: watch: ${text}`,
            typeof error.grpc_code === "number" ? error.grpc_code : -1,
          );
        }
        const result = objectOf(message.result, "result");
        if (result.compact_revision !== undefined && result.compact_revision !== "0") {
          closed = true;
          request?.destroy();
          return handlers.compacted(revisionText(result.compact_revision, "compact_revision"));
        }
        if (result.canceled === true) {
          return end(
            `${url.origin}: watch canceled${typeof result.cancel_reason === "string" ? `: ${result.cancel_reason}` : ""}`,
            -1,
          );
        }
        const revision = revisionOf(result);
        const raw = result.events ?? [];
        if (!Array.isArray(raw)) throw new Malformed("events is not a list");
        const events = raw.map(event);
        if (result.created === true) handlers.created(revision);
        if (events.length > 0) handlers.events(events, revision);
      };
      authHeaders().then(
        (headers) => {
          if (closed) return;
          const body = {
            create_request: { key: b64(key), start_revision: String(startRevision) },
          };
          request = open(url, "/v3/watch", headers, body, (response) => {
            clearTimeout(deadline);
            if (response.statusCode !== 200) {
              readReply(response, MAX_REPLY_BYTES).then(
                (text) => {
                  const parsed = parseObject(text);
                  if (parsed !== undefined && isTokenText(String(parsed.error ?? ""))) {
                    token = undefined;
                  }
                  end(
                    `${url.origin}: watch: HTTP ${response.statusCode}${parsed?.error === undefined ? "" : `: ${String(parsed.error)}`}`,
                    typeof parsed?.code === "number" ? parsed.code : -1,
                  );
                },
                (err: Error) => end(`${url.origin}: watch: ${err.message}`),
              );
              return;
            }
            readLines(
              response,
              MAX_WATCH_LINE_BYTES,
              (line) => {
                if (closed) return;
                try {
                  watchMessage(line);
                } catch (err) {
                  end(
                    `${url.origin}: watch: not etcd's answer (${err instanceof Malformed ? err.message : String(err)})`,
                  );
                }
              },
              () => {
                // Too much at once to read in this heap: read the keys afresh.
                if (closed) return;
                closed = true;
                request?.destroy();
                handlers.compacted(0);
              },
            ).then(
              () => end(`${url.origin}: watch: etcd closed the stream`),
              (err: Error) => end(`${url.origin}: watch: ${err.message}`),
            );
          });
          // Until etcd answers the request; the stream itself may stay quiet for hours.
          const deadline = setTimeout(() => {
            request?.destroy(new Error(`no answer within ${options.timeoutMs} ms`));
          }, options.timeoutMs);
          request.on("close", () => clearTimeout(deadline));
          request.on("error", (err: NodeJS.ErrnoException) =>
            end(`${url.origin}: watch: ${err.code ?? err.message}`),
          );
          // A flow a NAT or firewall forgot while the watch was quiet ends in a few seconds of
          // unanswered probes, not at the next change.
          request.on("socket", (socket) => socket.setKeepAlive(true, WATCH_KEEPALIVE_MS));
        },
        (err: unknown) =>
          end(err instanceof Error ? err.message : String(err), (err as EtcdError).code),
      );
      return {
        close() {
          closed = true;
          request?.destroy();
        },
      };
    },
    close() {
      for (const agent of agents.values()) agent.destroy();
    },
  };
}

class TooLarge extends Error {}

/** The reply's body as text, at most `max` bytes. */
function readReply(response: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    response.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) response.destroy(new TooLarge(`reply larger than ${max} bytes`));
      else chunks.push(chunk);
    });
    response.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    response.on("error", reject);
    response.on("close", () => {
      if (!response.complete) reject(new Error("connection closed mid-reply"));
    });
  });
}

/**
 * Calls `line` with each newline-ended line of a stream; resolves when it ends. A line longer
 * than `max` bytes is never gathered: `tooLong` is called and the stream ends.
 */
function readLines(
  response: IncomingMessage,
  max: number,
  line: (text: string) => void,
  tooLong: () => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let pending: Buffer[] = [];
    let size = 0;
    const over = () => {
      response.destroy();
      tooLong();
      resolve();
    };
    response.on("data", (chunk: Buffer) => {
      let start = 0;
      for (let at = chunk.indexOf(10); at !== -1; at = chunk.indexOf(10, start)) {
        if (size + (at - start) > max) return over();
        pending.push(chunk.subarray(start, at));
        const text = Buffer.concat(pending).toString("utf8");
        pending = [];
        size = 0;
        start = at + 1;
        line(text);
        if (response.destroyed) return;
      }
      if (start < chunk.length) {
        pending.push(chunk.subarray(start));
        size += chunk.length - start;
        if (size > max) over();
      }
    });
    response.on("end", resolve);
    response.on("error", reject);
    response.on("close", () => {
      if (!response.complete) reject(new Error("connection closed"));
      else resolve();
    });
  });
}
