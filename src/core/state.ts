/**
 * The state model: what the state file may contain, how it is read and how it is written.
 * Pure: text or values in, values out.
 */
import {
  copyFieldValues,
  FIELD_NAMES,
  type FieldValues,
  isDescription,
  isShownExactly,
  MAX_DESCRIPTION_CHARS,
  type MaybeFieldValues,
  REPLY_FIELDS,
  sameFieldValues,
} from "./fields.js";
import { parseJsonFile } from "./json.js";

/** Every status the state file accepts, spelled exactly so. */
export const STATUSES = ["UP", "DOWN", "READY", "DRAIN", "FAIL", "MAINT", "STOPPED"] as const;

export type Status = (typeof STATUSES)[number];

/** One service's state (an entry of `services`), or the instance's own. */
export interface ServiceState extends FieldValues {
  readonly status: Status;
  /**
   * Why it is in this state, as the operator said with the change (`--reason`): shown by HAProxy
   * in place of the description, and gone with the next change of the same instance or service.
   */
  readonly reason?: string;
}

/** How the last change came about: a signal, a file read again, the command line, an expiry. */
export const VIAS = ["signal", "reload", "cli", "expiry"] as const;
export type Via = (typeof VIAS)[number];

/** The audit record of the last change: when, how, who, why, and to what (a service or not). */
export interface Changed {
  /** ISO 8601, UTC, to the millisecond. */
  readonly at: string;
  readonly via: Via;
  /** The signal's name, with `via: "signal"`. */
  readonly signal?: string;
  /** The user the command line ran as, as it reported itself, with `via: "cli"`. */
  readonly by?: string;
  /** The service changed; the instance when absent. */
  readonly service?: string;
  /** Why, as the operator said it; also the description HAProxy shows. */
  readonly reason?: string;
}

/** A change that undoes itself: at `at`, `returns` comes back (null: the service it added goes). */
export interface Expiry {
  readonly at: string;
  /** The service whose state returns; the instance's own fields when absent. */
  readonly service?: string;
  readonly returns: ServiceState | null;
}

/** The whole file: the instance's state and, optionally, one state per agent-send name. */
export interface State extends ServiceState {
  readonly changed?: Changed;
  readonly expires?: Expiry;
  /** Own properties only (look names up with `serviceState`); kept in the file's order. */
  readonly services?: Readonly<Record<string, ServiceState>>;
}

export type StateResult = { ok: true; state: State } | { ok: false; reason: string };

/** What the agent falls back to when the file cannot be used; nothing of the old state is kept. */
export const FALLBACK_STATE: State = Object.freeze({ status: "MAINT" });

/** No valid state comes near this; a larger state is refused. */
export const MAX_STATE_FILE_BYTES = 64 * 1024;
/**
 * Room in the file for the record of the last change and a pending expiry, on top of the
 * state's own 64 KiB: a signal's or an expiry's record never makes a valid file too large.
 */
export const RECORDS_ALLOWANCE_BYTES = 4 * 1024;

/** The keys of one state (a service's, or what an expiry brings back), in the file's order. */
const SERVICE_KEYS = ["status", ...FIELD_NAMES, "reason"];
/** The keys of the file's top level. */
const STATE_KEYS = [...SERVICE_KEYS, "changed", "expires", "services"];
/** The keys of `changed`, the audit record of the last change. */
const AUDIT_RECORD_KEYS = ["at", "via", "signal", "by", "service", "reason"];
/** The keys of `expires`, a pending expiry. */
const EXPIRY_KEYS = ["at", "service", "returns"];
/** What the command line reports as its user: a login name, perhaps with who ran sudo. */
const MAX_BY_CHARS = 100;
/** Signal names, as Node spells them. */
const SIGNAL_NAME = /^SIG[A-Z0-9]{2,10}$/;
/** A timestamp as the agent writes it (`toISOString`), or to the second. */
const TIMESTAMP = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,3})?Z$/;
/** Service names: what HAProxy sends with agent-send, without the line end. */
export const MAX_SERVICE_NAME_CHARS = 100;
export const MAX_SERVICES = 1000;
const SERVICE_NAME = new RegExp(`^[\\x21-\\x7e]{1,${MAX_SERVICE_NAME_CHARS}}$`);
/** The statuses that leave each service its own state; any other takes the whole instance out. */
export const IN_SERVICE: readonly Status[] = Object.freeze(["UP", "READY"]);

