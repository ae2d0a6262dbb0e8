/**
 * The control socket: a Unix domain socket the daemon owns (mode 0660, its group), speaking one
 * JSON object per line each way. Through it the command line reads the state and the probe ledger,
 * and changes the state: the daemon applies the change in order with signals and reloads, saves
 * it, and answers once it is saved. Bad requests get a clear error and leave the daemon unharmed;
 * clients are few, their lines short, their time bounded, and a new client is never turned away
 * for idle ones: the one idle longest is closed to make room. One turned away or closed to make
 * room hears the busy reply (nothing of what it sent since its last reply was done), and one
 * whose request was read is answered before it can be closed.
 */
import { chmod, lstat, unlink } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import type { BusyReply } from "../control-protocol.js";
import {
  type ControlConnection,
  type ControlHandlers,
  serveConnection,
} from "./control-connection.js";

export type { ControlHandlers } from "./control-connection.js";

export interface ControlServer {
  listen(): Promise<void>;
  close(): Promise<void>;
}

export interface ControlOptions {
  readonly path: string;
  readonly handlers: ControlHandlers;
  readonly maxClients?: number;
  readonly maxLineBytes?: number;
  /** A client that neither sends a request nor takes its reply this long is closed. */
  readonly idleMs?: number;
}

/** Plenty for scripts and operators; the agent port is where the load comes from. */
export const MAX_CONTROL_CLIENTS = 16;
/** The longest request, and the most of a client's input held unparsed. */
export const MAX_CONTROL_LINE_BYTES = 64 * 1024;
/** The command line sends its request at once and reads its reply at once. */
export const CONTROL_IDLE_MS = 5_000;
const SOCKET_MODE = 0o660;

/** A control socket that cannot be made: the reason, for the log. */
export class ControlSocketError extends Error {}

export function createControlServer({
  path,
  handlers,
  maxClients = MAX_CONTROL_CLIENTS,
  maxLineBytes = MAX_CONTROL_LINE_BYTES,
  idleMs = CONTROL_IDLE_MS,
}: ControlOptions): ControlServer {
  const clients = new Set<ControlConnection>();
  const busy: BusyReply = {
    ok: false,
    code: "busy",
    error: `busy: ${maxClients} clients are waiting for their replies`,
  };
  // Newcomers turned away, told busy, until their side closes (each at most `idleMs`).
  const refused = new Set<Socket>();
  const maxRefused = maxClients;
  // allowHalfOpen: a client that ends its side after its request (`nc -N`) still gets the reply.
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => socket.destroy());
    if (clients.size >= maxClients && !evictIdlest(clients, busy)) {
      refuse(socket, refused, maxRefused, busy, idleMs);
      return;
    }
    const client = serveConnection(socket, { handlers, maxLineBytes, idleMs });
    clients.add(client);
    socket.on("close", () => clients.delete(client));
  });

  return {
    async listen() {
      await removeStale(path);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(path, () => {
          server.off("error", reject);
          resolve();
        });
      });
      // Its group may use it: root's commands act as the service user, operators are in its group.
      await chmod(path, SOCKET_MODE);
    },
    close() {
      return new Promise((resolve) => {
        for (const client of clients) client.socket.destroy();
        for (const socket of refused) socket.destroy();
        server.close(() => resolve());
      });
    },
  };
}

/**
 * Closes the client idle longest that is not waiting for a reply, told busy: what it sent since
 * its last reply was not read, and the command line asks again. False when every client waits
 * for a reply. Forgotten at once, not at its 'close', so a burst accepted in one tick closes one
 * client each.
 */
function evictIdlest(clients: Set<ControlConnection>, busy: BusyReply): boolean {
  let idlest: ControlConnection | undefined;
  for (const client of clients) {
    if (client.answering) continue;
    if (idlest === undefined || client.lastActiveMs < idlest.lastActiveMs) idlest = client;
  }
  if (idlest === undefined) return false;
  clients.delete(idlest);
  idlest.evict(busy);
  return true;
}

/**
 * No client can be closed to make room: the newcomer is told it is busy at once, and its request
 * is never read (the command line tries again). Its input is read to its end and dropped, since
 * closing over unread data would reset the connection and could lose the line; at most
 * `maxRefused` such wait for that, each at most `idleMs`.
 */
function refuse(
  socket: Socket,
  refused: Set<Socket>,
  maxRefused: number,
  busy: BusyReply,
  idleMs: number,
): void {
  if (refused.size >= maxRefused) {
    socket.destroy();
    return;
  }
  refused.add(socket);
  socket.on("close", () => refused.delete(socket));
  socket.setTimeout(idleMs, () => socket.destroy());
  socket.end(`${JSON.stringify(busy)}\n`);
  socket.resume();
}

/**
 * Removes a socket a previous daemon left behind: only a socket, only when nothing answers on it,
 * so neither another file nor a running daemon's socket is ever taken.
 */
async function removeStale(path: string): Promise<void> {
  const stats = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
  if (stats === undefined) return;
  if (!stats.isSocket()) {
    throw new ControlSocketError(`${path} exists and is not a socket; expected no file there`);
  }
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.on("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.on("error", () => resolve(false));
  });
  if (alive) throw new ControlSocketError(`${path} is in use by another process`);
  await unlink(path);
}
