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
  const input = new LineBuffer();
  let answering = false;
  let draining = false;
  let ended = false;
  let cutOff = false;
  let lastActiveMs = performance.now();
  const idle = setTimeout(function expire() {
    if (answering) idle.refresh();
    else socket.destroy();
  }, idleMs);
  idle.unref();
  const touch = (): void => {
    lastActiveMs = performance.now();
    idle.refresh();
  };
  // Reading stops while a reply waits for the client, or while enough of its input waits for
  // the requests before it: the kernel's buffer then fills and the client's writes block.
  const flow = (): void => {
    if (draining || input.length > maxLineBytes) socket.pause();
    else socket.resume();
  };
  const send = (reply: object): void => {
    if (socket.destroyed) return;
    if (!socket.write(`${JSON.stringify(reply)}\n`)) draining = true;
  };

  const next = (): void => {
    while (!answering && !draining && !cutOff && !socket.destroyed) {
      const end = input.firstLineEnd;
      if (end > maxLineBytes || (end < 0 && input.length > maxLineBytes)) {
        refuseLong();
        return;
      }
      if (end < 0) {
        if (ended) finish();
        else flow();
        return;
      }
      const line = input.takeLine()?.toString("utf8") ?? "";
      if (line.trim() !== "") answer(line);
    }
    if (!cutOff) flow();
  };
  // The client has ended its side: a last line without its newline is still a request.
  const finish = (): void => {
    const line = input.takeAll().toString("utf8");
    if (line.trim() !== "") answer(line);
    else socket.end();
  };
  const answer = (line: string): void => {
    answering = true;
    touch();
    void replyTo(line, handlers).then((reply) => {
      answering = false;
      touch();
      send(reply);
      next();
    });
  };
  // Past a line too long, what the client sends is read to its end and dropped.
  const refuseLong = (): void => {
    cutOff = true;
    input.clear();
    send({ ok: false, error: `request longer than ${maxLineBytes} bytes` });
    socket.end();
    socket.resume();
  };

  socket.on("data", (chunk: Buffer) => {
    if (cutOff) return;
    input.push(chunk);
    next();
  });
  socket.on("end", () => {
    ended = true;
    next();
  });
  socket.on("drain", () => {
    draining = false;
    touch();
    next();
  });
  socket.on("close", () => clearTimeout(idle));
  return {
    socket,
    get answering() {
      return answering;
    },
    get lastActiveMs() {
      return lastActiveMs;
    },
    evict(reply) {
      cutOff = true;
      input.clear();
      // Written at once (the kernel takes a short line whole) and so read by the client before it
      // learns of the close, even though what it sent since is dropped unread.
      send(reply);
      socket.destroy();
    },
  };
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
