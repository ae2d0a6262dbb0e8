/**
 * The TCP side: every connection gets the current reply at once, then the agent reads and drops
 * what the client sends until the client closes.
 */
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";

export interface AgentServerOptions {
  /** The line to send; called once per connection. */
  readonly reply: () => string;
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

export function createAgentServer({
  reply,
  lingerMs = LINGER_MS,
  maxPayloadBytes = MAX_PAYLOAD_BYTES,
  maxConnections = MAX_CONNECTIONS,
  onServerError = () => {},
}: AgentServerOptions): AgentServer {
  // Open connections and when each must be gone. Insertion order is age order: the first entry
  // is the oldest, so both the sweep and the cap look at the front only.
  const open = new Map<Socket, number>();

  // The same line goes to every probe until the state changes: encoded once, not per probe.
  let lastText = "";
  let lastBytes = Buffer.alloc(0);
  const replyBytes = (): Buffer => {
    const text = reply();
    if (text !== lastText) {
      lastText = text;
      lastBytes = Buffer.from(text, "utf8");
    }
    return lastBytes;
  };

  // Listeners shared by every socket (`this` is the socket): nothing is allocated per probe.
  function onError(this: Socket): void {
    // One socket's error ends that socket only.
    this.destroy();
  }
  function onClose(this: Socket): void {
    open.delete(this);
  }
  function onData(this: Socket): void {
    if (this.bytesRead > maxPayloadBytes) this.destroy();
  }

  const server = createServer((socket) => {
    socket.on("error", onError);
    socket.on("close", onClose);

    if (open.size >= maxConnections) {
      // Closing the oldest, not refusing the newest: a probe is never turned away because idle
      // clients hold every slot, and the oldest has long had its reply. Forgotten at once, not
      // at its 'close', so a burst accepted in one tick evicts one connection each.
      const oldest = open.keys().next().value;
      if (oldest) {
        open.delete(oldest);
        oldest.destroy();
      }
    }
    open.set(socket, Date.now() + lingerMs);

    // The reply goes out before anything is read: HAProxy may send nothing at all. end() sends
    // FIN after it; the read side stays open so the payload is consumed, since closing a socket
    // with unread data sends RST, and an RST can make HAProxy lose the reply it has not read yet.
    socket.end(replyBytes());
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
        server.close(() => resolve());
        for (const socket of open.keys()) socket.destroy();
      });
    },
  };
}
