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
  // Insertion order is age order: the first entry is the oldest connection.
  const open = new Set<Socket>();

  const server = createServer((socket) => {
    // One socket's error ends that socket only.
    socket.on("error", () => socket.destroy());
    socket.on("close", () => open.delete(socket));

    if (open.size >= maxConnections) {
      // Closing the oldest, not refusing the newest: a probe is never turned away because idle
      // clients hold every slot, and the oldest has long had its reply.
      open.values().next().value?.destroy();
    }
    open.add(socket);

    // The reply goes out before anything is read: HAProxy may send nothing at all. end() sends
    // FIN after it; the read side stays open so the payload is consumed, since closing a socket
    // with unread data sends RST, and an RST can make HAProxy drop the reply it has not read yet.
    socket.end(reply());
    let received = 0;
    socket.on("data", (chunk: Buffer) => {
      received += chunk.length;
      if (received > maxPayloadBytes) socket.destroy();
    });
    socket.setTimeout(lingerMs, () => socket.destroy());
  });

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
          server.on("error", onServerError);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    close() {
      return new Promise((resolve) => {
        server.close(() => resolve());
        for (const socket of open) socket.destroy();
      });
    },
  };
}
