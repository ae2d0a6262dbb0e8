/**
 * The checks file (HAPGENT_CHECKS_FILE): the agent's own checks of the service it fronts, each
 * with what its results mean for the reply. Read and validated here, with the same strictness as
 * the state file: every mistake is a reason, never a silent default. Pure.
 */
import { parseJsonFile } from "./json.js";
import { isServiceName, isStatus, printable, STATUSES, type Status } from "./state.js";

export interface HttpAction {
  readonly kind: "http";
  /** http: or https:, as given. */
  readonly url: string;
}
export interface TcpAction {
  readonly kind: "tcp";
  readonly host: string;
  readonly port: number;
}
export interface ExecAction {
  readonly kind: "exec";
  /** argv; argv[0] an absolute path. No shell. */
  readonly argv: readonly string[];
}
export interface ShellAction {
  readonly kind: "shell";
  /** Run with /bin/sh -c, only when the file asks for a shell. */
  readonly command: string;
}
export type Action = HttpAction | TcpAction | ExecAction | ShellAction;

export interface Check {
  readonly name: string;
  /** The service whose reply it rules; the instance (and so every service) when absent. */
  readonly service: string | undefined;
  readonly action: Action;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  /** Passes in a row that bring a failing check back; failures in a row that make it fail. */
  readonly rise: number;
  readonly fall: number;
  /**
   * What a result means: HTTP status codes or classes (`503`, `5xx`) or exit codes (`0`, `2`),
   * and `default` for everything else (for HTTP, timeouts and refused connections too).
   */
  readonly results: ReadonlyMap<string, Status>;
}

export type ChecksResult =
  | { readonly ok: true; readonly checks: readonly Check[] }
  | { readonly ok: false; readonly reason: string };

export const MAX_CHECKS = 32;
export const MAX_CHECKS_FILE_BYTES = 64 * 1024;
const MIN_INTERVAL_MS = 100;
const MIN_COMMAND_INTERVAL_MS = 1000;
const MAX_INTERVAL_MS = 3_600_000;
const MIN_TIMEOUT_MS = 10;
const MAX_RISE_FALL = 100;
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const ACTION_KINDS = ["http", "tcp", "exec", "shell"] as const;
const FIELDS = [
  "name",
  ...ACTION_KINDS,
  "service",
  "interval",
  "timeout",
  "rise",
  "fall",
  "results",
] as const;

/** HAProxy's defaults for inter, rise and fall; a timeout well inside the interval. */
export const CHECK_DEFAULTS = Object.freeze({
  intervalMs: 2000,
  timeoutMs: 1000,
  rise: 2,
  fall: 3,
});

/** What results mean unless the file says otherwise. */
const DEFAULT_RESULTS: Readonly<Record<"http" | "tcp" | "exec" | "shell", Record<string, Status>>> =
  {
    // A service that says it is shutting down (503) is drained: its sessions finish.
    http: { "2xx": "UP", "503": "DRAIN", default: "DOWN" },
    tcp: { default: "DOWN" },
    exec: { "0": "UP", default: "DOWN" },
    shell: { "0": "UP", default: "DOWN" },
  };

/** Parses the bytes of a checks file. Never throws. */
export function parseChecks(bytes: Uint8Array): ChecksResult {
  const read = parseJsonFile(bytes, MAX_CHECKS_FILE_BYTES);
  if (!read.ok) return fail(read.reason);
  const { value } = read;
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail('the file must be a JSON object such as {"checks":[…]}');
  }
  const extra = Object.keys(value).find((key) => key !== "checks");
  if (extra !== undefined) return fail(`unknown field ${JSON.stringify(extra)}; expected checks`);
  const list = (value as Record<string, unknown>).checks;
  if (!Array.isArray(list)) return fail("checks must be a JSON array of checks");
  if (list.length > MAX_CHECKS) {
    return fail(`checks has ${list.length} entries; expected at most ${MAX_CHECKS}`);
  }
  const checks: Check[] = [];
  for (const [i, entry] of list.entries()) {
    const check = validateCheck(entry);
    if (typeof check === "string") return fail(`checks[${i}]: ${check}`);
    if (checks.some((other) => other.name === check.name)) {
      return fail(`checks[${i}]: name ${JSON.stringify(check.name)} is used twice`);
    }
    checks.push(check);
  }
  return { ok: true, checks };
}

