/**
 * The agent port: every connection gets the current reply at once, then the agent reads and drops
 * what the client sends until the client closes. When replies depend on the probe's agent-send
 * line (the state names services), the reply waits briefly for that line first.
 */
import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import { type Connections, createConnections } from "./connections.js";
import { createFirstLines, type FirstLines } from "./first-line.js";

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
  /** Connections the kernel queues before the agent accepts them. */
  readonly backlog?: number;
  /** Called for an error of the listening socket itself (e.g. EMFILE on accept). */
  readonly onServerError?: (err: Error) => void;
  /** Told of every probe once its connection has closed (the probe ledger). */
  readonly observer?: ProbeObserver;
}

/** What the probe ledger learns from the server about each probe of a load balancer. */
export interface ProbeObserver {
  /**
   * `address` is the peer's; `name` the first line it sent (undefined: none was awaited);
   * `atMs` when the reply was given. `heard` is true when the whole reply went out and the peer
   * then closed the connection, with a FIN or a reset: HAProxy closes an agent check only once
   * the check is over, and resets unless it had already read the agent's own FIN.
   */
  probed(
    address: string,
    name: string | undefined,
    reply: string | Uint8Array,
    atMs: number,
    heard: boolean,
  ): void;
}

/**
 * The first line hapgent's own command line sends (`#hapgent-cli`, then the service's name if it
 * asks for one): its probes are answered like any other and not counted as a load balancer's.
 */
export const CLI_PROBE_MARK = "#hapgent-cli";
const CLI_MARK_BYTES = Buffer.from(CLI_PROBE_MARK);

function startsWithMark(chunk: Buffer): boolean {
  return (
    chunk.length >= CLI_MARK_BYTES.length &&
    chunk.compare(CLI_MARK_BYTES, 0, CLI_MARK_BYTES.length, 0, CLI_MARK_BYTES.length) === 0
  );
}

/** What the probe ledger is told of a connection, kept on the socket itself: no map per probe. */
interface ProbeRecord {
  readonly given: string | Uint8Array;
  readonly atMs: number;
  /** Read while the connection is open: a closed socket no longer knows it. */
  readonly peer: string;
  readonly name: string | undefined;
  /** hapgent's own probe, told by its first bytes. */
  own: boolean;
  /** The peer reset the connection (HAProxy's usual close of a check: SO_LINGER 0). */
  reset: boolean;
}
const RECORD = Symbol("hapgent probe");
type Probe = Socket & { [RECORD]?: ProbeRecord };

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
/**
 * A flood of reconnecting clients fills a short accept queue between two turns of the event
 * loop, and a probe that finds it full waits for the SYN to be retried (1 s, then 3 s): HAProxy
 * logs a timeout. The kernel caps this at net.core.somaxconn (4096 on Linux 5.4 and later).
 */
export const LISTEN_BACKLOG = 4096;
/** A first line longer than this names no service (names are at most 100 characters). */
const MAX_NAME_LINE_BYTES = 256;

/**
 * Wiring of the socket listeners (module-level shapes shared by every socket, so nothing is
 * allocated per probe) to the connection table and the first-line wait; each piece is short.
 */
export function createAgentServer({
  reply,
  awaitsName = () => false,
  nameWaitMs = NAME_WAIT_MS,
  lingerMs = LINGER_MS,
  maxPayloadBytes = MAX_PAYLOAD_BYTES,
  maxConnections = MAX_CONNECTIONS,
  backlog = LISTEN_BACKLOG,
  onServerError = () => {},
  observer,
}: AgentServerOptions): AgentServer {
  const replier: Replier = { reply, observer };
  const firstLines = createFirstLines({
    waitMs: nameWaitMs,
    maxLineBytes: MAX_NAME_LINE_BYTES,
    answer: (socket: Probe, line) => answerLine(replier, socket, line),
  });
  const open = createConnections({
    lingerMs,
    maxConnections,
    onClosed: (socket) => firstLines.forget(socket),
  });
  const { onError, onClose, onData } = socketListeners({
    open,
    firstLines,
    observer,
    maxPayloadBytes,
  });

  // Half-open allowed: a client that sends its line and shuts down its side still gets a reply.
  // Every connection ends its own side right after the reply, so none is left half open.
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", onError);
    socket.on("close", onClose);
    socket.on("data", onData);
    open.admit(socket);
    if (awaitsName()) {
      firstLines.wait(socket);
      return;
    }
    // The reply goes out before anything is read: HAProxy may send nothing at all. end() sends
    // FIN after it; the read side stays open so the payload is consumed, since closing a socket
    // with unread data sends RST, and an RST can make HAProxy lose the reply it has not read yet.
    send(replier, socket, undefined);
  });
  return agentServer({ server, open, firstLines, backlog, onServerError });
}

