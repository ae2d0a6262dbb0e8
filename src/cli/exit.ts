/** Exit codes of the commands, one meaning each. */
export const CLI_EXIT = Object.freeze({
  OK: 0,
  INVALID_FILE: 1,
  USAGE: 2,
  NO_AGENT: 3,
  NOT_CONFIRMED: 4,
  CANNOT_WRITE: 5,
  SEVERAL_AGENTS: 6,
  UNSAFE_PATH: 7,
  NOT_HEARD: 8,
  NOT_IDLE: 9,
  ETCD: 10,
});

export type CliExit = (typeof CLI_EXIT)[keyof typeof CLI_EXIT];

/** A command that cannot go on: its message (without the `hapgent: ` prefix) and exit code. */
export class CliError extends Error {
  readonly exitCode: CliExit;
  constructor(exitCode: CliExit, message: string) {
    super(message);
    this.name = "CliError";
    this.exitCode = exitCode;
  }
}

/** Invalid command or input: nothing was read or written. */
export function usage(message: string): CliError {
  return new CliError(CLI_EXIT.USAGE, message);
}
