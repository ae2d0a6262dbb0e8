/**
 * The daemon's configuration, from environment variables. Pure: the environment is passed in.
 */
import { isIP } from "node:net";
import { resolve } from "node:path";

/** Where a process stands: what both the daemon and a command start from. */
export interface ProcessContext {
  readonly env: Readonly<Record<string, string | undefined>>;
  /** The working directory, against which relative paths are taken. */
  readonly cwd: string;
  /** The real uid it runs as. */
  readonly uid: number;
}

export interface Config {
  readonly host: string;
  readonly port: number;
  /** Absolute, so a HUP re-reads the same file whatever the working directory became. */
  readonly stateFile: string;
  /** How long a probe may take to send its agent-send line when the file names services. */
  readonly sendWaitMs: number;
  /** The control socket's path, absolute. */
  readonly controlSocket: string;
  /** Where to serve Prometheus metrics (HAPGENT_METRICS); undefined: no listener at all. */
  readonly metrics: MetricsAddress | undefined;
  /** The agent's own checks (HAPGENT_CHECKS_FILE), absolute; undefined: no checks at all. */
  readonly checksFile: string | undefined;
}

export interface MetricsAddress {
  readonly host: string;
  readonly port: number;
}

export type ConfigResult =
  | { readonly ok: true; readonly config: Config }
  | {
      readonly ok: false;
      /** The whole sentence: the variable, its value and what was expected. */
      readonly reason: string;
      readonly variable: Variable;
      readonly value: string;
      readonly expected: string;
    };

export const DEFAULTS = Object.freeze({
  HAPGENT_IP: "0.0.0.0",
  HAPGENT_PORT: "9777",
  HAPGENT_STATE_FILE: "/etc/hapgent/state.json",
  HAPGENT_SEND_WAIT_MS: "100",
  /** Empty: derived from the port and where the process may keep run-time files. */
  HAPGENT_CONTROL_SOCKET: "",
  /** Empty: no metrics listener. */
  HAPGENT_METRICS: "",
  /** Empty: no checks. */
  HAPGENT_CHECKS_FILE: "",
});

/** Linux's limit on a Unix socket's path (sun_path, less its terminating NUL). */
const MAX_SOCKET_PATH_BYTES = 107;

/** Longer would hold every probe of a server without agent-send past HAProxy's usual timeout. */
const SEND_WAIT_MAX_MS = 5000;

export type Variable = keyof typeof DEFAULTS;

/**
 * Reads HAPGENT_IP, HAPGENT_PORT, HAPGENT_STATE_FILE, HAPGENT_SEND_WAIT_MS,
 * HAPGENT_CONTROL_SOCKET, HAPGENT_METRICS and HAPGENT_CHECKS_FILE, for a process running as
 * `uid`. An unset or empty variable takes its default. The reason of a failure names the variable, its value and what was expected.
 */
export function parseConfig(
  env: Readonly<Record<string, string | undefined>>,
  cwd: string,
  uid: number,
): ConfigResult {
  const value = (name: Variable): string => {
    const raw = env[name];
    return raw === undefined || raw === "" ? DEFAULTS[name] : raw;
  };

  const host = value("HAPGENT_IP");
  if (isIP(host) === 0) {
    return invalid(
      "HAPGENT_IP",
      host,
      "an IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1, :: or ::1",
    );
  }
  const portText = value("HAPGENT_PORT");
  const port = /^[1-9][0-9]{0,4}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 1 && port <= 65535)) {
    return invalid("HAPGENT_PORT", portText, "an integer 1-65535");
  }
  const stateFile = value("HAPGENT_STATE_FILE");
  if (stateFile.includes("\0")) {
    return invalid("HAPGENT_STATE_FILE", stateFile, "a file path without NUL bytes");
  }
  const waitText = value("HAPGENT_SEND_WAIT_MS");
  const sendWaitMs = /^[1-9][0-9]{0,3}$/.test(waitText) ? Number(waitText) : Number.NaN;
  if (!(sendWaitMs >= 1 && sendWaitMs <= SEND_WAIT_MAX_MS)) {
    return invalid(
      "HAPGENT_SEND_WAIT_MS",
      waitText,
      `an integer number of milliseconds 1-${SEND_WAIT_MAX_MS}`,
    );
  }
  const socketText = value("HAPGENT_CONTROL_SOCKET");
  const controlSocket =
    socketText === "" ? defaultControlSocket(env, uid, port) : resolve(cwd, socketText);
  if (socketText.includes("\0") || Buffer.byteLength(controlSocket) > MAX_SOCKET_PATH_BYTES) {
    return invalid(
      "HAPGENT_CONTROL_SOCKET",
      socketText,
      `a path of at most ${MAX_SOCKET_PATH_BYTES} bytes, without NUL bytes`,
    );
  }
  const metricsText = value("HAPGENT_METRICS");
  const metrics = metricsText === "" ? undefined : parseListenAddress(metricsText);
  if (metrics === null || metrics?.port === port) {
    return invalid(
      "HAPGENT_METRICS",
      metricsText,
      `ADDRESS:PORT to serve metrics on, such as 127.0.0.1:9778, 0.0.0.0:9778 or [::1]:9778, with a port 1-65535 other than HAPGENT_PORT's (${port}); or empty for none`,
    );
  }
  const checksText = value("HAPGENT_CHECKS_FILE");
  if (checksText.includes("\0")) {
    return invalid(
      "HAPGENT_CHECKS_FILE",
      checksText,
      "a file path without NUL bytes, or empty for none",
    );
  }
  const checksFile = checksText === "" ? undefined : resolve(cwd, checksText);
  return {
    ok: true,
    config: {
      host,
      port,
      stateFile: resolve(cwd, stateFile),
      sendWaitMs,
      controlSocket,
      metrics,
      checksFile,
    },
  };
}