/** Whether a status leaves each service its own state (see `serviceState`). */
export function isInService(status: Status): boolean {
  return IN_SERVICE.includes(status);
}
/** A reason quotes the file; however large the file, a reason stays one readable log line. */
const MAX_REASON_CHARS = 300;

export function isStatus(value: unknown): value is Status {
  return typeof value === "string" && (STATUSES as readonly string[]).includes(value);
}

/** Parses the bytes of a state file. Never throws. */
export function parseState(bytes: Uint8Array): StateResult {
  // The size is judged below, records apart; this only keeps a huge file from being parsed.
  const read = parseJsonFile(bytes, MAX_STATE_FILE_BYTES + RECORDS_ALLOWANCE_BYTES, describe);
  if (!read.ok) {
    return fail(
      read.reason.startsWith("file is larger")
        ? `file is larger than ${MAX_STATE_FILE_BYTES} bytes`
        : read.reason,
    );
  }
  const { value } = read;
  const result = validateState(value);
  // Only a file near the limit pays for measuring what its records add (as the agent writes
  // them), which the allowance is for: the rest of the file is held to 64 KiB.
  if (
    result.ok &&
    bytes.length > MAX_STATE_FILE_BYTES &&
    bytes.length - recordsBytes(result.state) > MAX_STATE_FILE_BYTES
  ) {
    return fail(`file is larger than ${MAX_STATE_FILE_BYTES} bytes`);
  }
  return result;
}

/** The size of a state's file without the records of its last change and pending expiry. */
export function stateBytes(state: State): number {
  return Buffer.byteLength(serialiseState(withRecords(state, undefined, undefined)));
}

/** How much the records of the last change and a pending expiry add to a state's file. */
function recordsBytes(state: State): number {
  return Buffer.byteLength(serialiseState(state)) - stateBytes(state);
}

/** Checks a parsed JSON value against the state file rules. Never throws. */
export function validateState(value: unknown): StateResult {
  const top = validateFields(value, STATE_KEYS, "state");
  if (!top.ok) return fail(top.reason);
  const record = value as Record<string, unknown>;
  const records = validateRecords(record);
  if (!records.ok) return fail(records.reason);
  const state = withRecords(top.state, records.changed, records.expires);
  if (!("services" in record)) return { ok: true, state };
  const services = record.services;
  if (typeof services !== "object" || services === null || Array.isArray(services)) {
    return fail(
      `services must be a JSON object of service name to state, got ${describe(services)}`,
    );
  }
  const names = Object.keys(services);
  if (names.length > MAX_SERVICES) {
    return fail(`services has ${names.length} entries; expected at most ${MAX_SERVICES}`);
  }
  const entries: [string, ServiceState][] = [];
  for (const name of names) {
    if (!SERVICE_NAME.test(name)) {
      return fail(
        `service name ${describe(name)} is invalid; expected 1-${MAX_SERVICE_NAME_CHARS} printable ASCII characters without spaces, as HAProxy sends it with agent-send (without the line end)`,
      );
    }
    const entry = validateFields(
      (services as Record<string, unknown>)[name],
      SERVICE_KEYS,
      `services[${JSON.stringify(name)}]`,
    );
    if (!entry.ok) return fail(entry.reason);
    entries.push([name, entry.state]);
  }
  return { ok: true, state: withServices(state, entries) };
}

type RecordsResult =
  | { ok: true; changed: Changed | undefined; expires: Expiry | undefined }
  | { ok: false; reason: string };

/** `changed` and `expires`, each optional. */
function validateRecords(record: Record<string, unknown>): RecordsResult {
  let changed: Changed | undefined;
  let expires: Expiry | undefined;
  if ("changed" in record) {
    const result = validateChanged(record.changed);
    if (typeof result === "string") return { ok: false, reason: `changed: ${result}` };
    changed = result;
  }
  if ("expires" in record) {
    const result = validateExpires(record.expires);
    if (typeof result === "string") return { ok: false, reason: `expires: ${result}` };
    expires = result;
  }
  return { ok: true, changed, expires };
}

