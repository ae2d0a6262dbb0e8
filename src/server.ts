/**
 * The TCP side: every connection gets the current reply at once, then the agent reads and drops
 * what the client sends until the client closes. When the state names services, the reply waits
 * (briefly, boundedly) for the first line the client sends, HAProxy's agent-send text, and
 * answers for the service it names.
 */
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";

export interface AgentServerOptions {
  /**
   * The line to send; called once per connection. `name` is the first line the client sent,
   * without its line end and surrounding blanks; undefined when no line came in time. Bytes
   * the caller keeps from probe to probe are sent as they are, with nothing encoded per probe.
   */
  readonly reply: (name?: string) => string | Uint8Array;
  /** Whether replies depend on the name: called once per connection; false replies at once. */
  readonly awaitsName?: () => boolean;
  /** How long to wait for the first line before replying without a name. */
  readonly nameWaitMs?: number;
  /** How long a connection may stay open after the reply. */
  readonly lingerMs?: number;
  /** How much a client may send (HAProxy's agent-send payload) before it is cut off. */
  readonly maxPayloadBytes?: number;
  /** Open connections kept at most; past it the oldest is closed. */
  readonly maxConnections?: number;
  /** Called for an error of the listening socket itself (e.g. EMFILE on accept). */
  readonly onServerError?: (err: Error) => void;
}

export interface AgentServer {
  readonly server: Server;
  /** Listens; rejects with Node's error (err.code EADDRINUSE, EADDRNOTAVAIL, …). */
  listen(host: string, port: number): Promise<AddressInfo>;
  /** Stops listening and closes every open connection. */
  close(): Promise<void>;
  /** Connections open now. */
  readonly connections: number;
}

/** HAProxy closes right after reading the line; a client still open after this is not HAProxy. */
export const LINGER_MS = 2000;
/** Generous for any agent-send payload; a client sending more is not HAProxy. */
export const MAX_PAYLOAD_BYTES = 4096;
/** Bounds the memory and descriptors that idle clients can hold. */
export const MAX_CONNECTIONS = 512;
/** HAProxy sends agent-send right after connecting: on loopback or a LAN it is there at once. */
export const NAME_WAIT_MS = 100;
/** A first line longer than this names no service (names are at most 100 characters). */
const MAX_NAME_LINE_BYTES = 256;
const LINE_END = 0x0a;

export function createAgentServer({
  reply,
  awaitsName = () => false,
  nameWaitMs = NAME_WAIT_MS,
  lingerMs = LINGER_MS,
  maxPayloadBytes = MAX_PAYLOAD_BYTES,
  maxConnections = MAX_CONNECTIONS,
  onServerError = () => {},
}: AgentServerOptions): AgentServer {
  // Open connections and when each must be gone. Insertion order is age order: the first entry
  // is the oldest, so both the sweep and the cap look at the front only.
  const open = new Map<Socket, number>();

  // Connections waiting for their first line: what they sent so far, and when the wait ends.
  // Insertion order is deadline order (one wait for all), so one timer serves them all.
  const waiting = new Map<Socket, { text: string; deadline: number }>();
  let waitTimer: NodeJS.Timeout | undefined;
  const armWaitTimer = (): void => {
    if (waitTimer !== undefined) return;
    const first = waiting.values().next().value;
    if (first === undefined) return;
    waitTimer = setTimeout(onWaitTimer, Math.max(0, first.deadline - performance.now()));
  };
  function onWaitTimer(): void {
    waitTimer = undefined;
    const now = performance.now();
    for (const [socket, entry] of waiting) {
      if (entry.deadline > now) break;
      answer(socket, undefined);
    }
    armWaitTimer();
  }
  const answer = (socket: Socket, name: string | undefined): void => {
    waiting.delete(socket);
    if (!socket.destroyed) socket.end(reply(name?.trim()));
  };

  // Listeners shared by every socket (`this` is the socket): nothing is allocated per probe.
  function onError(this: Socket): void {
    // One socket's error ends that socket only.
    this.destroy();
  }
  function onClose(this: Socket): void {
    open.delete(this);
    waiting.delete(this);
  }
  function onData(this: Socket): void {
    if (this.bytesRead > maxPayloadBytes) this.destroy();
  }
  /** Data while the reply waits for the first line: the line names the service. */
  function onNamedData(this: Socket, chunk: Buffer): void {
    const entry = waiting.get(this);
    if (entry === undefined) {
      if (this.bytesRead > maxPayloadBytes) this.destroy();
      return;
    }
    const end = chunk.indexOf(LINE_END);
    if (end >= 0) {
      answer(this, entry.text + chunk.toString("latin1", 0, end));
    } else {
      entry.text += chunk.toString("latin1");
      if (entry.text.length > MAX_NAME_LINE_BYTES) answer(this, undefined);
    }
  }
  /** A client that half-closes before its line end has sent all of its line. */
  function onNamedEnd(this: Socket): void {
    const entry = waiting.get(this);
    if (entry !== undefined) answer(this, entry.text);
  }

  // Half-open allowed: a client that sends its line and shuts down its side still gets a reply.
  // Every connection ends its own side right after the reply, so none is left half open.
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", onError);
    socket.on("close", onClose);

    if (open.size >= maxConnections) {
      // Closing the oldest, not refusing the newest: a probe is never turned away because idle
      // clients hold every slot, and the oldest has long had its reply. Forgotten at once, not
      // at its 'close', so a burst accepted in one tick evicts one connection each.
      const oldest = open.keys().next().value;
      if (oldest) {
        open.delete(oldest);
        waiting.delete(oldest);
        oldest.destroy();
      }
    }
    open.set(socket, Date.now() + lingerMs);

    if (awaitsName()) {
      // Reads the first line (up to MAX_NAME_LINE_BYTES, for nameWaitMs at most), then replies
      // for it and goes on as for any connection.
      waiting.set(socket, { text: "", deadline: performance.now() + nameWaitMs });
      armWaitTimer();
      socket.on("data", onNamedData);
      socket.on("end", onNamedEnd);
      return;
    }
    // The reply goes out before anything is read: HAProxy may send nothing at all. end() sends
    // FIN after it; the read side stays open so the payload is consumed, since closing a socket
    // with unread data sends RST, and an RST can make HAProxy lose the reply it has not read yet.
    socket.end(reply());
    socket.on("data", onData);
  });

  // One timer for all connections, instead of one per socket: a connection still open after
  // its linger time is closed within a sweep interval of it.
  const sweepMs = Math.max(10, Math.min(250, Math.floor(lingerMs / 4)));
  let sweep: NodeJS.Timeout | undefined;
  const startSweeping = () => {
    sweep ??= setInterval(() => {
      const now = Date.now();
      for (const [socket, deadline] of open) {
        if (deadline > now) break;
        socket.destroy();
        open.delete(socket);
        waiting.delete(socket);
      }
    }, sweepMs);
    sweep.unref();
  };

  return {
    server,
    get connections() {
      return open.size;
    },
    listen(host, port) {
      return new Promise((resolve, reject) => {
        const onError = (err: Error) => reject(err);
        server.once("error", onError);
        server.listen({ host, port, exclusive: true }, () => {
          server.off("error", onError);
          startSweeping();
          server.on("error", onServerError);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    close() {
      return new Promise((resolve) => {
        clearInterval(sweep);
        sweep = undefined;
        clearTimeout(waitTimer);
        waitTimer = undefined;
        server.close(() => resolve());
        for (const socket of open.keys()) socket.destroy();
      });
    },
  };
}
