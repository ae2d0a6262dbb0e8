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
  /** Shown by HAProxy in its stats, e.g. "via agent : down (deploy 1.4.2)". */
  readonly description?: string;
}

export type StateResult = { ok: true; state: State } | { ok: false; reason: string };

/** What the agent falls back to when the file cannot be used; nothing of the old state is kept. */
export const FALLBACK_STATE: State = Object.freeze({ status: "MAINT" });

/** No valid state comes near this; a larger file is refused before it is parsed. */
export const MAX_STATE_FILE_BYTES = 64 * 1024;

const WEIGHT_MAX = 255;
const MAXCONN_MAX = 65535;
/** Long enough for a deploy note, short enough for HAProxy's stats line. */
export const MAX_DESCRIPTION_CHARS = 200;
const FIELDS = ["status", "weight", "maxconn", "description"] as const;
/** One line of printable text: no control characters, no Unicode line or paragraph separators. */
const PRINTABLE_LINE = /^[^\p{Cc}\p{Zl}\p{Zp}]+$/u;

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
  const { status, weight, maxconn, description } = record;
  if (!isStatus(status)) {
    return fail(`status must be one of ${STATUSES.join(", ")}, got ${describe(status)}`);
  }
  if ("weight" in record && !isIntegerIn(weight, 0, WEIGHT_MAX)) {
    return fail(`weight must be an integer 0-${WEIGHT_MAX}, got ${describe(weight)}`);
  }
  if ("maxconn" in record && !isIntegerIn(maxconn, 0, MAXCONN_MAX)) {
    return fail(`maxconn must be an integer 0-${MAXCONN_MAX}, got ${describe(maxconn)}`);
  }
  if ("description" in record && !isDescription(description)) {
    return fail(
      `description must be 1-${MAX_DESCRIPTION_CHARS} characters of printable text on one line, not beginning or ending with a space, got ${describe(description)}`,
    );
  }
  return {
    ok: true,
    state: makeState(
      status,
      weight as number | undefined,
      maxconn as number | undefined,
      description as string | undefined,
    ),
  };
}

/** The file content for a state: one line of JSON, fields in a fixed order. */
export function serialiseState(state: State): string {
  return `${JSON.stringify(makeState(state.status, state.weight, state.maxconn, state.description))}\n`;
}

/** The same state with another status; weight, maxconn and description are kept (USR1, USR2). */
export function withStatus(state: State, status: Status): State {
  return makeState(status, state.weight, state.maxconn, state.description);
}

/** Compact, stable text for logs. */
export function formatState(state: State): string {
  return serialiseState(state).trimEnd();
}

export function sameState(a: State, b: State): boolean {
  return (
    a.status === b.status &&
    a.weight === b.weight &&
    a.maxconn === b.maxconn &&
    a.description === b.description
  );
}

function makeState(
  status: Status,
  weight: number | undefined,
  maxconn: number | undefined,
  description: string | undefined,
): State {
  // Built field by field so the key order, and so the file, never depends on the input's order.
  const state: { status: Status; weight?: number; maxconn?: number; description?: string } = {
    status,
  };
  // `+ 0` turns a JSON -0 into 0.
  if (weight !== undefined) state.weight = weight + 0;
  if (maxconn !== undefined) state.maxconn = maxconn + 0;
  if (description !== undefined) state.description = description;
  return Object.freeze(state);
}

function isDescription(value: unknown): value is string {
  return (
    typeof value === "string" &&
    [...value].length <= MAX_DESCRIPTION_CHARS &&
    PRINTABLE_LINE.test(value) &&
    // HAProxy drops the spaces after `#`: a description it shows differently is refused.
    value.trim() === value
  );
}

function isIntegerIn(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
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
 * breaks or terminal escapes; reasons go to logs and terminals, so those are shown escaped.
 */
function printable(text: string): string {
  return text.replace(
    /[\p{Cc}\p{Zl}\p{Zp}]/gu,
    (c) => `\\u${(c.codePointAt(0) ?? 0).toString(16).padStart(4, "0")}`,
  );
}

function fail(reason: string): StateResult {
  return { ok: false, reason: printable(reason) };
}
