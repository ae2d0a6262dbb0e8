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
 * A closure over the save in progress, the request waiting and the retry timer; each function
 * inside reads in a screen.
 */
export function createSaves({
  store,
  log,
  current,
  retryDelayMs = defaultRetryDelayMs,
}: SavesOptions): Saves {
  let saving: Promise<void> | undefined;
  let wanted = false;
  // Failed saves in a row, and the timer that will try again.
  let failures = 0;
  let retry: NodeJS.Timeout | undefined;
  let failure: string | undefined;
  let savedTotal = 0;
  let failedTotal = 0;

  const cancelRetry = (): void => {
    clearTimeout(retry);
    retry = undefined;
  };

  const request = (): void => {
    cancelRetry();
    wanted = true;
    saving ??= run();
  };

  const saveOnce = async (snapshot: State): Promise<void> => {
    try {
      await store.save(snapshot);
      if (failures > 0) {
        log.notice(
          `saved state file ${store.path} after ${failures} failed attempt${failures === 1 ? "" : "s"}: ${formatAnswered(snapshot)}`,
        );
      }
      failures = 0;
      failure = undefined;
      savedTotal++;
    } catch (err) {
      failures++;
      failedTotal++;
      failure = (err as Error).message;
      const delayMs = retryDelayMs(failures);
      log.error(
        `cannot save state file ${store.path}: ${(err as Error).message}; still answering ${formatAnswered(snapshot)}; trying again in ${delayMs / 1000} s`,
      );
      // Unless a newer request is already waiting, which saves at once.
      if (!wanted) {
        retry = setTimeout(request, delayMs);
        // A retry never keeps the process alive; TERM makes its own last attempt.
        retry.unref();
      }
    }
  };

  const run = async (): Promise<void> => {
    // Never finishes synchronously, so `saving` is assigned before it is cleared below.
    await undefined;
    try {
      while (wanted) {
        wanted = false;
        await saveOnce(current());
      }
    } finally {
      // In the same step as the last check of `wanted`: no request can fall between them.
      saving = undefined;
    }
  };

  return {
    request,
    async idle() {
      while (saving) await saving;
    },
    get pending() {
      return retry !== undefined;
    },
    get failure() {
      return retry === undefined ? undefined : failure;
    },
    abandon() {
      cancelRetry();
      failures = 0;
    },
    get savedTotal() {
      return savedTotal;
    },
    get failedTotal() {
      return failedTotal;
    },
  };
}
