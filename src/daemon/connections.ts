/**
 * The agent port's open connections: each may stay open a short while after its reply, and
 * only so many are kept. One timer sweeps them all, instead of one timer per socket.
 */
import type { Socket } from "node:net";

export interface Connections {
  /** Takes a new connection, first closing the oldest when the table is full. */
  admit(socket: Socket): void;
  /** Forgets a connection that closed. */
  forget(socket: Socket): void;
  /** Closes every connection and stops sweeping. */
  closeAll(): void;
  readonly size: number;
}

export interface ConnectionsOptions {
  /** How long a connection may stay open; closed within a sweep interval after. */
  readonly lingerMs: number;
  readonly maxConnections: number;
  /** Told of a connection closed to make room or for staying too long (it is already destroyed). */
  readonly onClosed?: (socket: Socket) => void;
}

export function createConnections({
  lingerMs,
  maxConnections,
  onClosed = () => {},
}: ConnectionsOptions): Connections {
  // Insertion order is age order: the first entry is the oldest, so both the sweep and the cap
  // look at the front only. Values are deadlines on performance.now()'s clock.
  const open = new Map<Socket, number>();
  const sweepMs = Math.max(10, Math.min(250, Math.floor(lingerMs / 4)));
  let sweep: NodeJS.Timeout | undefined;

  const close = (socket: Socket): void => {
    open.delete(socket);
    socket.destroy();
    onClosed(socket);
  };

  const sweepOnce = (): void => {
    const now = performance.now();
    for (const [socket, deadline] of open) {
      if (deadline > now) break;
      close(socket);
    }
    if (open.size === 0) {
      clearInterval(sweep);
      sweep = undefined;
    }
  };

  return {
    admit(socket) {
      if (open.size >= maxConnections) {
        // Closing the oldest, not refusing the newest: a probe is never turned away because idle
        // clients hold every slot, and the oldest has long had its reply. Forgotten at once, not
        // at its 'close', so a burst accepted in one tick evicts one connection each.
        const oldest = open.keys().next().value;
        if (oldest) close(oldest);
      }
      open.set(socket, performance.now() + lingerMs);
      if (sweep === undefined) {
        sweep = setInterval(sweepOnce, sweepMs);
        sweep.unref();
      }
    },
    forget(socket) {
      open.delete(socket);
    },
    closeAll() {
      clearInterval(sweep);
      sweep = undefined;
      for (const socket of [...open.keys()]) close(socket);
    },
    get size() {
      return open.size;
    },
  };
}