/** The record, or what is wrong with it. */
function validateChanged(value: unknown): Changed | string {
  const fields = objectOf(value, AUDIT_RECORD_KEYS, "the last change's record");
  if (typeof fields === "string") return fields;
  const { at, via, signal, by, service, reason } = fields;
  if (!isTimestamp(at))
    return `at must be a UTC time such as "2026-11-25T14:02:00.000Z", got ${describe(at)}`;
  if (!(typeof via === "string" && (VIAS as readonly string[]).includes(via))) {
    return `via must be one of ${VIAS.join(", ")}, got ${describe(via)}`;
  }
  if (signal !== undefined && !(typeof signal === "string" && SIGNAL_NAME.test(signal))) {
    return `signal must be a signal's name such as "SIGUSR2", got ${describe(signal)}`;
  }
  if (by !== undefined && !isRecordedUser(by)) {
    return `by must be a user's name (1-${MAX_BY_CHARS} printable characters), got ${describe(by)}`;
  }
  if (service !== undefined && !(typeof service === "string" && SERVICE_NAME.test(service))) {
    return `service must be a service name, got ${describe(service)}`;
  }
  if (reason !== undefined && !isDescription(reason)) {
    return `reason must be a description (1-${MAX_DESCRIPTION_CHARS} characters of printable text on one line), got ${describe(reason)}`;
  }
  return Object.freeze({
    at: at as string,
    via: via as Via,
    ...(signal === undefined ? {} : { signal: signal as string }),
    ...(by === undefined ? {} : { by: by as string }),
    ...(service === undefined ? {} : { service: service as string }),
    ...(reason === undefined ? {} : { reason: reason as string }),
  });
}

/** The pending expiry, or what is wrong with it. */
function validateExpires(value: unknown): Expiry | string {
  const fields = objectOf(value, EXPIRY_KEYS, "a pending expiry");
  if (typeof fields === "string") return fields;
  const { at, service, returns: back } = fields;
  if (!isTimestamp(at))
    return `at must be a UTC time such as "2026-11-25T14:32:00.000Z", got ${describe(at)}`;
  if (service !== undefined && !(typeof service === "string" && SERVICE_NAME.test(service))) {
    return `service must be a service name, got ${describe(service)}`;
  }
  if (!("returns" in fields)) return "returns (the state that comes back) is required";
  if (back === null) {
    if (service === undefined) return "returns may be null (the service goes) only with a service";
    return Object.freeze({ at: at as string, service: service as string, returns: null });
  }
  const checked = validateFields(back, SERVICE_KEYS, "returns");
  if (!checked.ok) return checked.reason;
  return Object.freeze({
    at: at as string,
    ...(service === undefined ? {} : { service: service as string }),
    returns: checked.state,
  });
}

/** The own fields of a JSON object that may have only `allowed` ones, or what is wrong. */
function objectOf(
  value: unknown,
  allowed: readonly string[],
  what: string,
): Record<string, unknown> | string {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return `must be a JSON object (${what}), got ${describe(value)}`;
  }
  const record = value as Record<string, unknown>;
  const unknown = Object.keys(record).find((key) => !allowed.includes(key));
  if (unknown !== undefined) {
    return `unknown field ${describe(unknown)}; expected only ${allowed.join(", ")}`;
  }
  return record;
}

/** Whether `value` can be the record's `by`: a user's name, printable, on one line. */
export function isRecordedUser(value: unknown): value is string {
  return isShownExactly(value) && [...value].length <= MAX_BY_CHARS;
}

/** A signal's name as the audit record keeps it ("SIGUSR2"). */
export function isSignalName(value: unknown): value is string {
  return typeof value === "string" && SIGNAL_NAME.test(value);
}

/** A UTC timestamp in the file's format that names a real moment. */
export function isTimestamp(value: unknown): value is string {
  if (typeof value !== "string" || !TIMESTAMP.test(value)) return false;
  const ms = Date.parse(value);
  // Date.parse rolls 2026-02-30 over to March: a date that does not exist is refused.
  return Number.isFinite(ms) && new Date(ms).toISOString().slice(0, 19) === value.slice(0, 19);
}

type FieldsResult = { ok: true; state: ServiceState } | { ok: false; reason: string };

