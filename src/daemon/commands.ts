/**
 * The agent's current state and the operator's commands on it, applied strictly in the order
 * they arrive.
 *
 * `up` and `down` change the state at once (the next probe already answers it) and ask for a
 * save. Saves run one at a time; requests made during a save collapse into one more save of the
 * newest state, so after any burst the file holds the last state. A save that fails (disk full,
 * read-only file system) is tried again later, so the file catches up with the state the agent
 * answers once the fault is gone. A `reload` first waits for pending saves (the file must hold
 * what came before it), then reads the file, which wins over a save still waiting to be retried;
 * commands that arrive meanwhile wait behind it.
 */
import { FALLBACK_STATE, formatState, type State, sameState, withStatus } from "../core/state.js";
import type { Logger } from "../log.js";
import type { StateStore } from "../store.js";

export type Command = "up" | "down" | "reload";

export interface Commands {
  /** The state every probe answers now. */
  readonly state: State;
  /**
   * Queues a command; `cause` names it in the log (e.g. "SIGUSR1"). Resolves once the command
   * has been applied to the state (not necessarily saved).
   */
  command(command: Command, cause: string): Promise<void>;
  /**
   * Resolves when no command is waiting and no save is running; a save waiting to be retried is
   * tried once more first.
   */
  settled(): Promise<void>;
}

export interface CommandsOptions {
  readonly store: Pick<StateStore, "path" | "load" | "save">;
  readonly log: Logger;
  /** The state before the first reload; the file is not read until a reload is commanded. */
  readonly initial?: State;
  /** How long to wait before retrying after `failures` failed saves in a row. */
  readonly retryDelayMs?: (failures: number) => number;
}

/** 1 s, 2 s, 4 s … up to 30 s: quick when the fault is brief, quiet when it lasts. */
export const SAVE_RETRY_MAX_MS = 30_000;
export function defaultRetryDelayMs(failures: number): number {
  return Math.min(SAVE_RETRY_MAX_MS, 1000 * 2 ** Math.max(0, failures - 1));
}

interface Queued {
  readonly command: Command;
  readonly cause: string;
  readonly applied: () => void;
}

export function createCommands({
  store,
  log,
  initial = FALLBACK_STATE,
  retryDelayMs = defaultRetryDelayMs,
}: CommandsOptions): Commands {
  let state = initial;
  const queue: Queued[] = [];
  let running = false;
  // Before the first command the state was never answered, so there is no change to report.
  let started = false;
  let draining: Promise<void> | undefined;
  let saving: Promise<void> | undefined;
  let saveWanted = false;
  // Failed saves in a row, and the timer that will try again.
  let failures = 0;
  let retry: NodeJS.Timeout | undefined;

  const cancelRetry = (): void => {
    clearTimeout(retry);
    retry = undefined;
  };

  /** Applies a state; returns the change as log text: `old -> new`, or `new (unchanged)`. */
  const set = (next: State): string => {
    const first = !started;
    started = true;
    const change = first
      ? formatState(next)
      : sameState(state, next)
        ? `${formatState(next)} (unchanged)`
        : `${formatState(state)} -> ${formatState(next)}`;
    state = next;
    return change;
  };

  const requestSave = (): void => {
    cancelRetry();
    saveWanted = true;
    saving ??= runSaves();
  };

  const runSaves = async (): Promise<void> => {
    // Never finishes synchronously, so `saving` is assigned before it is cleared below.
    await undefined;
    try {
      while (saveWanted) {
        saveWanted = false;
        const snapshot = state;
        try {
          await store.save(snapshot);
          if (failures > 0) {
            log.notice(
              `saved state file ${store.path} after ${failures} failed attempt${failures === 1 ? "" : "s"}: ${formatState(snapshot)}`,
            );
          }
          failures = 0;
        } catch (err) {
          failures++;
          const delayMs = retryDelayMs(failures);
          log.error(
            `cannot save state file ${store.path}: ${(err as Error).message}; still answering ${formatState(snapshot)}; trying again in ${delayMs / 1000} s`,
          );
          // Unless a newer request is already waiting, which saves at once.
          if (!saveWanted) {
            retry = setTimeout(requestSave, delayMs);
            // A retry never keeps the process alive; TERM makes its own last attempt.
            retry.unref();
          }
        }
      }
    } finally {
      // In the same step as the last check of saveWanted: no request can fall between them.
      saving = undefined;
    }
  };

  const reload = async (cause: string): Promise<void> => {
    while (saving) await saving;
    // The operator asked for the file: a state that could not be saved gives way to it.
    if (retry !== undefined) {
      cancelRetry();
      log.warning(
        `${cause}: the state file ${store.path} was never saved with ${formatState(state)}; reading it as it is`,
      );
    }
    failures = 0;
    const result = await store.load();
    if (result.ok) {
      log.notice(`${cause}: loaded state file ${store.path}: ${set(result.state)}`);
    } else {
      // Nothing of the previous state survives a bad file: the operator must look at it.
      log.warning(
        `${cause}: state file ${store.path}: ${result.reason}; state ${set(FALLBACK_STATE)}`,
      );
    }
  };

  const drain = async (): Promise<void> => {
    running = true;
    try {
      // Runs synchronously until the first reload, so up/down reach the next probe at once.
      for (let next = queue.shift(); next; next = queue.shift()) {
        if (next.command === "reload") {
          await reload(next.cause);
        } else {
          const status = next.command === "up" ? "UP" : "DOWN";
          log.notice(`${next.cause}: state ${set(withStatus(state, status))}`);
          requestSave();
        }
        next.applied();
      }
    } finally {
      running = false;
      draining = undefined;
    }
  };

  return {
    get state() {
      return state;
    },

    command(command, cause) {
      return new Promise<void>((applied) => {
        queue.push({ command, cause, applied });
        if (running) return;
        const done = drain();
        // A drain that met no reload has already finished; only one still running is kept.
        if (running) draining = done;
      });
    },

    async settled() {
      // A save waiting to be retried gets its last chance now (TERM waits for this).
      if (retry !== undefined) requestSave();
      while (draining || saving) await (draining ?? saving);
    },
  };
}