/** One check, or what is wrong with it. */
function validateCheck(value: unknown): Check | string {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return "a check must be a JSON object";
  }
  const record = value as Record<string, unknown>;
  const unknown = Object.keys(record).find((key) => !(FIELDS as readonly string[]).includes(key));
  if (unknown !== undefined) {
    return `unknown field ${JSON.stringify(unknown)}; expected only ${FIELDS.join(", ")}`;
  }
  const { name, service } = record;
  if (typeof name !== "string" || !NAME.test(name)) {
    return `name must be 1-64 letters, digits, "_", "." or "-", got ${shown(name)}`;
  }
  const where = (text: string) => `${name}: ${text}`;
  const kinds = ACTION_KINDS.filter((kind) => kind in record);
  if (kinds.length !== 1) {
    return where(`give exactly one of ${ACTION_KINDS.join(", ")}; got ${kinds.length}`);
  }
  const kind = kinds[0] as (typeof ACTION_KINDS)[number];
  const action = validateAction(kind, record[kind]);
  if (typeof action === "string") return where(action);
  if (service !== undefined && !(typeof service === "string" && isServiceName(service))) {
    return where(
      `service must be a service name as HAProxy sends it with agent-send, got ${shown(service)}`,
    );
  }
  const intervalMs = duration(record.interval, CHECK_DEFAULTS.intervalMs);
  if (intervalMs === undefined || intervalMs < MIN_INTERVAL_MS || intervalMs > MAX_INTERVAL_MS) {
    return where(
      `interval must be a duration from 100ms to 1h such as "2s" or "500ms", got ${shown(record.interval)}`,
    );
  }
  // Starting a process blocks the agent for a few milliseconds: commands run once a second at most.
  if ((kind === "exec" || kind === "shell") && intervalMs < MIN_COMMAND_INTERVAL_MS) {
    return where(`interval must be at least 1s for a command, got ${shown(record.interval)}`);
  }
  const timeoutMs = duration(record.timeout, Math.min(CHECK_DEFAULTS.timeoutMs, intervalMs));
  if (timeoutMs === undefined || timeoutMs < MIN_TIMEOUT_MS || timeoutMs > intervalMs) {
    return where(
      `timeout must be a duration from 10ms to the interval, got ${shown(record.timeout)}`,
    );
  }
  const rise = count(record.rise, CHECK_DEFAULTS.rise);
  const fall = count(record.fall, CHECK_DEFAULTS.fall);
  if (rise === undefined)
    return where(`rise must be an integer 1-${MAX_RISE_FALL}, got ${shown(record.rise)}`);
  if (fall === undefined)
    return where(`fall must be an integer 1-${MAX_RISE_FALL}, got ${shown(record.fall)}`);
  const results = validateResults(kind, record.results);
  if (typeof results === "string") return where(results);
  return Object.freeze({
    name,
    service: service as string | undefined,
    action,
    intervalMs,
    timeoutMs,
    rise,
    fall,
    results,
  });
}