/** The fields of one state, the instance's (`where` is "state") or a service's. */
function validateFields(value: unknown, fields: readonly string[], where: string): FieldsResult {
  const inside = (text: string) => (where === "state" ? text : `${where}: ${text}`);
  const invalid = (text: string): FieldsResult => ({ ok: false, reason: inside(text) });
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, reason: `${where} must be a JSON object, got ${describe(value)}` };
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!fields.includes(key)) {
      return invalid(`unknown field ${describe(key)}; expected only ${fields.join(", ")}`);
    }
  }
  if (!("status" in record)) return invalid("status is required");
  const { status, reason } = record;
  if (!isStatus(status)) {
    return invalid(`status must be one of ${STATUSES.join(", ")}, got ${describe(status)}`);
  }
  for (const { name, accepts, expected } of REPLY_FIELDS) {
    if (name in record && !accepts(record[name])) {
      return invalid(`${name} must be ${expected}, got ${describe(record[name])}`);
    }
  }
  if ("reason" in record && !isDescription(reason)) {
    return invalid(
      `reason must be 1-${MAX_DESCRIPTION_CHARS} characters of printable text on one line, as a description, got ${describe(reason)}`,
    );
  }
  // Each field was judged above.
  return { ok: true, state: makeState(record as unknown as Fields) };
}

/**
 * What a probe that sent `name` is answered. While the instance is UP or READY each service
 * answers its own state; any other instance status takes every service out with it, so USR2
 * still takes the whole instance out and USR1 gives every service its own state back. No name,
 * or a name the file does not have, gets the instance's state.
 */
export function serviceState(state: State, name: string | undefined): ServiceState {
  const services = state.services;
  if (
    name === undefined ||
    services === undefined ||
    !isInService(state.status) ||
    !Object.hasOwn(services, name)
  ) {
    return state;
  }
  return services[name] as ServiceState;
}

/** True when the file has a service of that name. */
export function hasService(state: State, name: string): boolean {
  return state.services !== undefined && Object.hasOwn(state.services, name);
}

/** Whether `name` could be a service name (the rule the file's names follow). */
export function isServiceName(name: string): boolean {
  return SERVICE_NAME.test(name);
}

/** The same state with one service set to `service` (added at the end if new). */
export function withService(state: State, name: string, service: ServiceState): State {
  const entries = Object.entries(state.services ?? {});
  const at = entries.findIndex(([existing]) => existing === name);
  if (at >= 0) entries[at] = [name, service];
  else entries.push([name, service]);
  return withServices(state, entries);
}

/** The file content for a state: one line of JSON, fields in a fixed order. */
export function serialiseState(state: State): string {
  const { changed, expires } = state;
  const records = withRecords(
    makeState(state),
    changed,
    expires === undefined
      ? undefined
      : { ...expires, returns: expires.returns === null ? null : makeState(expires.returns) },
  );
  return `${JSON.stringify(
    withServices(
      records,
      state.services === undefined
        ? undefined
        : Object.entries(state.services).map(([name, service]) => [name, makeState(service)]),
    ),
  )}\n`;
}

/** The same state with these records of the last change and of a pending expiry (or none). */
export function withRecords(
  state: State,
  changed: Changed | undefined,
  expires: Expiry | undefined,
): State {
  return withServices(
    { ...makeState(state), changed, expires },
    state.services === undefined ? undefined : Object.entries(state.services),
  );
}

/** The same state with another status; the other fields and the services are kept (USR1, USR2). */
export function withStatus(state: State, status: Status): State {
  return withServices(
    { ...state, status },
    state.services === undefined ? undefined : Object.entries(state.services),
  );
}

/** The same state with the instance's own fields replaced; the records and services are kept. */
export function withFields(state: State, given: Fields): State {
  return withServices(
    { ...makeState(given), changed: state.changed, expires: state.expires },
    state.services === undefined ? undefined : Object.entries(state.services),
  );
}

/** The same state without service `name`. */
export function withoutService(state: State, name: string): State {
  return withServices(
    state,
    Object.entries(state.services ?? {}).filter(([existing]) => existing !== name),
  );
}

/** Longer state text is shortened in logs: a file may name up to 1,000 services. */
const MAX_FORMATTED_CHARS = 1000;

