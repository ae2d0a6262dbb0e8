/**
 * The daemon: configuration, state, signals and the listening socket wired together. Everything
 * it needs from the process comes in through `DaemonIo`, so it runs the same under test.
 */
import { lstatSync, unlinkSync } from "node:fs";
import {
  type Config,
  describeListenError,
  describeMetricsListenError,
  describeUnknownVariable,
  type FleetConfig,
  formatAddress,
  type MetricsAddress,
  type ProcessContext,
  parseConfig,
  unknownVariables,
} from "../config.js";
import { answerFor, NO_VERDICTS } from "../core/compose.js";
import { formatState, type ServiceState, type State } from "../core/state.js";
import { etcdOptions } from "../etcd/options.js";
import { guardInspector } from "../inspector-guard.js";
import { createLogger, type Logger } from "../log.js";
import type { StoreProcess } from "../store.js";
import { createStateStore, createTextFile } from "../store.js";
import { VERSION } from "../version.js";
import type { CheckLayer } from "./checks/layer.js";
import type { ControlServer } from "./control.js";
import { controlHandlers, startControl } from "./control-handlers.js";
import type { FleetLayer } from "./fleet/layer.js";
import { createLedger, type Ledger } from "./ledger.js";
import type { MetricsServer } from "./metrics.js";
import { createOperator, type Operator } from "./operator.js";
import { createReplies } from "./replies.js";
import { guardedStore, guardedTextFile, refuseForeignPath } from "./root-guard.js";
import type { AgentServer } from "./server.js";
import { createAgentServer } from "./server.js";

export type DaemonSignal = "SIGUSR1" | "SIGUSR2" | "SIGHUP" | "SIGTERM" | "SIGINT";

