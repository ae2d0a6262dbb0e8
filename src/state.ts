/**
 * The state model: what the state file may contain, how it is read and how it is written.
 * Pure: text or values in, values out.
 */

/** Every status the state file accepts, spelled exactly so. */
export const STATUSES = ["UP", "DOWN", "READY", "DRAIN", "FAIL", "MAINT", "STOPPED"] as const;

export type Status = (typeof STATUSES)[number];

export interface State {
  readonly status: Status;
  /** Percent of the weight configured in haproxy.cfg, 0-255. */
  readonly weight?: number;
  readonly maxconn?: number;
}

export type StateResult = { ok: true; state: State } | { ok: false; reason: string };

/** What the agent falls back to when the file cannot be used; nothing of the old state is kept. */
export const FALLBACK_STATE: State = Object.freeze({ status: "MAINT" });

/** No valid state comes near this; a larger file is refused before it is parsed. */
export const MAX_STATE_FILE_BYTES = 64 * 1024;

const WEIGHT_MAX = 255;
const MAXCONN_MAX = 65535;
const FIELDS = ["status", "weight", "maxconn"] as const;

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

export function isStatus(value: unknown): value is Status {
  return typeof value === "string" && (STATUSES as readonly string[]).includes(value);
}

/** Parses the bytes of a state file. Never throws. */
export function parseState(bytes: Uint8Array): StateResult {
  if (bytes.length > MAX_STATE_FILE_BYTES) {
    return fail(`file is larger than ${MAX_STATE_FILE_BYTES} bytes`);
  }
  let text: string;
  try {
    // The decoder drops a leading byte-order mark, which some editors add.
    text = UTF8.decode(bytes);
  } catch {
    return fail("file is not valid UTF-8");
  }
  if (text.trim() === "") return fail("file is empty");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return fail(`file is not valid JSON (${(err as Error).message})`);
  }
  return validateState(value);
}

/** Checks a parsed JSON value against the state file rules. Never throws. */
export function validateState(value: unknown): StateResult {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail(`state must be a JSON object, got ${describe(value)}`);
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!(FIELDS as readonly string[]).includes(key)) {
      return fail(`unknown field ${JSON.stringify(key)}; expected only ${FIELDS.join(", ")}`);
    }
  }
  if (!("status" in record)) return fail("status is required");
  const { status, weight, maxconn } = record;
  if (!isStatus(status)) {
    return fail(`status must be one of ${STATUSES.join(", ")}, got ${describe(status)}`);
  }
  if ("weight" in record && !isIntegerIn(weight, 0, WEIGHT_MAX)) {
    return fail(`weight must be an integer 0-${WEIGHT_MAX}, got ${describe(weight)}`);
  }
  if ("maxconn" in record && !isIntegerIn(maxconn, 0, MAXCONN_MAX)) {
    return fail(`maxconn must be an integer 0-${MAXCONN_MAX}, got ${describe(maxconn)}`);
  }
  return {
    ok: true,
    state: makeState(status, weight as number | undefined, maxconn as number | undefined),
  };
}

/** The file content for a state: one line of JSON, fields in a fixed order. */
export function serialiseState(state: State): string {
  return `${JSON.stringify(makeState(state.status, state.weight, state.maxconn))}\n`;
}

/** The same state with another status; weight and maxconn are kept (USR1, USR2). */
export function withStatus(state: State, status: Status): State {
  return makeState(status, state.weight, state.maxconn);
}

/** Compact, stable text for logs. */
export function formatState(state: State): string {
  return serialiseState(state).trimEnd();
}

export function sameState(a: State, b: State): boolean {
  return a.status === b.status && a.weight === b.weight && a.maxconn === b.maxconn;
}

function makeState(status: Status, weight: number | undefined, maxconn: number | undefined): State {
  // Built field by field so the key order, and so the file, never depends on the input's order.
  const state: { status: Status; weight?: number; maxconn?: number } = { status };
  // `+ 0` turns a JSON -0 into 0.
  if (weight !== undefined) state.weight = weight + 0;
  if (maxconn !== undefined) state.maxconn = maxconn + 0;
  return Object.freeze(state);
}

function isIntegerIn(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  if (Array.isArray(value)) return "an array";
  if (value !== null && typeof value === "object") return "an object";
  return JSON.stringify(value);
}

function fail(reason: string): StateResult {
  return { ok: false, reason };
}