function validateAction(kind: (typeof ACTION_KINDS)[number], value: unknown): Action | string {
  switch (kind) {
    case "http": {
      let url: URL | undefined;
      try {
        url = typeof value === "string" ? new URL(value) : undefined;
      } catch {
        url = undefined;
      }
      if (url === undefined || (url.protocol !== "http:" && url.protocol !== "https:")) {
        return `http must be an http:// or https:// URL, got ${shown(value)}`;
      }
      if (url.username !== "" || url.password !== "") {
        return "http must not hold a user or password: it would show in logs and status";
      }
      return { kind, url: url.href };
    }
    case "tcp": {
      const match =
        typeof value === "string"
          ? /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):([0-9]{1,5})$/.exec(value)
          : null;
      const port = match === null ? Number.NaN : Number(match[3]);
      if (match === null || !(port >= 1 && port <= 65535)) {
        return `tcp must be HOST:PORT such as "127.0.0.1:5432" or "[::1]:5432", got ${shown(value)}`;
      }
      return { kind, host: (match[1] ?? match[2]) as string, port };
    }
    case "exec": {
      if (
        !Array.isArray(value) ||
        value.length === 0 ||
        value.length > 64 ||
        !value.every((arg) => typeof arg === "string" && arg.length <= 4096 && !arg.includes("\0"))
      ) {
        return "exec must be a command as a JSON array of strings, the program first";
      }
      if (!(value[0] as string).startsWith("/")) {
        return `exec: the program must be an absolute path (no shell, no PATH lookup), got ${shown(value[0])}`;
      }
      return { kind, argv: Object.freeze([...(value as string[])]) };
    }
    case "shell": {
      if (
        typeof value !== "string" ||
        value.trim() === "" ||
        value.length > 4096 ||
        value.includes("\0")
      ) {
        return "shell must be a command line for /bin/sh -c";
      }
      return { kind, command: value };
    }
  }
}

function validateResults(
  kind: (typeof ACTION_KINDS)[number],
  value: unknown,
): ReadonlyMap<string, Status> | string {
  const results = new Map(Object.entries(DEFAULT_RESULTS[kind]));
  if (value === undefined) return results;
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return "results must be a JSON object of result to status";
  }
  const keys =
    kind === "http"
      ? /^(?:[1-5][0-9][0-9]|[1-5]xx|default)$/
      : kind === "tcp"
        ? /^default$/
        : /^(?:[0-9]{1,3}|default)$/;
  for (const [key, status] of Object.entries(value)) {
    if (!keys.test(key)) {
      const expected =
        kind === "http"
          ? 'HTTP status codes ("503"), classes ("5xx") or "default"'
          : kind === "tcp"
            ? '"default" (a connection either opens or not)'
            : 'exit codes ("0"-"255") or "default"';
      return `results: ${shown(key)} is not a result; expected ${expected}`;
    }
    if (!isStatus(status)) {
      return `results: ${key} must map to one of ${STATUSES.join(", ")}, got ${shown(status)}`;
    }
    results.set(key, status);
  }
  return results;
}

/** What a result means: the exact key, then its class (HTTP), then the default. */
export function statusFor(check: Pick<Check, "results">, result: number | undefined): Status {
  if (result !== undefined) {
    const exact = check.results.get(String(result));
    if (exact !== undefined) return exact;
    const klass = check.results.get(`${Math.floor(result / 100)}xx`);
    if (klass !== undefined && result >= 100) return klass;
  }
  return check.results.get("default") ?? "DOWN";
}

/** `2s`, `500ms`, `1m`; the default when absent; undefined when not such a duration. */
export function duration(value: unknown, fallback: number): number | undefined {
  if (value === undefined) return fallback;
  const match = typeof value === "string" ? /^([0-9]{1,7})(ms|s|m|h)$/.exec(value) : null;
  if (match === null) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] as "ms" | "s" | "m" | "h"];
  return Number(match[1]) * unit;
}

function count(value: unknown, fallback: number): number | undefined {
  if (value === undefined) return fallback;
  return typeof value === "number" &&
    Number.isInteger(value) &&
    value >= 1 &&
    value <= MAX_RISE_FALL
    ? value
    : undefined;
}

/** A value quoted in a reason: short, and safe for a terminal. */
function shown(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value) ?? String(value);
  return printable(text.length > 60 ? `${text.slice(0, 57)}...` : text);
}

/** Where a check's action goes, for logs and status. */
export function target(action: Action): string {
  switch (action.kind) {
    case "http":
      return action.url;
    case "tcp":
      return `tcp ${action.host.includes(":") ? `[${action.host}]` : action.host}:${action.port}`;
    case "exec":
      return action.argv.join(" ");
    case "shell":
      return `sh -c ${JSON.stringify(action.command)}`;
  }
}

function fail(reason: string): ChecksResult {
  return { ok: false, reason: printable(reason) };
}
