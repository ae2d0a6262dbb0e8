/**
 * The fields an operator sets beside a status: weight, maxconn, description. One entry each, from
 * which the state file's rules, changes, the control socket's change requests, the command line's
 * flags and help, equality, the composition of layers and, for a number, its Prometheus gauge are
 * derived. A new field is an entry here, its word in the reply (reply.ts), and tests; compose.ts
 * too if neither of its rules fits (the lowest wins, or the deciding layer's). Pure.
 */
import { DEFAULT_WEIGHT_PERCENT, NO_MAXCONN_LIMIT } from "./reply.js";

/** Long enough for a deploy note, short enough for HAProxy's stats line. */
export const MAX_DESCRIPTION_CHARS = 200;
const WEIGHT_MAX = 255;
const MAXCONN_MAX = 65535;

/** A field's value in a state: a number for an integer field, a string for a text field. */
export type FieldValue = number | string;

interface Rule {
  /** The key in the state file, a fleet value and a change request; the flag is `--NAME`. */
  readonly name: string;
  /** A number or a string in a state. */
  readonly type: "integer" | "text";
  /** Whether a value keeps the state file's rules. */
  readonly accepts: (value: unknown) => boolean;
  /** What the rules expect, for the reason a value is refused: `NAME must be EXPECTED, got …`. */
  readonly expected: string;
  /** The flag's argument as the value the rules judge. */
  readonly fromArg: (text: string) => FieldValue;
  /** What `--no-NAME` sets in the agent's own state; null removes the field. */
  readonly cleared: FieldValue | null;
  /** The flag with its argument, and its lines in `hapgent set --help` (`help`). */
  readonly flag: string;
  readonly help: readonly string[];
}

/** A field where the lowest of the layers' values wins, as `allows` ranks them. */
interface LowestRule extends Rule {
  readonly type: "integer";
  readonly composes: "lowest";
  /** How much a value (undefined: none) lets through; the lower, the more restrictive. */
  readonly allows: (value: number | undefined) => number;
  /** The gauge of the value answered; `absent` is its value when the state sets none. */
  readonly metric: { readonly name: string; readonly help: string; readonly absent?: number };
}

/** A field that comes from the layer that decided the answer. */
interface DeciderRule extends Rule {
  readonly composes: "decider";
}

/** The fields in the file's order (and so the order of its keys, after `status`). */
export const REPLY_FIELDS = [
  // Percent of the weight configured in haproxy.cfg, 0-255.
  {
    name: "weight",
    type: "integer",
    accepts: (value) => isIntegerIn(value, 0, WEIGHT_MAX),
    expected: `an integer 0-${WEIGHT_MAX}`,
    fromArg: numberArg,
    cleared: null,
    flag: "--weight N",
    help: [`weight percent 0-${WEIGHT_MAX}; --no-weight removes it (100%)`],
    composes: "lowest",
    allows: (value) => value ?? DEFAULT_WEIGHT_PERCENT,
    metric: {
      name: "hapgent_weight_percent",
      help: "The weight the agent answers, in percent of the weight in haproxy.cfg (100 when the file sets none).",
      absent: DEFAULT_WEIGHT_PERCENT,
    },
  },
  // The connections HAProxy sends the server at once.
  {
    name: "maxconn",
    type: "integer",
    accepts: (value) => isIntegerIn(value, 0, MAXCONN_MAX),
    expected: `an integer 0-${MAXCONN_MAX}`,
    fromArg: numberArg,
    // No limit, not no field: HAProxy keeps the last maxconn it heard, and a reply without one
    // would leave it.
    cleared: NO_MAXCONN_LIMIT,
    flag: "--maxconn N",
    help: [
      `maxconn 0-${MAXCONN_MAX}, 0 for no limit; --no-maxconn sets 0,`,
      "lifting a limit HAProxy holds (haproxy.cfg's too)",
    ],
    composes: "lowest",
    // maxconn 0 is no limit: it lowers nothing, and any limit lowers it.
    allows: (value) =>
      value === undefined || value === NO_MAXCONN_LIMIT ? Number.POSITIVE_INFINITY : value,
    metric: {
      name: "hapgent_maxconn",
      help: "The maxconn the agent answers; absent when the file sets none.",
    },
  },
  // Shown by HAProxy in its stats, e.g. "via agent : down (deploy 1.4.2)".
  {
    name: "description",
    type: "text",
    accepts: isDescription,
    expected: `1-${MAX_DESCRIPTION_CHARS} characters of printable text on one line (no control characters, no invisible format characters such as bidirectional overrides), not beginning or ending with a space`,
    fromArg: (text) => text,
    cleared: null,
    flag: "--description TEXT",
    help: [
      `text HAProxy shows in its stats (1-${MAX_DESCRIPTION_CHARS} characters);`,
      "--no-description removes it",
    ],
    composes: "decider",
  },
] as const satisfies readonly (LowestRule | DeciderRule)[];

