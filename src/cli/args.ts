/** The command line's options, parsed strictly, and the checks shared by every command. */
import { parseArgs } from "node:util";
import { type FieldName, REPLY_FIELDS } from "../core/fields.js";
import { usage } from "./exit.js";

type FieldOptions = { readonly [K in FieldName]: { readonly type: "string" } } & {
  readonly [K in FieldName as `no-${K}`]: { readonly type: "boolean" };
};

/** `--NAME VALUE` and `--no-NAME` for each field of the state (core/fields.ts). */
function fieldOptions(): FieldOptions {
  const options = {};
  for (const { name } of REPLY_FIELDS) {
    Object.assign(options, { [name]: { type: "string" }, [`no-${name}`]: { type: "boolean" } });
  }
  return options as FieldOptions;
}

export const OPTIONS = {
  help: { type: "boolean", short: "h" },
  json: { type: "boolean" },
  ...fieldOptions(),
  reason: { type: "string" },
  for: { type: "string" },
  service: { type: "string" },
  timeout: { type: "string" },
  "no-wait": { type: "boolean" },
  "no-confirm": { type: "boolean" },
  wait: { type: "boolean" },
  "wait-timeout": { type: "string" },
  idle: { type: "string", multiple: true },
  "idle-timeout": { type: "string" },
  socket: { type: "string" },
  "state-file": { type: "string" },
  ip: { type: "string" },
  port: { type: "string" },
  endpoints: { type: "string" },
} as const;

export type Option = keyof typeof OPTIONS;
export type Values = {
  [K in Option]?: (typeof OPTIONS)[K] extends { multiple: true }
    ? string[]
    : (typeof OPTIONS)[K]["type"] extends "boolean"
      ? boolean
      : string;
};

/** Options that say which agent and file a command acts on. */
export const TARGET_OPTIONS: readonly Option[] = ["state-file", "ip", "port", "socket", "help"];

/** The flags of the fields, in the table's order: `weight`, `no-weight`, `maxconn` … */
export const FIELD_FLAGS: readonly Option[] = REPLY_FIELDS.flatMap(({ name }) => [
  name,
  `no-${name}` as const,
]);

/** Parses `args` for `command`, which takes only the `allowed` options. */
export function parseOptions(
  args: readonly string[],
  allowed: readonly Option[],
  command: string,
): { values: Values; positionals: string[] } {
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({
      args: [...args],
      options: OPTIONS,
      strict: true,
      allowPositionals: true,
    }) as { values: Values; positionals: string[] };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      throw usage(`${unknownOption(args, allowed)} (see hapgent ${command} --help)`);
    }
    throw usage(`${(err as Error).message} (see hapgent ${command} --help)`);
  }
  for (const name of Object.keys(parsed.values) as Option[]) {
    if (!allowed.includes(name)) {
      throw usage(`--${name} is not an option of ${command} (see hapgent ${command} --help)`);
    }
  }
  for (const { name } of REPLY_FIELDS) {
    if (parsed.values[name] !== undefined && parsed.values[`no-${name}`]) {
      throw usage(`--${name} and --no-${name} contradict each other`);
    }
  }
  return parsed;
}

/** At most `max` positional arguments. */
export function expectPositionals(
  positionals: readonly string[],
  max: number,
  command: string,
): void {
  if (positionals.length > max) {
    throw usage(
      `unexpected argument ${JSON.stringify(positionals[max])} (see hapgent ${command} --help)`,
    );
  }
}

/** The first option in `args` that hapgent does not know, with the closest `allowed` one. */
function unknownOption(args: readonly string[], allowed: readonly Option[]): string {
  const { tokens } = parseArgs({
    args: [...args],
    options: OPTIONS,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  const unknown = tokens.find(
    (token) => token.kind === "option" && !Object.hasOwn(OPTIONS, token.name),
  );
  if (unknown?.kind !== "option") return "unknown option";
  const near = closest(unknown.name, allowed);
  return `unknown option ${unknown.rawName}${near === undefined ? "" : `; did you mean --${near}?`}`;
}

/**
 * The one candidate `given` abbreviates, else the nearest within a third of its length in
 * edits (a slip of the keyboard, not another word); undefined when none is near.
 */
export function closest(given: string, candidates: readonly string[]): string | undefined {
  const starting = candidates.filter((candidate) => candidate.startsWith(given));
  if (given.length >= 2 && starting.length === 1) return starting[0];
  let best: { candidate: string; distance: number } | undefined;
  for (const candidate of candidates) {
    const distance = editDistance(given, candidate);
    if (best === undefined || distance < best.distance) best = { candidate, distance };
  }
  const allowed = Math.max(1, Math.floor(given.length / 3));
  return best !== undefined && best.distance <= allowed ? best.candidate : undefined;
}

/** Edits between two words: insertions, deletions, substitutions and swaps of neighbours. */
function editDistance(a: string, b: string): number {
  let before: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      let distance = Math.min((previous[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, substitution);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        distance = Math.min(distance, (before[j - 2] ?? 0) + 1);
      }
      row.push(distance);
    }
    before = previous;
    previous = row;
  }
  return previous[b.length] ?? 0;
}
