/**
 * The command line: inspect and change the running agent safely. `hapgent COMMAND …` lands here;
 * each command lives in its own module, and all of them act on the target that target.ts finds.
 */
import { describeUnknownVariable, unknownVariables } from "../config.js";
import { isStatus, STATUSES, type Status } from "../core/state.js";
import { VERSION } from "../version.js";
import {
  closest,
  expectPositionals,
  FIELD_FLAGS,
  type Option,
  parseOptions,
  TARGET_OPTIONS,
} from "./args.js";
import { check } from "./check.js";
import { CLI_EXIT, CliError, usage } from "./exit.js";
import { fleet } from "./fleet.js";
import { HELP } from "./help.js";
import type { CliIo } from "./io.js";
import { set } from "./set.js";
import { status } from "./status.js";

export { CLI_EXIT } from "./exit.js";
export type { CliIo } from "./io.js";

const SHORT_FORMS: Readonly<Record<string, Status>> = {
  up: "UP",
  down: "DOWN",
  ready: "READY",
  drain: "DRAIN",
  maint: "MAINT",
};

/** What a change says of the state: the same for the file's and for a fleet key's. */
const FIELD_OPTIONS: readonly Option[] = ["service", ...FIELD_FLAGS, "reason", "for"];

const CHANGE_OPTIONS: readonly Option[] = [
  ...TARGET_OPTIONS,
  ...FIELD_OPTIONS,
  "timeout",
  "no-wait",
  "no-confirm",
  "wait",
  "wait-timeout",
  "idle",
  "idle-timeout",
];

/** Each command and the options it takes. */
const COMMANDS: Readonly<Record<"status" | "check" | "set" | "fleet", readonly Option[]>> = {
  status: [...TARGET_OPTIONS, "json"],
  check: ["state-file", "help"],
  set: CHANGE_OPTIONS,
  fleet: ["endpoints", "json", "help", ...FIELD_OPTIONS],
};

/** Runs one command; resolves with its exit code. Bad input is a message, never a stack trace. */
export async function runCli(io: CliIo): Promise<number> {
  try {
    return await dispatch(io);
  } catch (err) {
    if (!(err instanceof CliError)) throw err;
    io.err(`hapgent: ${err.message}\n`);
    return err.exitCode;
  }
}

async function dispatch(io: CliIo): Promise<number> {
  const [command = "", ...rest] = io.args;
  if (command === "--version" || command === "-V") {
    io.out(`hapgent ${VERSION}\n`);
    return CLI_EXIT.OK;
  }
  if (command === "--help" || command === "-h" || command === "help") {
    io.out(HELP.main);
    return CLI_EXIT.OK;
  }
  const short = Object.hasOwn(SHORT_FORMS, command) ? SHORT_FORMS[command] : undefined;
  const kind = short === undefined ? command : "set";
  if (!Object.hasOwn(COMMANDS, kind)) {
    const near = closest(command, [...Object.keys(COMMANDS), ...Object.keys(SHORT_FORMS)]);
    throw usage(
      `unknown command ${JSON.stringify(command)}${near === undefined ? "" : `; did you mean ${near}?`} (see hapgent --help)`,
    );
  }
  const name = kind as keyof typeof COMMANDS;
  const { values, positionals } = parseOptions(rest, COMMANDS[name], command);
  if (values.help) {
    io.out(HELP[name]);
    return CLI_EXIT.OK;
  }
  for (const unknown of unknownVariables(io.env)) {
    io.err(`hapgent: warning: ${describeUnknownVariable(unknown)}\n`);
  }
  switch (name) {
    case "status":
      expectPositionals(positionals, 0, command);
      return status(io, values);
    case "check":
      expectPositionals(positionals, 1, command);
      return check(io, values, positionals[0]);
    case "set":
      expectPositionals(positionals, short === undefined ? 1 : 0, command);
      return set(io, values, short ?? statusWord(positionals[0]));
    case "fleet":
      return fleet(io, values, positionals, statusWord);
  }
}

function statusWord(word: string | undefined): Status {
  if (word === undefined) throw usage(`set needs a STATUS: one of ${STATUSES.join(", ")}`);
  const upper = word.toUpperCase();
  if (!isStatus(upper)) {
    throw usage(`status must be one of ${STATUSES.join(", ")}, got ${JSON.stringify(word)}`);
  }
  return upper;
}
