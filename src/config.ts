/**
 * The daemon's configuration, from environment variables. Pure: the environment is passed in.
 */
import { isIP } from "node:net";
import { basename, dirname, join, resolve } from "node:path";
import { isFleetKey, MAX_FLEET_KEYS } from "./core/fleet.js";
import { printable } from "./core/state.js";

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
  /** The fleet's word from etcd (HAPGENT_ETCD_*); undefined: nothing of etcd is loaded. */
  readonly fleet: FleetConfig | undefined;
}

/** Where the fleet's word is kept and how to reach it. */
export interface FleetConfig extends EtcdAccess {
  /** Most specific first; the first that exists speaks for this host. */
  readonly keys: readonly string[];
  /** The last word, kept on disk so a restart without etcd keeps it; absolute. */
  readonly cacheFile: string;
}

/** How to reach etcd: its endpoints and the credentials, as paths or the password itself. */
export interface EtcdAccess {
  readonly endpoints: readonly URL[];
  readonly username: string | undefined;
  /** The password itself (HAPGENT_ETCD_PASSWORD) or the file that holds it. */
  readonly password: { readonly text: string } | { readonly file: string } | undefined;
  readonly caFile: string | undefined;
  readonly certFile: string | undefined;
  readonly keyFile: string | undefined;
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
  /** Empty: no fleet; nothing of etcd is loaded. */
  HAPGENT_ETCD_ENDPOINTS: "",
  HAPGENT_ETCD_KEYS: "",
  /** Empty: beside the state file, state.fleet.json for state.json. */
  HAPGENT_ETCD_CACHE_FILE: "",
  HAPGENT_ETCD_USERNAME: "",
  HAPGENT_ETCD_PASSWORD: "",
  HAPGENT_ETCD_PASSWORD_FILE: "",
  HAPGENT_ETCD_CA_FILE: "",
  HAPGENT_ETCD_CERT_FILE: "",
  HAPGENT_ETCD_KEY_FILE: "",
});

/**
 * `HAPGENT_*` names that are not the agent's and not misspellings of its own, so never warned of:
 * what the agent sets for its command checks, and what the build, packaging and CI scripts read.
 * Names beginning HAPGENT_TEST_ are the test suite's (HAPGENT_TEST_BINARY, HAPGENT_TEST_HAPROXY).
 */
export const FOREIGN_VARIABLES: readonly string[] = Object.freeze([
  "HAPGENT_CHECK",
  "HAPGENT_CACHE_DIR",
  "HAPGENT_CI_UNPRIVILEGED",
  "HAPGENT_DEBIAN_MIRROR",
  "HAPGENT_NODE24_PREFIX",
]);
const FOREIGN_PREFIX = "HAPGENT_TEST_";

/** Words operators write for a variable of another name, looked up as misspellings of it. */
const OTHER_NAMES: readonly (readonly [string, Variable])[] = [
  ["HAPGENT_ADDRESS", "HAPGENT_IP"],
  ["HAPGENT_HOST", "HAPGENT_IP"],
  ["HAPGENT_LISTEN", "HAPGENT_IP"],
  ["HAPGENT_STATE", "HAPGENT_STATE_FILE"],
  ["HAPGENT_CHECKS", "HAPGENT_CHECKS_FILE"],
  ["HAPGENT_SOCKET", "HAPGENT_CONTROL_SOCKET"],
];

/** A `HAPGENT_*` variable the agent does not read, and the one it may have been meant for. */
export interface UnknownVariable {
  readonly name: string;
  readonly suggestion: Variable | undefined;
}

/**
 * Every variable of `env` whose name begins HAPGENT_ (in any case) that is neither one the agent
 * reads nor a FOREIGN_VARIABLES name, sorted, each with the closest name it reads when one is close.
 */
export function unknownVariables(
  env: Readonly<Record<string, string | undefined>>,
): UnknownVariable[] {
  return Object.keys(env)
    .filter(
      (name) =>
        name.toUpperCase().startsWith("HAPGENT_") &&
        !Object.hasOwn(DEFAULTS, name) &&
        !FOREIGN_VARIABLES.includes(name) &&
        !name.startsWith(FOREIGN_PREFIX),
    )
    .sort()
    .map((name) => ({ name, suggestion: closestVariable(name) }));
}