export interface DaemonIo extends ProcessContext, StoreProcess {
  readonly nodeVersion: string;
  /** True when stderr goes to the systemd journal. */
  readonly journal: boolean;
  /** Writes one log line to stderr; never throws. */
  readonly write: (text: string) => void;
  readonly inspector: {
    readonly url: () => string | undefined;
    readonly close: () => void;
    /** The operator opened the debugger on purpose (an --inspect flag): leave it alone. */
    readonly requested: boolean;
  };
  /** Hands signals to `handler`, first those that arrived before, in their order. */
  readonly onSignal: (handler: (signal: DaemonSignal) => void) => void;
  /**
   * Signals a process, or a process group by its negative id (a check's command and its own);
   * signal 0 only asks whether it exists.
   */
  readonly kill: (pid: number, signal: NodeJS.Signals | 0) => void;
  readonly exit: (code: number) => void;
  /** Runs `fn` as the process exits, however it exits (a crash included); `fn` is synchronous. */
  readonly atExit: (fn: () => void) => void;
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

export async function runDaemon(io: DaemonIo): Promise<void> {
  const log = createLogger({ write: io.write, journal: io.journal });
  const config = await configure(io, log);
  if (config === undefined) return io.exit(EXIT.INVALID_CONFIG);

  const files = createStateStore(config.stateFile, log, io);
  const store = io.uid === 0 ? guardedStore(files) : files;
  const operator = createOperator({ store, log });
  // Without a checks file nothing of the checks is made, and probes read the state as it is.
  const checks =
    config.checksFile === undefined ? undefined : await checkLayer(config.checksFile, io, log);
  // Without HAPGENT_ETCD_ENDPOINTS nothing of etcd is loaded.
  const fleet = config.fleet === undefined ? undefined : await fleetLayer(config.fleet, io, log);
  if (fleet === null) return io.exit(EXIT.INVALID_CONFIG);
  const layers = composeLayers(checks, fleet);
  const { replies, ledger, probes, server } = agentPort(config, operator, layers, log);
  let control: ControlServer | undefined;
  let metrics: MetricsServer | undefined;
  const stop = stopper(io, log, operator, async () => {
    checks?.stop();
    fleet?.stop();
    await Promise.all([server.close(), control?.close(), metrics?.close()]);
  });
  const handle = (signal: DaemonSignal): void => {
    if (signal === "SIGTERM" || signal === "SIGINT") void stop.now(signal);
    else {
      void operator.command(SIGNAL_COMMANDS[signal], signal);
      if (signal === "SIGHUP") void checks?.load(signal);
    }
  };

  // Before any save can start: a save's own temporary file must never be taken for stale.
  await store.removeStaleTemporaries();
  // Queued before any signal, so the signals that came early apply on top of the file, in order.
  const loaded = operator.command("reload", "start-up");
  if (!io.inspector.requested) guardDebugger(io, log, handle);
  io.onSignal(handle);
  await Promise.all([
    readOrGiveUp(
      loaded,
      `state file ${config.stateFile}`,
      `answering {"status":"MAINT"} until it can be, then its state`,
      log,
    ),
    checks &&
      readOrGiveUp(
        checks.load("start-up"),
        `checks file ${config.checksFile}`,
        "answering MAINT until it can be, then as its checks say",
        log,
      ),
    fleet?.start(),
  ]);
  if (stop.stopping) return;

  // Before the agent port: an agent that cannot serve its metrics never answers a probe, so it
  // does not come and go while systemd restarts it.
  if (config.metrics !== undefined) {
    const parts = { operator, checks, fleet, layers, ledger, probes };
    metrics = await metricsOrExit(io, config.metrics, parts, log);
    if (metrics === undefined) return;
    if (stop.stopping) return void metrics.close();
  }
  const address = await listenOrExit(io, config, server, metrics, log);
  if (address === undefined) return;
  const handlers = controlHandlers({ operator, ledger, replies, checks, fleet, now: Date.now });
  control = await startControl(config.controlSocket, io.uid, handlers, log);
  if (control !== undefined) removeAtExit(io, config.controlSocket);
  // A TERM during start-up closed the sockets before this one existed: closing it removes it.
  if (stop.stopping) return void control?.close();
  log.notice(
    `hapgent ${VERSION} (Node ${io.nodeVersion}) listening on ${address}${control ? `, control socket ${config.controlSocket}` : ""}${metrics ? `, metrics on http://${metrics.address}/metrics` : ""}, state file ${config.stateFile}, state ${formatState(operator.state)}`,
  );
}

/**
 * Closes the debugger a SIGUSR1 opened before the daemon could handle it, and applies that
 * SIGUSR1.
 */
function guardDebugger(io: DaemonIo, log: Logger, handle: (signal: DaemonSignal) => void): void {
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

/** The metrics listener, or undefined after logging why there is none and exiting. */
async function metricsOrExit(
  io: DaemonIo,
  address: MetricsAddress,
  parts: Omit<MetricsParts, "nodeVersion">,
  log: Logger,
): Promise<MetricsServer | undefined> {
  try {
    return await serveMetrics(address, { ...parts, nodeVersion: io.nodeVersion }, log);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    log.error(describeMetricsListenError(address, code));
    // A missing module is not fixed by a restart; a busy port may be.
    io.exit(code === "ERR_MODULE_NOT_FOUND" ? EXIT.INVALID_CONFIG : EXIT.CANNOT_LISTEN);
    return undefined;
  }
}

/** The agent port's address once it listens, or undefined after logging why not and exiting. */
async function listenOrExit(
  io: DaemonIo,
  config: Config,
  server: AgentServer,
  metrics: MetricsServer | undefined,
  log: Logger,
): Promise<string | undefined> {
  try {
    const bound = await server.listen(config.host, config.port);
    return formatAddress(bound.address, bound.port);
  } catch (err) {
    log.error(describeListenError(config, (err as NodeJS.ErrnoException).code));
    await metrics?.close();
    io.exit(EXIT.CANNOT_LISTEN);
    return undefined;
  }
}

/**
 * A state or checks file that cannot be read at start-up for a reason other than the file
 * (EMFILE, EIO …) is read again and again; the agent listens only once it is, or after this long,
 * since an agent that does not answer leaves HAProxy's view of the server as it was, which a MAINT
 * would not.
 */
export const START_READ_WAIT_MS = 5000;

/**
 * Resolves when `file` was read at start-up, or after START_READ_WAIT_MS, said in the log with
 * what is answered `meanwhile`.
 */
async function readOrGiveUp(
  loaded: Promise<void>,
  file: string,
  meanwhile: string,
  log: Logger,
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const waited = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), START_READ_WAIT_MS);
  });
  const gaveUp = await Promise.race([loaded.then(() => false), waited]);
  clearTimeout(timer);
  if (gaveUp) {
    log.warning(
      `start-up: ${file} could not be read within ${START_READ_WAIT_MS / 1000} s; ${meanwhile}`,
    );
  }
}

