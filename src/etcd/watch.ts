/**
 * A watch of one key: a stream of etcd's messages, one per line, read as they come, on a
 * connection TCP keeps checking while the key stays quiet.
 */
import type { ClientRequest, IncomingMessage } from "node:http";
import type { Watch, WatchHandlers } from "./client.js";
import {
  authHeaders,
  type Connection,
  current,
  MAX_REPLY_BYTES,
  open,
  readReply,
} from "./connection.js";
import {
  b64,
  event,
  Malformed,
  objectOf,
  parseObject,
  revisionOf,
  revisionText,
  whyTooCostly,
} from "./decode.js";
import { EtcdError, isTokenText } from "./error.js";

/**
 * One watch message larger than this (a watch resumed after many large changes) is not parsed:
 * the keys are read afresh instead, as after a compaction.
 */
const MAX_WATCH_LINE_BYTES = 1024 * 1024;
/** How long a watch's connection may stay silent before TCP checks that its peer is there. */
const WATCH_KEEPALIVE_MS = 5000;

/** One watch's state: its endpoint, whom it tells, and its request once made. */
interface Watcher {
  readonly conn: Connection;
  readonly url: URL;
  readonly handlers: WatchHandlers;
  closed: boolean;
  request: ClientRequest | undefined;
}

/** Watches `key` from `startRevision` on the current endpoint. */
export function watch(
  conn: Connection,
  key: string,
  startRevision: number,
  handlers: WatchHandlers,
): Watch {
  const w: Watcher = { conn, url: current(conn), handlers, closed: false, request: undefined };
  authHeaders(conn).then(
    (headers) => {
      if (w.closed) return;
      start(w, headers, key, startRevision);
    },
    (err: unknown) =>
      end(w, err instanceof Error ? err.message : String(err), (err as EtcdError).code),
  );
  return {
    close() {
      halt(w);
    },
  };
}

/** Closes the watch without a word to its handlers. */
function halt(w: Watcher): void {
  w.closed = true;
  w.request?.destroy();
}

/** Closes the watch and tells why, unless it is closed already. */
function end(w: Watcher, message: string, code?: number): void {
  if (w.closed) return;
  halt(w);
  w.handlers.ended(new EtcdError(message, code, w.url.origin));
}

function start(
  w: Watcher,
  headers: Record<string, string>,
  key: string,
  startRevision: number,
): void {
  const body = {
    create_request: { key: b64(key), start_revision: String(startRevision) },
  };
  const request = open(w.conn, w.url, "/v3/watch", headers, body, (response) => {
    clearTimeout(deadline);
    if (response.statusCode !== 200) refused(w, response);
    else stream(w, response);
  });
  w.request = request;
  // Until etcd answers the request; the stream itself may stay quiet for hours.
  const deadline = setTimeout(() => {
    request.destroy(new Error(`no answer within ${w.conn.options.timeoutMs} ms`));
  }, w.conn.options.timeoutMs);
  request.on("close", () => clearTimeout(deadline));
  request.on("error", (err: NodeJS.ErrnoException) =>
    end(w, `${w.url.origin}: watch: ${err.code ?? err.message}`),
  );
  // A flow a NAT or firewall forgot while the watch was quiet ends in a few seconds of
  // unanswered probes, not at the next change.
  request.on("socket", (socket) => socket.setKeepAlive(true, WATCH_KEEPALIVE_MS));
}

/** etcd answered the watch with an error, not a stream. */
function refused(w: Watcher, response: IncomingMessage): void {
  readReply(response, MAX_REPLY_BYTES).then(
    (text) => {
      const parsed = parseObject(text);
      if (parsed !== undefined && isTokenText(String(parsed.error ?? ""))) {
        w.conn.token = undefined;
      }
      end(
        w,
        `${w.url.origin}: watch: HTTP ${response.statusCode}${parsed?.error === undefined ? "" : `: ${String(parsed.error)}`}`,
        typeof parsed?.code === "number" ? parsed.code : -1,
      );
    },
    (err: Error) => end(w, `${w.url.origin}: watch: ${err.message}`),
  );
}

function stream(w: Watcher, response: IncomingMessage): void {
  readLines(
    response,
    MAX_WATCH_LINE_BYTES,
    (line) => {
      if (w.closed) return;
      try {
        watchMessage(w, line);
      } catch (err) {
        end(
          w,
          `${w.url.origin}: watch: not etcd's answer (${err instanceof Malformed ? err.message : String(err)})`,
        );
      }
    },
    () => {
      // Too much at once to read in this heap: read the keys afresh.
      if (w.closed) return;
      halt(w);
      w.handlers.compacted(0);
    },
  ).then(
    () => end(w, `${w.url.origin}: watch: etcd closed the stream`),
    (err: Error) => end(w, `${w.url.origin}: watch: ${err.message}`),
  );
}

/** One message of the stream; throws on one that is not etcd's. */
function watchMessage(w: Watcher, line: string): void {
  const costly = whyTooCostly(line);
  if (costly !== undefined) throw new Malformed(`left unparsed: ${costly}`);
  const message = parseObject(line);
  if (message === undefined) throw new Malformed("not JSON");
  if (message.error !== undefined) {
    const error = objectOf(message.error, "error");
    const text = typeof error.message === "string" ? error.message : "error";
    if (isTokenText(text)) w.conn.token = undefined;
    end(
      w,
      `${w.url.origin}: watch: ${text}`,
      typeof error.grpc_code === "number" ? error.grpc_code : -1,
    );
    return;
  }
  const result = objectOf(message.result, "result");
  if (result.compact_revision !== undefined && result.compact_revision !== "0") {
    halt(w);
    w.handlers.compacted(revisionText(result.compact_revision, "compact_revision"));
    return;
  }
  if (result.canceled === true) {
    end(
      w,
      `${w.url.origin}: watch canceled${typeof result.cancel_reason === "string" ? `: ${result.cancel_reason}` : ""}`,
      -1,
    );
    return;
  }
  const revision = revisionOf(result);
  const raw = result.events ?? [];
  if (!Array.isArray(raw)) throw new Malformed("events is not a list");
  const events = raw.map(event);
  if (result.created === true) w.handlers.created(revision);
  if (events.length > 0) w.handlers.events(events, revision);
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