/** `unknown variable HAPGENT_STATEFILE ignored; did you mean HAPGENT_STATE_FILE?` */
export function describeUnknownVariable({ name, suggestion }: UnknownVariable): string {
  const shown = printable(name);
  return suggestion === undefined
    ? `unknown variable ${shown} ignored; expected one of the variables hapgent --help lists`
    : `unknown variable ${shown} ignored; did you mean ${suggestion}?`;
}

/**
 * The variable `name` is closest to, by edit distance (a letter added, left out, changed or two
 * swapped), ignoring case; undefined when none is within a quarter of its length (at least 1).
 */
export function closestVariable(name: string): Variable | undefined {
  const upper = name.toUpperCase();
  // No variable is that long; a name that is costs no search.
  if (upper.length > MAX_SUGGESTED_NAME_CHARS) return undefined;
  const candidates: (readonly [string, Variable])[] = [
    ...(Object.keys(DEFAULTS) as Variable[]).map((v) => [v, v] as const),
    ...OTHER_NAMES,
  ];
  let best: { variable: Variable; distance: number } | undefined;
  for (const [spelling, variable] of candidates) {
    const distance = editDistance(upper, spelling);
    const allowed = Math.max(1, Math.floor((spelling.length - "HAPGENT_".length) / 4));
    if (distance <= allowed && (best === undefined || distance < best.distance)) {
      best = { variable, distance };
    }
  }
  return best?.variable;
}

const MAX_SUGGESTED_NAME_CHARS = 64;

/** Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps. */
export function editDistance(a: string, b: string): number {
  let before: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(
        (previous[j] ?? 0) + 1,
        (row[j - 1] ?? 0) + 1,
        (previous[j - 1] ?? 0) + cost,
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, (before[j - 2] ?? 0) + 1);
      }
      row.push(d);
    }
    before = previous;
    previous = row;
  }
  return previous[b.length] ?? 0;
}

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
  const fleet = parseFleetConfig(env, cwd, resolve(cwd, stateFile));
  if (fleet !== undefined && "variable" in fleet) return fleet;
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
      fleet,
    },
  };
}

/**
 * HAPGENT_ETCD_*: the fleet's endpoints, keys, cache and credentials; undefined when
 * HAPGENT_ETCD_ENDPOINTS and HAPGENT_ETCD_KEYS are both unset.
 */
export function parseFleetConfig(
  env: Readonly<Record<string, string | undefined>>,
  cwd: string,
  stateFile: string,
): FleetConfig | Invalid | undefined {
  const keysText = env.HAPGENT_ETCD_KEYS ?? "";
  const access = parseEtcdAccess(env, cwd);
  if (access === undefined) {
    return keysText === ""
      ? undefined
      : invalid(
          "HAPGENT_ETCD_ENDPOINTS",
          "",
          "etcd's client URLs, comma-separated (such as http://10.0.0.1:2379,http://10.0.0.2:2379), since HAPGENT_ETCD_KEYS is set",
        );
  }
  if ("variable" in access) return access;
  const keys = parseFleetKeys(keysText);
  if (keys === undefined || keys.length === 0) return invalidKeys(keysText);
  const cacheText = env.HAPGENT_ETCD_CACHE_FILE ?? "";
  if (cacheText.includes("\0")) {
    return invalid("HAPGENT_ETCD_CACHE_FILE", cacheText, "a file path without NUL bytes");
  }
  return {
    ...access,
    keys,
    cacheFile: cacheText === "" ? defaultCacheFile(stateFile) : resolve(cwd, cacheText),
  };
}

/** HAPGENT_ETCD_KEYS as a list (empty when unset); undefined when it is not one. */
export function parseFleetKeys(text: string): string[] | undefined {
  const keys = text === "" ? [] : text.split(",").map((key) => key.trim());
  return keys.length > MAX_FLEET_KEYS ||
    !keys.every(isFleetKey) ||
    new Set(keys).size !== keys.length
    ? undefined
    : keys;
}

export function invalidKeys(text: string): Invalid {
  return invalid(
    "HAPGENT_ETCD_KEYS",
    text,
    `1-${MAX_FLEET_KEYS} distinct etcd keys, comma-separated, most specific first, each starting with / and of printable ASCII (such as /hapgent/host/web-12,/hapgent/group/web,/hapgent/all)`,
  );
}

/**
 * How to reach etcd (HAPGENT_ETCD_ENDPOINTS and the credentials): what the daemon and
 * `hapgent fleet` share. Undefined when HAPGENT_ETCD_ENDPOINTS is unset.
 */