/** How a probe's answer is composed when other layers than the operator's have a say. */
interface Layers {
  readonly answer: (state: State, name: string | undefined) => ServiceState;
  /** Goes up whenever an answer may have changed without the state changing. */
  readonly generation: () => number;
}

/** The operator's state with the checks' verdicts and the fleet's word; undefined: neither. */
function composeLayers(
  checks: CheckLayer | undefined,
  fleet: FleetLayer | undefined,
): Layers | undefined {
  if (checks === undefined && fleet === undefined) return undefined;
  return {
    answer: (state, name) =>
      answerFor(state, name, checks?.verdicts() ?? NO_VERDICTS, fleet?.verdict),
    generation: () => (checks?.generation() ?? 0) + (fleet?.generation() ?? 0),
  };
}

/** The agent port: its replies, and the ledger of the load balancers that poll it. */
function agentPort(config: Config, operator: Operator, layers: Layers | undefined, log: Logger) {
  const replies = createReplies({
    current: () => operator.state,
    ...(layers === undefined ? {} : { answer: layers.answer, generation: layers.generation }),
    log,
    sendWaitMs: config.sendWaitMs,
  });
  const ledger = createLedger({ now: Date.now });
  // Probes answered per service, only for metrics: as many keys as the files named services.
  const probes = config.metrics === undefined ? undefined : new Map<string, number>();
  const server = createAgentServer({
    reply: replies.lineFor,
    awaitsName: replies.awaitsName,
    nameWaitMs: config.sendWaitMs,
    onServerError: (err) => log.warning(`accepting a connection failed: ${err.message}`),
    observer: {
      probed: (address, name, reply, atMs, heard) => {
        const service = replies.serviceOf(name);
        if (probes !== undefined) probes.set(service, (probes.get(service) ?? 0) + 1);
        ledger.record(peerAddress(address), service, reply as Uint8Array, atMs, heard);
      },
    },
  });
  return { replies, ledger, probes, server };
}

/** HAPGENT_CHECKS_FILE: the checks, and Node's HTTP client they use, are loaded only now. */
async function checkLayer(path: string, io: DaemonIo, log: Logger): Promise<CheckLayer> {
  const { createCheckLayer } = await import("./checks/layer.js");
  return createCheckLayer({ path, uid: io.uid, kill: io.kill, log });
}

/**
 * HAPGENT_ETCD_ENDPOINTS: the fleet's layer and its etcd client are loaded only now. Null when
 * its credentials cannot be used: a configuration error, logged.
 */
async function fleetLayer(
  fleet: FleetConfig,
  io: DaemonIo,
  log: Logger,
): Promise<FleetLayer | null> {
  const uid = io.uid;
  const options = await etcdOptions(fleet, uid, FLEET_REQUEST_TIMEOUT_MS);
  if (!options.ok) {
    log.error(options.reason);
    return null;
  }
  const file = createTextFile(fleet.cacheFile, log, io);
  const cache =
    uid === 0 ? guardedTextFile(file, fleet.cacheFile, "HAPGENT_ETCD_CACHE_FILE") : file;
  const { createFleetLayer } = await import("./fleet/layer.js");
  return createFleetLayer({ config: fleet, options: options.options, log, cache });
}

/** How long one request to etcd may take before its endpoint counts as unreachable. */
const FLEET_REQUEST_TIMEOUT_MS = 2000;

