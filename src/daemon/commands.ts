/**
 * The agent's current state and the operator's commands on it, applied strictly in the order
 * they arrive.
 *
 * `up` and `down` change the state at once (the next probe already answers it) and ask for a
 * save (saves.ts). A `reload` first waits for a running save (the file must hold what came
 * before it), then reads the file, which wins over a save still waiting to be retried; commands
 * that arrive meanwhile wait behind it.
 */
import { FALLBACK_STATE, formatState, type State, sameState, withStatus } from "../core/state.js";
import type { Logger } from "../log.js";
import type { StateStore } from "../store.js";
import { createSaves, type SavesOptions } from "./saves.js";

export { defaultRetryDelayMs, SAVE_RETRY_MAX_MS } from "./saves.js";

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
  readonly retryDelayMs?: SavesOptions["retryDelayMs"];
}

interface Queued {
  readonly command: Command;
  readonly cause: string;
  readonly applied: () => void;
}

/**
 * Longer than a screen because it is a closure: the queue, the state and the drain share their
 * variables; each function inside reads in one.
 */
export function createCommands({
  store,
  log,
  initial = FALLBACK_STATE,
  retryDelayMs,
}: CommandsOptions): Commands {
  let state = initial;
  const queue: Queued[] = [];
  let running = false;
  // Before the first command the state was never answered, so there is no change to report.
  let started = false;
  let draining: Promise<void> | undefined;
  const saves = createSaves({
    store,
    log,
    current: () => state,
    ...(retryDelayMs === undefined ? {} : { retryDelayMs }),
  });

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

  const reload = async (cause: string): Promise<void> => {
    await saves.idle();
    // The operator asked for the file: a state that could not be saved gives way to it.
    if (saves.pending) {
      log.warning(
        `${cause}: the state file ${store.path} was never saved with ${formatState(state)}; reading it as it is`,
      );
    }
    saves.abandon();
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
          saves.request();
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
      if (saves.pending) saves.request();
      do {
        while (draining) await draining;
        await saves.idle();
      } while (draining);
    },
  };
}