export function parseEtcdAccess(
  env: Readonly<Record<string, string | undefined>>,
  cwd: string,
): EtcdAccess | Invalid | undefined {
  const value = (name: Variable): string => {
    const raw = env[name];
    return raw === undefined || raw === "" ? DEFAULTS[name] : raw;
  };
  const endpointsText = value("HAPGENT_ETCD_ENDPOINTS");
  if (endpointsText === "") return undefined;
  const endpoints = parseEndpoints(endpointsText);
  if (endpoints === undefined) {
    return invalid(
      "HAPGENT_ETCD_ENDPOINTS",
      // A password written into a URL is never repeated in a log.
      endpointsText.replace(/\/\/[^/@,]*@/g, "//…@"),
      "etcd's client URLs, comma-separated, each http:// or https:// with a host and port and nothing else (credentials go in HAPGENT_ETCD_USERNAME and HAPGENT_ETCD_PASSWORD_FILE)",
    );
  }
  const username = value("HAPGENT_ETCD_USERNAME");
  const passwordText = env.HAPGENT_ETCD_PASSWORD ?? "";
  const passwordFile = value("HAPGENT_ETCD_PASSWORD_FILE");
  if (passwordText !== "" && passwordFile !== "") {
    return invalid(
      "HAPGENT_ETCD_PASSWORD_FILE",
      passwordFile,
      "only one of HAPGENT_ETCD_PASSWORD and HAPGENT_ETCD_PASSWORD_FILE",
    );
  }
  if ((passwordText !== "" || passwordFile !== "") !== (username !== "")) {
    return invalid(
      "HAPGENT_ETCD_USERNAME",
      username,
      "a user name exactly when HAPGENT_ETCD_PASSWORD or HAPGENT_ETCD_PASSWORD_FILE is set",
    );
  }
  const files: Partial<Record<Variable, string>> = {};
  for (const name of [
    "HAPGENT_ETCD_PASSWORD_FILE",
    "HAPGENT_ETCD_CA_FILE",
    "HAPGENT_ETCD_CERT_FILE",
    "HAPGENT_ETCD_KEY_FILE",
  ] as const) {
    const text = value(name);
    if (text.includes("\0")) return invalid(name, text, "a file path without NUL bytes");
    if (text !== "") files[name] = resolve(cwd, text);
  }
  if (
    (files.HAPGENT_ETCD_CERT_FILE === undefined) !==
    (files.HAPGENT_ETCD_KEY_FILE === undefined)
  ) {
    return invalid(
      "HAPGENT_ETCD_CERT_FILE",
      value("HAPGENT_ETCD_CERT_FILE"),
      "a client certificate together with its key (HAPGENT_ETCD_KEY_FILE), or neither",
    );
  }
  return {
    endpoints,
    username: username === "" ? undefined : username,
    password:
      passwordText !== ""
        ? { text: passwordText }
        : files.HAPGENT_ETCD_PASSWORD_FILE !== undefined
          ? { file: files.HAPGENT_ETCD_PASSWORD_FILE }
          : undefined,
    caFile: files.HAPGENT_ETCD_CA_FILE,
    certFile: files.HAPGENT_ETCD_CERT_FILE,
    keyFile: files.HAPGENT_ETCD_KEY_FILE,
  };
}

/** state.json -> state.fleet.json beside it; another name gets .fleet.json added. */
export function defaultCacheFile(stateFile: string): string {
  const name = basename(stateFile);
  const stem = name.endsWith(".json") ? name.slice(0, -".json".length) : name;
  return join(dirname(stateFile), `${stem}.fleet.json`);
}

/** Client URLs, without credentials, paths or queries; undefined when any is not one. */
function parseEndpoints(text: string): URL[] | undefined {
  const urls: URL[] = [];
  for (const part of text.split(",")) {
    let url: URL;
    try {
      url = new URL(part.trim());
    } catch {
      return undefined;
    }
    if (
      (url.protocol !== "http:" && url.protocol !== "https:") ||
      url.hostname === "" ||
      url.username !== "" ||
      url.password !== "" ||
      (url.pathname !== "/" && url.pathname !== "") ||
      url.search !== "" ||
      url.hash !== ""
    ) {
      return undefined;
    }
    urls.push(url);
  }
  return urls.length === 0 || urls.length > 16 ? undefined : urls;
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

type Invalid = ConfigResult & { ok: false };

function invalid(variable: Variable, value: string, expected: string): Invalid {
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