export type ReplyField = (typeof REPLY_FIELDS)[number];
export type FieldName = ReplyField["name"];

/** The fields where the lowest value wins (see compose.ts). */
export const LOWEST_FIELDS = REPLY_FIELDS.filter((field) => field.composes === "lowest");
export type LowestName = (typeof LOWEST_FIELDS)[number]["name"];

export const FIELD_NAMES: readonly FieldName[] = REPLY_FIELDS.map(({ name }) => name);

type ValueOf<F extends ReplyField> = F extends { readonly type: "integer" } ? number : string;

/** A state's fields, each absent or set. */
export type FieldValues = { readonly [F in ReplyField as F["name"]]?: ValueOf<F> };

/** The same, where undefined is absent too (as a spread or a destructuring gives them). */
export type MaybeFieldValues = { readonly [F in ReplyField as F["name"]]?: ValueOf<F> | undefined };

/** Whether two states have the same fields. */
export function sameFieldValues(a: MaybeFieldValues, b: MaybeFieldValues): boolean {
  return REPLY_FIELDS.every(({ name }) => a[name] === b[name]);
}

/** Sets `given`'s fields on `state`, in the file's order; absent ones stay absent. */
export function copyFieldValues(given: MaybeFieldValues, state: Record<string, unknown>): void {
  for (const { name } of REPLY_FIELDS) {
    const value = given[name];
    // `+ 0` turns a JSON -0 into 0.
    if (value !== undefined) state[name] = typeof value === "number" ? value + 0 : value;
  }
}

/**
 * Text HAProxy receives exactly as written and shows as it is: no control characters, no line or
 * paragraph separators, no lone surrogates (UTF-8 cannot carry them: HAProxy would get U+FFFD,
 * and the agent could never confirm what it sends), and no invisible format characters, such as
 * bidirectional overrides, which make a stats page show text in another order than it has. The
 * joiners (U+200C, U+200D) and emoji tags (U+E0020-E007F) that shape scripts and emoji are
 * format characters too, and stay allowed.
 */
const SHOWN_EXACTLY =
  /^(?:[^\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]|[\u200c\u200d]|[\u{e0020}-\u{e007f}])+$/u;

/** Whether `value` is text shown exactly as written, on one line, without spaces around it. */
export function isShownExactly(value: unknown): value is string {
  return typeof value === "string" && SHOWN_EXACTLY.test(value) && value.trim() === value;
}

/** Whether `value` may be a description (and so a reason): the rules HAProxy's stats need. */
export function isDescription(value: unknown): value is string {
  // HAProxy drops the spaces after `#`: isShownExactly refuses a description it would show
  // differently.
  return isShownExactly(value) && [...value].length <= MAX_DESCRIPTION_CHARS;
}

function isIntegerIn(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

/** Numbers as numbers so the state rules judge them; anything else stays text and is refused. */
function numberArg(text: string): FieldValue {
  return /^-?[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : text;
}
