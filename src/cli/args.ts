/** The command line's options, parsed strictly, and the checks shared by every command. */
import { parseArgs } from "node:util";
import { usage } from "./exit.js";

export const OPTIONS = {
  help: { type: "boolean", short: "h" },
  json: { type: "boolean" },
  weight: { type: "string" },
  "no-weight": { type: "boolean" },
  maxconn: { type: "string" },
  "no-maxconn": { type: "boolean" },
  description: { type: "string" },
  "no-description": { type: "boolean" },
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
    throw usage(`${(err as Error).message} (see hapgent ${command} --help)`);
  }
  for (const name of Object.keys(parsed.values) as Option[]) {
    if (!allowed.includes(name)) {
      throw usage(`--${name} is not an option of ${command} (see hapgent ${command} --help)`);
    }
  }
  for (const field of ["weight", "maxconn", "description"] as const) {
    if (parsed.values[field] !== undefined && parsed.values[`no-${field}`]) {
      throw usage(`--${field} and --no-${field} contradict each other`);
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
