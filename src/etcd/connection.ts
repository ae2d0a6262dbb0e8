/**
 * The client's connection to etcd: the endpoint requests go to now, one keep-alive agent per
 * endpoint, the token and its renewal, and calls that fail over to the next endpoint.
 */
import type { ClientRequest, Agent as HttpAgent, IncomingMessage } from "node:http";
import type { EtcdOptions } from "./client.js";
import { parseObject, whyTooCostly } from "./decode.js";
import { EtcdError, isTokenError } from "./error.js";

type Http = typeof import("node:http");
type Https = typeof import("node:https");

/**
 * A gateway reply larger than this is not one the agent reads (the agent runs in a small heap:
 * main.js's flags); a read of one key's value is capped lower, by what the value may be.
 */
export const MAX_REPLY_BYTES = 2 * 1024 * 1024;

export interface Connection {
  readonly options: EtcdOptions;
  /** Whether a request that finds its endpoint dead moves on to the next (see createEtcd). */
  readonly failover: boolean;
  readonly http: Http;
  /** Loaded only when an endpoint is https. */
  readonly https: Https | undefined;
  /** One keep-alive agent per endpoint's origin, made when first used. */
  readonly agents: Map<string, HttpAgent>;
  /** The current endpoint, as an index into options.endpoints. */
  index: number;
  token: string | undefined;
  /** The authentication under way, which every call waiting for a token shares. */
  authenticating: Promise<string> | undefined;
}

/**
 * The client's state, with Node's HTTP modules loaded; nothing is sent yet (the first call
 * authenticates, if it must, and opens the agent's sockets).
 */
export async function connect(options: EtcdOptions, failover: boolean): Promise<Connection> {
  const http = await import("node:http");
  const https = options.endpoints.some((u) => u.protocol === "https:")
    ? await import("node:https")
    : undefined;
  return {
    options,
    failover,
    http,
    https,
    agents: new Map(),
    index: 0,
    token: undefined,
    authenticating: undefined,
  };
}

export function current(conn: Connection): URL {
  return conn.options.endpoints[conn.index % conn.options.endpoints.length] as URL;
}

/** Moves on to the next endpoint, whose token is yet to be had. */
export function rotate(conn: Connection): void {
  conn.index = (conn.index + 1) % conn.options.endpoints.length;
  conn.token = undefined;
}

export function closeConnection(conn: Connection): void {
  for (const agent of conn.agents.values()) agent.destroy();
}

function agentFor(conn: Connection, url: URL): HttpAgent {
  let agent = conn.agents.get(url.origin);
  if (agent === undefined) {
    agent =
      url.protocol === "https:" && conn.https !== undefined
        ? new conn.https.Agent({ keepAlive: true, maxSockets: 64, ...conn.options.tls })
        : new conn.http.Agent({ keepAlive: true, maxSockets: 64 });
    conn.agents.set(url.origin, agent);
  }
  return agent;
}

/** A POST of `body` to `path` on `url`, as JSON; the caller reads the response. */
export function open(
  conn: Connection,
  url: URL,
  path: string,
  headers: Record<string, string>,
  body: unknown,
  onResponse: (response: IncomingMessage) => void,
): ClientRequest {
  const request = (
    url.protocol === "https:" && conn.https !== undefined ? conn.https : conn.http
  ).request(
    new URL(path, url),
    {
      method: "POST",
      agent: agentFor(conn, url),
      headers: { "content-type": "application/json", ...headers },
    },
    onResponse,
  );
  request.end(JSON.stringify(body));
  return request;
}

/**
 * One POST to the current endpoint; resolves with the reply's JSON, within the timeout. A reply
 * larger than `maxBytes` fails with `tooLarge`.
 */
function post(
  conn: Connection,
  path: string,
  body: unknown,
  headers: Record<string, string>,
  maxBytes = MAX_REPLY_BYTES,
): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const url = current(conn);
    const fail = (message: string, code?: number, tooLarge = false) =>
      reject(new EtcdError(message, code, url.origin, tooLarge));
    const request = open(conn, url, path, headers, body, (response) => {
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
      request.destroy(new Error(`no answer within ${conn.options.timeoutMs} ms`));
    }, conn.options.timeoutMs);
    request.on("close", () => clearTimeout(deadline));
    request.on("error", (err: NodeJS.ErrnoException) =>
      fail(`${url.origin}: ${err.code ?? err.message}`, undefined, err instanceof TooLarge),
    );
  });
}

async function authenticate(conn: Connection): Promise<string> {
  const reply = await post(
    conn,
    "/v3/auth/authenticate",
    { name: conn.options.username, password: conn.options.password },
    {},
  );
  if (typeof reply.token !== "string" || reply.token === "") {
    throw new EtcdError(
      `${current(conn).origin}: authentication gave no token`,
      -1,
      current(conn).origin,
    );
  }
  return reply.token;
}

export async function authHeaders(conn: Connection): Promise<Record<string, string>> {
  if (conn.options.username === undefined) return {};
  if (conn.token === undefined) {
    conn.authenticating ??= authenticate(conn).finally(() => {
      conn.authenticating = undefined;
    });
    conn.token = await conn.authenticating;
  }
  return { authorization: conn.token };
}

/**
 * A call with the token; an expired token (etcd's simple tokens last minutes) is renewed once.
 * With `failover`, an endpoint that does not answer hands the call to the next, once each.
 */
export async function call(
  conn: Connection,
  path: string,
  body: unknown,
  maxBytes?: number,
): Promise<Record<string, unknown>> {
  if (!conn.failover) return callOnce(conn, path, body, maxBytes);
  for (let tried = 1; ; tried++) {
    try {
      return await callOnce(conn, path, body, maxBytes);
    } catch (err) {
      if (
        !(err instanceof EtcdError) ||
        err.answered ||
        err.tooLarge ||
        tried >= conn.options.endpoints.length
      ) {
        throw err;
      }
      rotate(conn);
    }
  }
}

async function callOnce(
  conn: Connection,
  path: string,
  body: unknown,
  maxBytes?: number,
): Promise<Record<string, unknown>> {
  try {
    return await post(conn, path, body, await authHeaders(conn), maxBytes);
  } catch (err) {
    if (!(err instanceof EtcdError) || !isTokenError(err) || conn.options.username === undefined) {
      throw err;
    }
    conn.token = undefined;
    return post(conn, path, body, await authHeaders(conn), maxBytes);
  }
}

class TooLarge extends Error {}

/** The reply's body as text, at most `max` bytes. */
export function readReply(response: IncomingMessage, max: number): Promise<string> {
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
