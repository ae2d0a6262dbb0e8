/**
 * The daemon: configuration, state, signals and the listening socket wired together. Everything
 * it needs from the process comes in through `DaemonIo`, so it runs the same under test.
 */
import { createAgent } from "./agent.js";
import { describeListenError, parseConfig } from "./config.js";
import { guardInspector } from "./inspector-guard.js";
import { createLogger } from "./log.js";
import { reply } from "./reply.js";
import { createAgentServer } from "./server.js";
import { formatState, hasService, printable, type State, serviceState } from "./state.js";
import { createStateStore } from "./store.js";
import { VERSION } from "./version.js";

export type DaemonSignal = "SIGUSR1" | "SIGUSR2" | "SIGHUP" | "SIGTERM" | "SIGINT";

export interface DaemonIo {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly cwd: string;
  readonly nodeVersion: string;
  /** True when stderr goes to the systemd journal. */
  readonly journal: boolean;
  /** Writes to stderr, synchronously. */
  readonly write: (text: string) => void;
  readonly inspector: {
    readonly url: () => string | undefined;
    readonly close: () => void;
    /** The operator opened the debugger on purpose (an --inspect flag): leave it alone. */
    readonly requested: boolean;
  };
  /** Hands signals to `handler`, first those that arrived before, in their order. */
  readonly onSignal: (handler: (signal: DaemonSignal) => void) => void;
  readonly exit: (code: number) => void;
}

/** Exit codes of the daemon. */
export const EXIT = Object.freeze({ OK: 0, CANNOT_LISTEN: 1, INVALID_CONFIG: 2 });

/** TERM must end the process within a second; a pending save gets most of it. */
const SHUTDOWN_SAVE_WAIT_MS = 800;
/**
 * Signals sent just before TERM can reach Node after it: the kernel hands each signal to any of
 * Node's threads, so `kill -USR2; kill -TERM` may be seen the other way round. Commands that land
 * in this moment are still applied and saved.
 */
const SHUTDOWN_GRACE_MS = 50;
/** Distinct unknown service names logged per state; a client cycling names cannot flood the log. */
const MAX_UNKNOWN_NAMES_LOGGED = 20;

export async function runDaemon(io: DaemonIo): Promise<void> {
  const log = createLogger({ write: io.write, journal: io.journal });

  const configured = parseConfig(io.env, io.cwd);
  if (!configured.ok) {
    log.error(configured.reason);
    return io.exit(EXIT.INVALID_CONFIG);
  }
  const config = configured.config;
  const store = createStateStore(config.stateFile, log);
  const agent = createAgent({ store, log });
  // A state is a frozen value replaced on every change: its lines are built and encoded once
  // per state (and service), not per probe.
  let answered: State | undefined;
  let line = Buffer.alloc(0);
  let named = false;
  let serviceLines = new Map<string, Buffer>();
  // What was logged about the names probes sent, once per state and boundedly.
  const unknownNames = new Set<string>();
  let waitLogged = false;
  const current = (): State => {
    if (agent.state !== answered) {
      answered = agent.state;
      line = Buffer.from(reply(answered));
      named = answered.services !== undefined && Object.keys(answered.services).length > 0;
      serviceLines = new Map();
      unknownNames.clear();
      waitLogged = false;
    }
    return answered;
  };
  const replyFor = (name: string | undefined): Buffer => {
    const state = current();
    if (name === undefined) {
      if (named && !waitLogged) {
        waitLogged = true;
        log.warning(
          `a probe sent no agent-send line within ${config.sendWaitMs} ms (HAPGENT_SEND_WAIT_MS) and was answered the instance state; a server probing without agent-send waits that long for every reply`,
        );
      }
      return line;
    }
    if (name === "") return line;
    if (!hasService(state, name)) {
      if (!unknownNames.has(name) && unknownNames.size < MAX_UNKNOWN_NAMES_LOGGED) {
        unknownNames.add(name);
        log.warning(
          `a probe asked for service ${printable(JSON.stringify(name))}, which the state file does not name; answered the instance state`,
        );
      }
      return line;
    }
    let bytes = serviceLines.get(name);
    if (bytes === undefined) {
      bytes = Buffer.from(reply(serviceState(state, name)));
      serviceLines.set(name, bytes);
    }
    return bytes;
  };
  const server = createAgentServer({
    reply: replyFor,
    awaitsName: () => {
      current();
      return named;
    },
    nameWaitMs: config.sendWaitMs,
    onServerError: (err) => log.warning(`accepting a connection failed: ${err.message}`),
  });

  let stopping = false;
  const stop = async (signal: DaemonSignal): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.notice(`${signal}: stopping`);
    // Not unref()'d: with the socket closed they are what keeps the process until it exits here.
    const timeout = new Promise((resolve) => setTimeout(resolve, SHUTDOWN_SAVE_WAIT_MS));
    const grace = new Promise((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS));
    const finish = async () => {
      await Promise.all([server.close(), grace]);
      await agent.settled();
    };
    await Promise.race([finish(), timeout]);
    log.notice(`stopped with state ${formatState(agent.state)}`);
    io.exit(EXIT.OK);
  };

  const handle = (signal: DaemonSignal): void => {
    switch (signal) {
      case "SIGUSR1":
        void agent.command("up", signal);
        break;
      case "SIGUSR2":
        void agent.command("down", signal);
        break;
      case "SIGHUP":
        void agent.command("reload", signal);
        break;
      case "SIGTERM":
      case "SIGINT":
        void stop(signal);
        break;
    }
  };

  // Before any save can start: a save's own temporary file must never be taken for stale.
  await store.removeStaleTemporaries();
  // Queued before any signal, so the signals that came early apply on top of the file, in order.
  const loaded = agent.command("reload", "start-up");
  if (!io.inspector.requested) {
    guardInspector({
      url: io.inspector.url,
      close: io.inspector.close,
      onClosed: (url) => {
        log.warning(
          `closed the Node debugger (${url}) that a SIGUSR1 sent during start-up opened; applying that SIGUSR1`,
        );
        handle("SIGUSR1");
      },
    });
  }

  io.onSignal(handle);
  await loaded;
  if (stopping) return;

  let address: string;
  try {
    const bound = await server.listen(config.host, config.port);
    address =
      bound.family === "IPv6"
        ? `[${bound.address}]:${bound.port}`
        : `${bound.address}:${bound.port}`;
  } catch (err) {
    log.error(describeListenError(config, (err as NodeJS.ErrnoException).code));
    return io.exit(EXIT.CANNOT_LISTEN);
  }
  log.notice(
    `hapgent ${VERSION} (Node ${io.nodeVersion}) listening on ${address}, state file ${config.stateFile}, state ${formatState(agent.state)}`,
  );
}
