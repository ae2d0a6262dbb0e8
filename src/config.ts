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
});

/** Longer would hold every probe of a server without agent-send past HAProxy's usual timeout. */
const SEND_WAIT_MAX_MS = 5000;

export type Variable = keyof typeof DEFAULTS;

/**
 * Reads HAPGENT_IP, HAPGENT_PORT, HAPGENT_STATE_FILE and HAPGENT_SEND_WAIT_MS. An unset or empty variable takes its
 * default. The reason of a failure names the variable, its value and what was expected.
 */
export function parseConfig(
  env: Readonly<Record<string, string | undefined>>,
  cwd: string,
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
  return {
    ok: true,
    config: { host, port, stateFile: resolve(cwd, stateFile), sendWaitMs },
  };
}

/**
 * Explains why the agent could not listen, naming the variable to change. `code` is Node's
 * error code from listen().
 */
export function describeListenError(config: Config, code: string | undefined): string {
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
