/**
 * Waiting for the first line a probe sends (HAProxy's agent-send text), briefly and boundedly,
 * when the reply depends on it. One timer serves every waiting connection.
 */
import type { Socket } from "node:net";

export interface FirstLines {
  /** Starts reading `socket`'s first line; `answer` is called once for it. */
  wait(socket: Socket): void;
  /** Stops waiting for a socket that closed or was closed. */
  forget(socket: Socket): void;
  /** Stops the timer; waiting sockets are left to their owner. */
  stop(): void;
}

export interface FirstLinesOptions {
  readonly waitMs: number;
  /** Longer than this is no name: the wait ends at once. */
  readonly maxLineBytes: number;
  /**
   * Called once per socket: with the line (without its line end, untrimmed), or undefined when
   * none came within `waitMs` or it was too long.
   */
  readonly answer: (socket: Socket, line: string | undefined) => void;
}

const LINE_END = 0x0a;

export function createFirstLines({ waitMs, maxLineBytes, answer }: FirstLinesOptions): FirstLines {
  // What each connection sent so far, and when its wait ends. Insertion order is deadline order
  // (one wait for all), so the timer looks at the front only.
  const waiting = new Map<Socket, { text: string; deadline: number }>();
  let timer: NodeJS.Timeout | undefined;
  let expiring: NodeJS.Immediate | undefined;

  const finish = (socket: Socket, line: string | undefined): void => {
    if (!waiting.delete(socket)) return;
    answer(socket, line);
  };

  const arm = (): void => {
    if (timer !== undefined || expiring !== undefined) return;
    const first = waiting.values().next().value;
    if (first === undefined) return;
    timer = setTimeout(onTimer, Math.max(0, first.deadline - performance.now()));
  };
  // Timers run before the loop reads its sockets: after a busy turn (a flood, a collection) the
  // timer would end waits whose line has already arrived, unread. The waits end after this
  // turn's reads instead.
  function onTimer(): void {
    timer = undefined;
    expiring = setImmediate(expire);
  }
  function expire(): void {
    expiring = undefined;
    const now = performance.now();
    for (const [socket, entry] of waiting) {
      if (entry.deadline > now) break;
      finish(socket, undefined);
    }
    arm();
  }

  // Listeners shared by every socket (`this` is the socket): nothing is allocated per probe.
  function onData(this: Socket, chunk: Buffer): void {
    const entry = waiting.get(this);
    if (entry === undefined) return;
    const end = chunk.indexOf(LINE_END);
    if (end >= 0) {
      finish(this, entry.text + chunk.toString("latin1", 0, end));
    } else {
      entry.text += chunk.toString("latin1");
      if (entry.text.length > maxLineBytes) finish(this, undefined);
    }
  }
  /** A client that half-closes before its line end has sent all of its line. */
  function onEnd(this: Socket): void {
    const entry = waiting.get(this);
    if (entry !== undefined) finish(this, entry.text);
  }

  return {
    wait(socket) {
      waiting.set(socket, { text: "", deadline: performance.now() + waitMs });
      arm();
      socket.on("data", onData);
      socket.on("end", onEnd);
    },
    forget(socket) {
      waiting.delete(socket);
    },
    stop() {
      clearTimeout(timer);
      clearImmediate(expiring);
      timer = undefined;
      expiring = undefined;
    },
  };
}