/** Compact, stable text for logs; a long list of services is summed up by its length. */
export function formatState(state: State): string {
  const text = serialiseState(state).trimEnd();
  if (text.length <= MAX_FORMATTED_CHARS || state.services === undefined) return text;
  const count = Object.keys(state.services).length;
  // The services the last change and a pending expiry name are shown: the log is the history.
  const named = [state.changed?.service, state.expires?.service].filter(
    (name, i, all): name is string =>
      name !== undefined && all.indexOf(name) === i && hasService(state, name),
  );
  const shown = named.map(
    (name) =>
      `, services[${JSON.stringify(name)}]: ${serialiseState(state.services?.[name] as ServiceState).trimEnd()}`,
  );
  return `${serialiseState(withServices(state, undefined)).trimEnd()} with ${count} services${shown.join("")}`;
}

/** What probes are answered from, for logs: the state without its audit record and expiry. */
export function formatAnswered(state: State): string {
  return formatState(withRecords(state, undefined, undefined));
}

export function sameState(a: State, b: State): boolean {
  if (!sameFields(a, b)) return false;
  if (a.services === undefined || b.services === undefined) return a.services === b.services;
  const names = Object.keys(a.services);
  const other = Object.keys(b.services);
  return (
    names.length === other.length &&
    names.every(
      (name, i) =>
        other[i] === name &&
        sameFields(a.services?.[name] as ServiceState, b.services?.[name] as ServiceState),
    )
  );
}

function sameFields(a: ServiceState, b: ServiceState): boolean {
  return a.status === b.status && sameFieldValues(a, b) && a.reason === b.reason;
}

/** A state with `services` (in the given order) in place of any it had; none when undefined. */
function withServices(
  state: ServiceState & {
    readonly changed?: Changed | undefined;
    readonly expires?: Expiry | undefined;
  },
  entries: readonly (readonly [string, ServiceState])[] | undefined,
): State {
  const copy = fields(state);
  // After the instance's fields, before the services, which may be many.
  if (state.changed !== undefined) copy.changed = state.changed;
  if (state.expires !== undefined) copy.expires = state.expires;
  if (entries === undefined) return Object.freeze(copy);
  const services: Record<string, ServiceState> = {};
  for (const [name, service] of entries) {
    // Defined, not assigned: a service called "__proto__" must stay an entry like any other.
    Object.defineProperty(services, name, {
      value: service,
      enumerable: true,
      writable: false,
      configurable: false,
    });
  }
  copy.services = Object.freeze(services);
  return Object.freeze(copy);
}

/** The fields of one state, each possibly absent; `undefined` means absent. */
export interface Fields extends MaybeFieldValues {
  readonly status: Status;
  readonly reason?: string | undefined;
}

/** A frozen state with exactly these fields (no services), in the file's order. */
export function makeState(given: Fields): State {
  return Object.freeze(fields(given));
}

function fields(given: Fields): { -readonly [K in keyof State]: State[K] } {
  // Built field by field so the key order, and so the file, never depends on the input's order.
  const state: { -readonly [K in keyof State]: State[K] } = { status: given.status };
  copyFieldValues(given, state);
  if (given.reason !== undefined) state.reason = given.reason;
  return state;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "string" && value.length > 40) {
    return `${JSON.stringify(value.slice(0, 40))}... (${[...value].length} characters)`;
  }
  if (Array.isArray(value)) return "an array";
  if (value !== null && typeof value === "object") return "an object";
  return JSON.stringify(value);
}

/**
 * Reasons quote the file (V8's JSON errors, unknown keys, wrong values), which may hold line
 * breaks, terminal escapes or bidirectional overrides; reasons go to logs and terminals, so those
 * are shown escaped. So do names a client sends.
 */
export function printable(text: string): string {
  return text.replace(
    /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/gu,
    (c) => `\\u${(c.codePointAt(0) ?? 0).toString(16).padStart(4, "0")}`,
  );
}

function fail(reason: string): StateResult {
  const shown = printable(reason);
  return {
    ok: false,
    reason: shown.length <= MAX_REASON_CHARS ? shown : `${shown.slice(0, MAX_REASON_CHARS - 3)}...`,
  };
}