/** What the metrics are read from. */
interface MetricsParts {
  readonly nodeVersion: string;
  readonly operator: Operator;
  readonly checks: CheckLayer | undefined;
  readonly fleet: FleetLayer | undefined;
  readonly layers: Layers | undefined;
  readonly ledger: Ledger;
  readonly probes: ReadonlyMap<string, number> | undefined;
}

/** HAPGENT_METRICS: prom-client and its listener are loaded only now. */
async function serveMetrics(
  address: MetricsAddress,
  parts: MetricsParts,
  log: Logger,
): Promise<MetricsServer> {
  const { nodeVersion, operator, checks, fleet, layers, ledger, probes } = parts;
  const { startMetrics } = await import("./metrics.js");
  return startMetrics(
    address,
    {
      nodeVersion,
      state: () => operator.state,
      answer: layers?.answer,
      generation: layers?.generation,
      stats: () => operator.stats,
      probes: () => probes ?? new Map(),
      pollers: () => ledger.pollers(),
      checks: checks === undefined ? undefined : () => checks.views(),
      fleet: fleet === undefined ? undefined : () => fleet.view(),
    },
    log,
  );
}

/** The peer's address as operators write it: an IPv4 client of a `::` listener without ::ffff:. */
function peerAddress(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}

const SIGNAL_COMMANDS = { SIGUSR1: "up", SIGUSR2: "down", SIGHUP: "reload" } as const;

/** The configuration, or undefined after logging why there is none to run with. */
async function configure(io: DaemonIo, log: Logger): Promise<Config | undefined> {
  // Before any error: a misspelt name is often why a value is not the one expected.
  for (const unknown of unknownVariables(io.env)) log.warning(describeUnknownVariable(unknown));
  const configured = parseConfig(io.env, io.cwd, io.uid);
  if (!configured.ok) {
    log.error(configured.reason);
    return undefined;
  }
  if (io.uid === 0) {
    const { stateFile, fleet } = configured.config;
    for (const [variable, path] of [
      ["HAPGENT_STATE_FILE", stateFile],
      ["HAPGENT_ETCD_CACHE_FILE", fleet?.cacheFile],
    ] as const) {
      if (path === undefined) continue;
      const refused = await refuseForeignPath(path, variable);
      if (refused !== undefined) {
        log.error(refused);
        return undefined;
      }
    }
  }
  return configured.config;
}

/**
 * Removes the control socket at any exit: TERM closes it (which removes it), but an internal
 * error exits at once, and a socket left behind is one more file in /run for nothing. Only the
 * socket this daemon made: a path that now names another file is left alone.
 */
function removeAtExit(io: DaemonIo, path: string): void {
  let made: { dev: number; ino: number };
  try {
    const { dev, ino } = lstatSync(path);
    made = { dev, ino };
  } catch {
    return;
  }
  io.atExit(() => {
    try {
      const now = lstatSync(path);
      if (now.dev === made.dev && now.ino === made.ino) unlinkSync(path);
    } catch {
      // Removed already, by the close.
    }
  });
}

/** TERM and INT: close the socket, let signals in flight and a pending save finish, exit 0. */
function stopper(io: DaemonIo, log: Logger, operator: Operator, closeSockets: () => Promise<void>) {
  let stopping = false;
  return {
    get stopping() {
      return stopping;
    },
    async now(signal: DaemonSignal): Promise<void> {
      if (stopping) return;
      stopping = true;
      log.notice(`${signal}: stopping`);
      // Not unref()'d: with the socket closed they are what keeps the process until it exits.
      const timeout = new Promise((resolve) => setTimeout(resolve, SHUTDOWN_SAVE_WAIT_MS));
      const grace = new Promise((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS));
      const finish = async () => {
        await Promise.all([closeSockets(), grace]);
        await operator.settled();
      };
      await Promise.race([finish(), timeout]);
      log.notice(`stopped with state ${formatState(operator.state)}`);
      io.exit(EXIT.OK);
    },
  };
}
