/**
 * The agent's current state and the operator's commands on it, applied strictly in the order
 * they arrive.
 *
 * `up` and `down` change the state at once (the next probe already answers it) and ask for a
 * save (saves.ts). A `reload` first waits for a running save (the file must hold what came
 * before it), then reads the file, which wins over a save still waiting to be retried; commands
 * that arrive meanwhile wait behind it.
 */
import { applyChange, type Change } from "../core/change.js";
import { FALLBACK_STATE, formatState, type State, sameState, withStatus } from "../core/state.js";
import type { Logger } from "../log.js";
import type { StateStore } from "../store.js";
import { createSaves, type SavesOptions } from "./saves.js";

export { defaultRetryDelayMs, SAVE_RETRY_MAX_MS } from "./saves.js";

export type Command = "up" | "down" | "reload";

/** How a state change came about, as metrics count them: a command's kind, never its wording. */
export const CHANGE_CAUSES = ["signal", "reload", "control"] as const;
export type ChangeCause = (typeof CHANGE_CAUSES)[number];

/** What the commands have done since the start, for metrics. */
export interface CommandStats {
  /** Changes of the answered state (a command that left it as it was is not one), by cause. */
  readonly changes: Readonly<Record<ChangeCause, number>>;
  /** True when the state file, as last read or written, is valid. */
  readonly fileValid: boolean;
  readonly saveFailures: number;
}

/** How a change asked for through the control socket ended. */
export type ChangeOutcome =
  | {
      readonly ok: true;
      readonly state: State;
      /** Why the file it replaced was invalid, when it was. */
      readonly replaced: string | undefined;
      /** Why it could not be saved (it is answered, and the save is retried), or undefined. */
      readonly unsaved: string | undefined;
    }
  | { readonly ok: false; readonly code: "invalid" | "no-instance"; readonly reason: string };

export interface Commands {
  /** The state every probe answers now. */
  readonly state: State;
  /**
   * Queues a command; `cause` names it in the log (e.g. "SIGUSR1"). Resolves once the command
   * has been applied to the state (not necessarily saved).
   */
  command(command: Command, cause: string): Promise<void>;
  /**
   * Queues a change, applied to the state file as it is then (the fields it does not name keep
   * their value from the file), and resolves once the new state is answered and saved.
   */
  change(change: Change, cause: string): Promise<ChangeOutcome>;
  /**
   * Resolves when no command is waiting and no save is running; a save waiting to be retried is
   * tried once more first.
   */
  settled(): Promise<void>;
  readonly stats: CommandStats;
}

export interface CommandsOptions {
  readonly store: Pick<StateStore, "path" | "load" | "save">;
  readonly log: Logger;
  /** The state before the first reload; the file is not read until a reload is commanded. */
  readonly initial?: State;
  /** How long to wait before retrying after `failures` failed saves in a row. */
  readonly retryDelayMs?: SavesOptions["retryDelayMs"];
}

type Queued =
  | { readonly command: Command; readonly cause: string; readonly applied: () => void }
  | {
      readonly command: "change";
      readonly change: Change;
      readonly cause: string;
      readonly applied: (outcome: ChangeOutcome) => void;
    };

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
  const changes: Record<ChangeCause, number> = { signal: 0, reload: 0, control: 0 };
  // Whether the last read of the file found it valid, and how many saves had been made then: a
  // save since makes the file valid again.
  let loadedValid = true;
  let savesAtLoad = 0;
  const saves = createSaves({
    store,
    log,
    current: () => state,
    ...(retryDelayMs === undefined ? {} : { retryDelayMs }),
  });

  /** Applies a state; returns the change as log text: `old -> new`, or `new (unchanged)`. */
  const set = (next: State, cause: ChangeCause): string => {
    const first = !started;
    started = true;
    let change: string;
    if (first) change = formatState(next);
    else if (sameState(state, next)) change = `${formatState(next)} (unchanged)`;
    else {
      change = `${formatState(state)} -> ${formatState(next)}`;
      changes[cause]++;
    }
    state = next;
    return change;
  };

  const loaded = (valid: boolean): void => {
    loadedValid = valid;
    savesAtLoad = saves.savedTotal;
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
    loaded(result.ok);
    if (result.ok) {
      log.notice(`${cause}: loaded state file ${store.path}: ${set(result.state, "reload")}`);
    } else {
      // Nothing of the previous state survives a bad file: the operator must look at it.
      log.warning(
        `${cause}: state file ${store.path}: ${result.reason}; state ${set(FALLBACK_STATE, "reload")}`,
      );
    }
  };

  const applyRequested = async (change: Change, cause: string): Promise<ChangeOutcome> => {
    await saves.idle();
    saves.abandon();
    const file = await store.load();
    loaded(file.ok);
    const next = applyChange(file.ok ? file.state : undefined, change);
    if (!next.ok) {
      log.warning(`${cause}: refused: ${next.reason}`);
      return next;
    }
    const replaced = file.ok || file.code === "ENOENT" ? undefined : file.reason;
    if (replaced !== undefined)
      log.warning(`${cause}: the state file ${store.path} was invalid (${replaced}); replaced`);
    log.notice(`${cause}: state ${set(next.state, "control")}`);
    saves.request();
    await saves.idle();
    return { ok: true, state, replaced, unsaved: saves.failure };
  };

  const enqueue = (queued: Queued): void => {
    queue.push(queued);
    if (running) return;
    const done = drain();
    // A drain that met no wait has already finished; only one still running is kept.
    if (running) draining = done;
  };

  const drain = async (): Promise<void> => {
    running = true;
    try {
      // Runs synchronously until the first reload, so up/down reach the next probe at once.
      for (let next = queue.shift(); next; next = queue.shift()) {
        if (next.command === "change") {
          next.applied(await applyRequested(next.change, next.cause));
          continue;
        }
        if (next.command === "reload") {
          await reload(next.cause);
        } else {
          const status = next.command === "up" ? "UP" : "DOWN";
          log.notice(`${next.cause}: state ${set(withStatus(state, status), "signal")}`);
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
      return new Promise<void>((applied) => enqueue({ command, cause, applied }));
    },

    change(change, cause) {
      return new Promise<ChangeOutcome>((applied) =>
        enqueue({ command: "change", change, cause, applied }),
      );
    },

    get stats() {
      return {
        changes,
        fileValid: loadedValid || saves.savedTotal > savesAtLoad,
        saveFailures: saves.failedTotal,
      };
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
