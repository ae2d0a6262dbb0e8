/**
 * One client of the control socket: its requests read line by line and answered one at a time,
 * in order. What a client can make the daemon hold is bounded: one request answered at a time,
 * at most `maxLineBytes` of its input unparsed (past that it is not read until the requests
 * before are answered), and one reply it has not taken (it is not read until that reply is
 * drained). A client that does not read only slows itself, and one that neither asks nor reads
 * for `idleMs` is closed.
 */
import type { Socket } from "node:net";
import { type ControlRequest, type ErrorReply, parseRequest } from "../control-protocol.js";
import { LineBuffer } from "./line-buffer.js";

export interface ControlHandlers {
  /** Answers one valid request; the object is sent as one line. */
  handle(request: ControlRequest): Promise<object>;
}

export interface ControlConnection {
  readonly socket: Socket;
  /** True while the daemon works out a reply for it: it is then neither timed out nor evicted. */
  readonly answering: boolean;
  /** When it last sent a request or took a whole reply, on performance.now()'s clock. */
  readonly lastActiveMs: number;
  /**
   * Closes it to make room, never while answering: `reply` is sent and nothing more is read of
   * it, so the client knows what it sent since its last reply was not done.
   */
  evict(reply: object): void;
}

export interface ConnectionOptions {
  readonly handlers: ControlHandlers;
  readonly maxLineBytes: number;
  readonly idleMs: number;
}

/** Serves `socket` (made with allowHalfOpen: the reply still goes to a client that has ended). */
export function serveConnection(
  socket: Socket,
  { handlers, maxLineBytes, idleMs }: ConnectionOptions,
): ControlConnection {
  const client: Client = {
    socket,
    handlers,
    maxLineBytes,
    input: new LineBuffer(),
    answering: false,
    draining: false,
    ended: false,
    cutOff: false,
    lastActiveMs: performance.now(),
    idle: setTimeout(() => expire(client), idleMs),
  };
  client.idle.unref();
  socket.on("data", (chunk: Buffer) => {
    if (client.cutOff) return;
    client.input.push(chunk);
    next(client);
  });
  socket.on("end", () => {
    client.ended = true;
    next(client);
  });
  socket.on("drain", () => {
    client.draining = false;
    touch(client);
    next(client);
  });
  socket.on("close", () => clearTimeout(client.idle));
  return {
    socket,
    get answering() {
      return client.answering;
    },
    get lastActiveMs() {
      return client.lastActiveMs;
    },
    evict: (reply) => evict(client, reply),
  };
}

/** One client, as the functions below serve it. */
interface Client {
  readonly socket: Socket;
  readonly handlers: ControlHandlers;
  readonly maxLineBytes: number;
  readonly input: LineBuffer;
  answering: boolean;
  draining: boolean;
  ended: boolean;
  cutOff: boolean;
  lastActiveMs: number;
  readonly idle: NodeJS.Timeout;
}

function expire(client: Client): void {
  if (client.answering) client.idle.refresh();
  else client.socket.destroy();
}

function touch(client: Client): void {
  client.lastActiveMs = performance.now();
  client.idle.refresh();
}

// Reading stops while a reply waits for the client, or while enough of its input waits for
// the requests before it: the kernel's buffer then fills and the client's writes block.
function flow(client: Client): void {
  if (client.draining || client.input.length > client.maxLineBytes) client.socket.pause();
  else client.socket.resume();
}

function send(client: Client, reply: object): void {
  if (client.socket.destroyed) return;
  if (!client.socket.write(`${JSON.stringify(reply)}\n`)) client.draining = true;
}

function next(client: Client): void {
  const { input, maxLineBytes, socket } = client;
  while (!client.answering && !client.draining && !client.cutOff && !socket.destroyed) {
    const end = input.firstLineEnd;
    if (end > maxLineBytes || (end < 0 && input.length > maxLineBytes)) {
      refuseLong(client);
      return;
    }
    if (end < 0) {
      if (client.ended) finish(client);
      else flow(client);
      return;
    }
    const line = input.takeLine()?.toString("utf8") ?? "";
    if (line.trim() !== "") answer(client, line);
  }
  if (!client.cutOff) flow(client);
}

// The client has ended its side: a last line without its newline is still a request.
function finish(client: Client): void {
  const line = client.input.takeAll().toString("utf8");
  if (line.trim() !== "") answer(client, line);
  else client.socket.end();
}

function answer(client: Client, line: string): void {
  client.answering = true;
  touch(client);
  void replyTo(line, client.handlers).then((reply) => {
    client.answering = false;
    touch(client);
    send(client, reply);
    next(client);
  });
}

// Past a line too long, what the client sends is read to its end and dropped.
function refuseLong(client: Client): void {
  client.cutOff = true;
  client.input.clear();
  send(client, { ok: false, error: `request longer than ${client.maxLineBytes} bytes` });
  client.socket.end();
  client.socket.resume();
}

function evict(client: Client, reply: object): void {
  client.cutOff = true;
  client.input.clear();
  // Written at once (the kernel takes a short line whole) and so read by the client before it
  // learns of the close, even though what it sent since is dropped unread.
  send(client, reply);
  client.socket.destroy();
}

/** The reply to one line; a handler that fails gives an error reply, never a crash. */
async function replyTo(line: string, handlers: ControlHandlers): Promise<object> {
  const parsed = parseRequest(line);
  if (!parsed.ok) return { ok: false, error: parsed.reason } satisfies ErrorReply;
  try {
    return await handlers.handle(parsed.request);
  } catch (err) {
    return { ok: false, error: `internal error: ${(err as Error).message}` } satisfies ErrorReply;
  }
}