/** What sending a reply needs: the reply, and whether the ledger is told of it. */
interface Replier {
  readonly reply: AgentServerOptions["reply"];
  readonly observer: ProbeObserver | undefined;
}

function send(replier: Replier, socket: Probe, name: string | undefined, own = false): void {
  const bytes = replier.reply(name);
  if (replier.observer) {
    const peer = socket.remoteAddress ?? "";
    socket[RECORD] = { given: bytes, atMs: Date.now(), peer, name, own, reset: false };
  }
  socket.end(bytes);
}

/** The reply to a probe whose first line is `line` (undefined: none came in time). */
function answerLine(replier: Replier, socket: Probe, line: string | undefined): void {
  if (socket.destroyed) return;
  const name = line?.trim();
  if (name?.startsWith(CLI_PROBE_MARK)) {
    send(replier, socket, name.slice(CLI_PROBE_MARK.length).trim(), true);
  } else {
    send(replier, socket, name);
  }
}

/** What the listeners of every socket share. */
interface ListenerContext {
  readonly open: Connections;
  readonly firstLines: FirstLines;
  readonly observer: ProbeObserver | undefined;
  readonly maxPayloadBytes: number;
}

/** Listeners shared by every socket (`this` is the socket): nothing is allocated per probe. */
function socketListeners({ open, firstLines, observer, maxPayloadBytes }: ListenerContext) {
  function onError(this: Probe, err: NodeJS.ErrnoException): void {
    const record = this[RECORD];
    if (record !== undefined && err.code === "ECONNRESET") record.reset = true;
    // One socket's error ends that socket only.
    this.destroy();
  }
  function onClose(this: Probe): void {
    open.forget(this);
    firstLines.forget(this);
    const record = this[RECORD];
    if (observer === undefined || record === undefined || record.own) return;
    // Every byte of the reply went out (and the FIN after it), then the peer closed: with a FIN,
    // or with the reset HAProxy closes its checks with. A connection the agent cut (linger, cap,
    // payload) was not closed by the peer, and a reset before the reply left fails the write.
    const heard = this.writableFinished && (this.readableEnded || record.reset);
    observer.probed(record.peer, record.name, record.given, record.atMs, heard);
  }
  function onData(this: Probe, chunk: Buffer): void {
    if (this.bytesRead > maxPayloadBytes) return void this.destroy();
    // Without a wait for the first line, hapgent's own probes are told by their first bytes.
    const record = this[RECORD];
    if (record !== undefined && this.bytesRead === chunk.length && startsWithMark(chunk)) {
      record.own = true;
    }
  }
  return { onError, onClose, onData };
}

/** The listening server, its connections and the first-line wait, as one AgentServer. */
function agentServer({
  server,
  open,
  firstLines,
  backlog,
  onServerError,
}: {
  readonly server: Server;
  readonly open: Connections;
  readonly firstLines: FirstLines;
  readonly backlog: number;
  readonly onServerError: (err: Error) => void;
}): AgentServer {
  return {
    server,
    get connections() {
      return open.size;
    },
    listen(host, port) {
      return new Promise((resolve, reject) => {
        const onListenError = (err: Error) => reject(err);
        server.once("error", onListenError);
        server.listen({ host, port, exclusive: true, backlog }, () => {
          server.off("error", onListenError);
          server.on("error", onServerError);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    close() {
      return new Promise((resolve) => {
        firstLines.stop();
        server.close(() => resolve());
        open.closeAll();
      });
    },
  };
}