/** `127.0.0.1:9777`, `[::1]:9777`: an address and port as operators write them. */
export function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** `192.0.2.1:80` or `[2001:db8::1]:80`; null when it is neither. */
export function parseListenAddress(text: string): MetricsAddress | null {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):([1-9][0-9]{0,4})$/.exec(text);
  if (match === null) return null;
  const host = match[1] ?? match[2] ?? "";
  const port = Number(match[3]);
  const family = isIP(host);
  // A bracketed address must be IPv6; an unbracketed one IPv4 (IPv6 needs brackets before :PORT).
  if (family !== (match[1] === undefined ? 4 : 6) || port > 65535) return null;
  return { host, port };
}

/**
 * Where a daemon on `port` keeps its control socket, so that a command given the same
 * environment finds it and two daemons on one host never share one: systemd's RuntimeDirectory
 * (/run/hapgent under the unit), else /run/hapgent for root, else the user's XDG_RUNTIME_DIR, else
 * a directory of the user's own in /tmp.
 */
export function defaultControlSocket(
  env: Readonly<Record<string, string | undefined>>,
  uid: number,
  port: number,
): string {
  const runtime = env.RUNTIME_DIRECTORY?.split(":")[0];
  if (runtime) return `${runtime}/${port}.sock`;
  if (uid === 0) return `/run/hapgent/${port}.sock`;
  if (env.XDG_RUNTIME_DIR) return `${env.XDG_RUNTIME_DIR}/hapgent/${port}.sock`;
  return `/tmp/hapgent-${uid}/${port}.sock`;
}

/**
 * Explains why the agent could not listen, naming the variable to change. `code` is Node's
 * error code from listen().
 */
export function describeListenError(
  config: Pick<Config, "host" | "port">,
  code: string | undefined,
): string {
  const ip = `HAPGENT_IP=${JSON.stringify(config.host)}`;
  const port = `HAPGENT_PORT=${JSON.stringify(String(config.port))}`;
  switch (code) {
    case "EADDRINUSE":
      return `${port} is already in use on ${config.host}; expected a free port (is another hapgent running?)`;
    case "EADDRNOTAVAIL":
      return `${ip} is not an address of this host; expected a local address, or 0.0.0.0 or :: for all`;
    case "EACCES":
    case "EPERM":
      return `${port} needs privileges to bind; expected a port above 1023, or the CAP_NET_BIND_SERVICE capability`;
    case "EAFNOSUPPORT":
      return `${ip} is of an address family this host does not support; expected an IPv4 address or IPv6 enabled`;
    default:
      return `cannot listen on ${ip} ${port}: ${code ?? "unknown error"}; expected a local address and a free port`;
  }
}

function invalid(variable: Variable, value: string, expected: string): ConfigResult {
  return {
    ok: false,
    reason: `${variable}=${JSON.stringify(value)} is invalid; expected ${expected}`,
    variable,
    value,
    expected,
  };
}

/** Explains why the metrics listener could not listen; `code` is Node's error code. */
export function describeMetricsListenError(
  address: MetricsAddress,
  code: string | undefined,
): string {
  const variable = `HAPGENT_METRICS=${JSON.stringify(formatAddress(address.host, address.port))}`;
  switch (code) {
    case "EADDRINUSE":
      return `${variable}: the port is already in use; expected a free port for metrics`;
    case "EADDRNOTAVAIL":
      return `${variable}: not an address of this host; expected a local address, or 0.0.0.0 or [::] for all`;
    case "EACCES":
    case "EPERM":
      return `${variable}: the port needs privileges to bind; expected a port above 1023`;
    case "ERR_MODULE_NOT_FOUND":
      return `${variable}: prom-client, which serves the metrics, is not installed; expected hapgent installed with its dependencies (npm install), or HAPGENT_METRICS unset`;
    default:
      return `${variable}: cannot listen: ${code ?? "unknown error"}; expected a local address and a free port`;
  }
}
