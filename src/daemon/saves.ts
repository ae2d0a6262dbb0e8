/**
 * Saving the state the agent answers: one save at a time; requests made during a save collapse
 * into one more save of the newest state, so after any burst the file holds the last state. A
 * save that fails (disk full, read-only file system) is tried again later, so the file catches up
 * with the answered state once the fault is gone.
 */
import { formatAnswered, type State } from "../core/state.js";
import type { Logger } from "../log.js";
import type { StateStore } from "../store.js";

export interface Saves {
  /** Saves the state `current()` gives when the save runs, now or after the running one. */
  request(): void;
  /** Resolves when no save is running (a save waiting to be retried is not waited for). */
  idle(): Promise<void>;
  /** True while a failed save waits to be retried. */
  readonly pending: boolean;
  /** Why the last save failed, while one waits to be retried. */
  readonly failure: string | undefined;
  /** Gives up a retry: the caller reads the file instead. Forgets the failures. */
  abandon(): void;
  /** Saves that succeeded, and that failed, since the start (for metrics). */
  readonly savedTotal: number;
  readonly failedTotal: number;
}

export interface SavesOptions {
  readonly store: Pick<StateStore, "path" | "save">;
  readonly log: Logger;
  readonly current: () => State;
  /** How long to wait before retrying after `failures` failed saves in a row. */
  readonly retryDelayMs?: (failures: number) => number;
}

/** 1 s, 2 s, 4 s … up to 30 s: quick when the fault is brief, quiet when it lasts. */
export const SAVE_RETRY_MAX_MS = 30_000;
export function defaultRetryDelayMs(failures: number): number {
  return Math.min(SAVE_RETRY_MAX_MS, 1000 * 2 ** Math.max(0, failures - 1));
}

/**
 * One save at a time, the last wins: requests made during a save collapse into one more call of
 * `save`, which reads what it saves when it runs. Used for the state file and the fleet's cache.
 */
export interface SaveQueue {
  /** Runs `save` soon, or once more after the running one. */
  request(): void;
  /** Whether a request waits for the running save to end. */
  readonly waiting: boolean;
  /** Resolves when no save is running. */
  idle(): Promise<void>;
}

/** `save` handles its own failures: it must not reject. */
export function createSaveQueue(save: () => Promise<void>): SaveQueue {
  let saving: Promise<void> | undefined;
  let wanted = false;

  const run = async (): Promise<void> => {
    // Never finishes synchronously, so `saving` is assigned before it is cleared below.
    await undefined;
    try {
      while (wanted) {
        wanted = false;
        await save();
      }
    } finally {
      // In the same step as the last check of `wanted`: no request can fall between them.
      saving = undefined;
    }
  };

  return {
    request() {
      wanted = true;
      saving ??= run();
    },
    get waiting() {
      return wanted;
    },
    async idle() {
      while (saving) await saving;
    },
  };
}

/** The state file's saves: the queue, and the failures and retry around it. */
interface StateSaves {
  readonly options: Required<SavesOptions>;
  readonly queue: SaveQueue;
  // Failed saves in a row, and the timer that will try again.
  failures: number;
  retry: NodeJS.Timeout | undefined;
  failure: string | undefined;
  savedTotal: number;
  failedTotal: number;
}

export function createSaves({
  store,
  log,
  current,
  retryDelayMs = defaultRetryDelayMs,
}: SavesOptions): Saves {
  const saves: StateSaves = {
    options: { store, log, current, retryDelayMs },
    queue: createSaveQueue(() => saveOnce(saves, current())),
    failures: 0,
    retry: undefined,
    failure: undefined,
    savedTotal: 0,
    failedTotal: 0,
  };
  return {
    request: () => request(saves),
    idle: () => saves.queue.idle(),
    get pending() {
      return saves.retry !== undefined;
    },
    get failure() {
      return saves.retry === undefined ? undefined : saves.failure;
    },
    abandon() {
      cancelRetry(saves);
      saves.failures = 0;
    },
    get savedTotal() {
      return saves.savedTotal;
    },
    get failedTotal() {
      return saves.failedTotal;
    },
  };
}

function cancelRetry(saves: StateSaves): void {
  clearTimeout(saves.retry);
  saves.retry = undefined;
}

function request(saves: StateSaves): void {
  cancelRetry(saves);
  saves.queue.request();
}

async function saveOnce(saves: StateSaves, snapshot: State): Promise<void> {
  const { store, log, retryDelayMs } = saves.options;
  try {
    await store.save(snapshot);
    if (saves.failures > 0) {
      log.notice(
        `saved state file ${store.path} after ${saves.failures} failed attempt${saves.failures === 1 ? "" : "s"}: ${formatAnswered(snapshot)}`,
      );
    }
    saves.failures = 0;
    saves.failure = undefined;
    saves.savedTotal++;
  } catch (err) {
    saves.failures++;
    saves.failedTotal++;
    saves.failure = (err as Error).message;
    const delayMs = retryDelayMs(saves.failures);
    log.error(
      `cannot save state file ${store.path}: ${(err as Error).message}; still answering ${formatAnswered(snapshot)}; trying again in ${delayMs / 1000} s`,
    );
    // Unless a newer request is already waiting, which saves at once.
    if (!saves.queue.waiting) {
      saves.retry = setTimeout(() => request(saves), delayMs);
      // A retry never keeps the process alive; TERM makes its own last attempt.
      saves.retry.unref();
    }
  }
}
