/**
 * One line per event. Under systemd the lines carry `<N>` syslog priority prefixes, which
 * journald turns into levels; elsewhere they carry a timestamp and the level's name.
 */

const PRIORITIES = { error: 3, warning: 4, notice: 5, info: 6 } as const;

export type Level = keyof typeof PRIORITIES;

export interface Logger {
  error(message: string): void;
  warning(message: string): void;
  notice(message: string): void;
  info(message: string): void;
}

export interface LineFormat {
  /** True when stderr is connected to the systemd journal. */
  readonly journal: boolean;
  readonly now?: () => Date;
}

export interface LoggerOptions extends LineFormat {
  /** Takes one complete line; never throws (a log that cannot be written is not the agent's end). */
  readonly write: (line: string) => void;
}

/** One log line, with its line end. */
export function formatLine(
  level: Level,
  message: string,
  { journal, now = () => new Date() }: LineFormat,
): string {
  // A message must stay one line, whatever a file name or an error text contains.
  const text = message.replace(/[\r\n]+/g, " ");
  return journal
    ? `<${PRIORITIES[level]}>${text}\n`
    : `${now().toISOString()} hapgent ${level}: ${text}\n`;
}

export function createLogger({ write, ...format }: LoggerOptions): Logger {
  const emit = (level: Level) => (message: string) => write(formatLine(level, message, format));
  return {
    error: emit("error"),
    warning: emit("warning"),
    notice: emit("notice"),
    info: emit("info"),
  };
}

/** A logger that drops everything, for tests that do not look at logs. */
export const silentLogger: Logger = createLogger({ write: () => {}, journal: false });
