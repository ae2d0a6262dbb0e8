/**
 * The agent's current state and the operator's commands on it, applied strictly in the order
 * they arrive.
 *
 * `up` and `down` change the state at once (the next probe already answers it) and ask for a
 * save (saves.ts). A `reload` first waits for a running save (the file must hold what came
 * before it), then reads the file, which wins over a save still waiting to be retried; commands
 * that arrive meanwhile wait behind it. A read that fails for a reason other than the file
 * (EMFILE, EIO …) keeps the state and is tried again until it reads, commands still waiting.
 */
import {
  applyChange,
  applySignal,
  type Change,
  expire,
  msUntilExpiry,
  type Origin,
} from "../core/change.js";
import {
  type Expiry,
  FALLBACK_STATE,
  formatAnswered,
  formatState,
  isSignalName,
  type State,
  sameState,
  withRecords,
} from "../core/state.js";
import type { Logger } from "../log.js";
import { isTransientReadError, type LoadResult, type StateStore } from "../store.js";
import { createSaves, type SavesOptions } from "./saves.js";

export { defaultRetryDelayMs, SAVE_RETRY_MAX_MS } from "./saves.js";

export type Command = "up" | "down" | "reload";

/** How a state change came about, as metrics count them: a command's kind, never its wording. */
export const CHANGE_CAUSES = ["signal", "reload", "control", "expiry"] as const;
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
      /** The pending expiry the change replaced, if any. */
      readonly cancelled: Expiry | undefined;
    }
  | {
      readonly ok: false;
      /** `unreadable`: the file could not be read for a moment and no state read before stands in. */
      readonly code: "invalid" | "no-instance" | "unreadable";
      readonly reason: string;
    };

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
   * their value from the file), and resolves once the new state is answered and saved. `by` is
   * the user the command line says it runs as, for the audit record.
   */
  change(change: Change, cause: string, by?: string): Promise<ChangeOutcome>;
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
  /** The wall clock: audit records and expiries are times of day. */
  readonly now?: () => number;
  /** How often a pending expiry is checked against the wall clock at least. */
  readonly expiryCheckMs?: number;
  /** How long to wait before reading again after `attempts` transient failures in a row. */
  readonly readRetryDelayMs?: (attempts: number) => number;
}

/** 0.1 s, 0.2 s, 0.4 s … up to 5 s: the file is read soon after descriptors come back. */
export const READ_RETRY_MAX_MS = 5000;
/**
 * How long a reload that meets a fault of the moment holds the commands behind it. Past it, the
 * state stays, the commands go on, and the file is read again in the background: a disk that
 * keeps failing must not leave every later signal and change waiting. Below the command line's
 * default timeout (5 s), so that a change queued behind it is still answered; at start-up, past
 * the 5 s the agent waits before it listens.
 */
export const READ_HOLD_MAX_MS = 3000;
export const START_READ_HOLD_MS = 10_000;
export function defaultReadRetryDelayMs(attempts: number): number {
  return Math.min(READ_RETRY_MAX_MS, 100 * 2 ** Math.max(0, attempts - 1));
}

/** A note for the log line of a change that replaced a pending expiry. */
function cancelled(expires: Expiry | undefined): string {
  return expires === undefined ? "" : `; replaces the pending expiry due ${expires.at}`;
}

/**
 * A pending expiry is checked at least this often, so a wall clock set forward (NTP after a
 * suspend, an operator's `date -s`) brings it on time, not a timer's whole delay late.
 */
export const EXPIRY_CHECK_MS = 10_000;

type Queued =
  | {
      readonly command: Command | "expire";
      readonly cause: string;
      readonly applied: () => void;
    }
  | {
      readonly command: "change";
      readonly change: Change;
      readonly cause: string;
      readonly by: string | undefined;
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
  now = Date.now,
  expiryCheckMs = EXPIRY_CHECK_MS,
  readRetryDelayMs = defaultReadRetryDelayMs,
}: CommandsOptions): Commands {
  let state = initial;
  const queue: Queued[] = [];
  let running = false;
  // Before the first command the state was never answered, so there is no change to report.
  let started = false;
  let draining: Promise<void> | undefined;
  const changes: Record<ChangeCause, number> = { signal: 0, reload: 0, control: 0, expiry: 0 };
  // Whether the last read of the file found it valid, and how many saves had been made then: a
  // save since makes the file valid again.
  let loadedValid = true;
  let savesAtLoad = 0;
  let expiryTimer: NodeJS.Timeout | undefined;
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
    // The new state in full, with its record of how, who and why: the journal is the history.
    if (first) change = formatState(next);
    else if (sameState(state, next)) change = `${formatState(next)} (unchanged)`;
    else {
      change = `${formatAnswered(state)} -> ${formatState(next)}`;
      changes[cause]++;
    }
    state = next;
    armExpiry();
    return change;
  };

  /** A timer for the pending expiry, if any; it queues the expiry behind earlier commands. */
  const armExpiry = (): void => {
    clearTimeout(expiryTimer);
    expiryTimer = undefined;
    const leftMs = msUntilExpiry(state, now());
    if (leftMs === undefined) return;
    expiryTimer = setTimeout(
      () => enqueue({ command: "expire", cause: "expiry", applied: () => {} }),
      Math.min(leftMs, expiryCheckMs),
    );
    // The agent's sockets keep the process; a pending expiry alone does not.
    expiryTimer.unref();
  };

  /** The state that returns when the pending expiry is due; otherwise the timer is set again. */
  const expireIfDue = (cause: string): boolean => {
    const returned = expire(state, now());
    if (returned === undefined) {
      armExpiry();
      return false;
    }
    const at = state.expires?.at;
    log.notice(`${cause}: the change expired (due ${at}): state ${set(returned, "expiry")}`);
    saves.request();
    return true;
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
        `${cause}: the state file ${store.path} was never saved with ${formatAnswered(state)}; reading it as it is`,
      );
    }
    saves.abandon();
    const result = await readUntilRead(cause);
    if (result.ok || !isTransientReadError(result.code)) {
      cancelRetry();
      loaded(result.ok);
    }
    if (result.ok) {
      log.notice(
        `${cause}: loaded state file ${store.path}: ${set(reloaded(result.state, cause), "reload")}`,
      );
      // A deadline that passed while the agent was stopped, or while the file was being edited.
      expireIfDue(cause);
    } else if (isTransientReadError(result.code)) {
      const keeping = started ? `keeping state ${formatAnswered(state)}` : "answering MAINT";
      log.warning(
        `${cause}: state file ${store.path} still ${result.reason}: ${keeping}; the commands behind go on, and the file is read again every ${READ_RETRY_MAX_MS / 1000} s`,
      );
      retryLater(cause);
    } else {
      // Nothing of the previous state survives a bad file: the operator must look at it.
      log.warning(
        `${cause}: state file ${store.path}: ${result.reason}; state ${set(FALLBACK_STATE, "reload")}`,
      );
    }
  };

  /**
   * The file, or why it is invalid. A failure that is not about the file (EMFILE, EIO …) says
   * nothing of it: the state stays as it is (MAINT before the first read) and the file is read
   * again, 0.1 s to 5 s apart; the commands behind wait, so that they still apply in their order
   * on top of it, but for READ_HOLD_MAX_MS at most (START_READ_HOLD_MS before the agent listens):
   * then the fault is returned, and the reload reads again in the background. Not unref()'d:
   * before the agent listens it is all there is to do.
   */
  const readUntilRead = async (cause: string): Promise<LoadResult> => {
    const since = now();
    const holdMs = started ? READ_HOLD_MAX_MS : START_READ_HOLD_MS;
    for (let failures = 0; ; failures++) {
      const result = await store.load();
      const giveWay = failures > 0 && now() - since >= holdMs;
      if (result.ok || !isTransientReadError(result.code) || giveWay) {
        if (failures > 0 && !(giveWay && !result.ok && isTransientReadError(result.code))) {
          log.notice(
            `${cause}: read the state file ${store.path} after ${failures} failed attempt${failures === 1 ? "" : "s"}`,
          );
        }
        return result;
      }
      if (failures === 0) {
        const keeping = started ? `keeping state ${formatAnswered(state)} and ` : "";
        log.warning(
          `${cause}: state file ${store.path} ${result.reason}, a fault of the moment, not of the file: ${keeping}reading it again until it can be read`,
        );
        // Nothing read yet: MAINT is answered, for want of the file.
        if (!started) loaded(false);
      }
      await new Promise((resolve) => setTimeout(resolve, readRetryDelayMs(failures + 1)));
    }
  };

  // The background read after a reload gave way to the commands behind it: one at a time.
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  const retryLater = (cause: string): void => {
    if (retryTimer !== undefined) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      enqueue({ command: "reload", cause: `${cause}, read again`, applied: () => {} });
    }, READ_RETRY_MAX_MS);
    retryTimer.unref();
  };
  const cancelRetry = (): void => {
    clearTimeout(retryTimer);
    retryTimer = undefined;
  };

  /**
   * A file an operator edited by hand and had read again (HUP) still holds the record of an
   * earlier change (or none): the agent records the reload in its own state (status and the log
   * show it; the file is not rewritten for it). A file written with its own, newer record (the
   * command line) keeps it.
   */
  const reloaded = (file: State, cause: string): State => {
    if (!started || cause === "start-up") return file;
    const written = file.changed;
    const known = state.changed;
    const stale =
      written === undefined ||
      (known !== undefined && Date.parse(written.at) <= Date.parse(known.at));
    if (!stale) return file;
    // Read again without an edit that changes the answer: the last record still stands.
    if (sameState(file, state)) return withRecords(file, known, file.expires);
    return withRecords(file, { at: new Date(now()).toISOString(), via: "reload" }, file.expires);
  };

  const applyRequested = async (
    change: Change,
    cause: string,
    by: string | undefined,
  ): Promise<ChangeOutcome> => {
    await saves.idle();
    // A state answered but never saved (a full disk): the file does not hold what is answered.
    const unsaved = saves.pending;
    saves.abandon();
    const file = await store.load();
    const transient = !file.ok && isTransientReadError(file.code);
    // Nothing read yet to stand in for the file: applying the change to nothing would save it
    // over a file that may hold services.
    if (transient && !fileValid()) {
      const reason = `the state file ${store.path} ${file.reason}, a fault of the moment, and no state read before can stand in for it: nothing was changed; try again`;
      log.warning(`${cause}: refused: ${reason}`);
      return { ok: false, code: "unreadable", reason };
    }
    const base = baseOfChange(file, cause);
    const origin: Origin = { atMs: now(), via: "cli", by };
    // What an expiry brings back is what HAProxy hears now, which the file may not hold.
    const before = file.ok && !unsaved ? undefined : state;
    const next = applyChange(base, change, origin, before);
    if (!next.ok) {
      log.warning(`${cause}: refused: ${next.reason}`);
      return next;
    }
    const replaced = file.ok || transient || file.code === "ENOENT" ? undefined : file.reason;
    log.notice(`${cause}: state ${set(next.state, "control")}${cancelled(next.cancelled)}`);
    // What is answered now is saved over the file: reading it again would undo it.
    cancelRetry();
    saves.request();
    await saves.idle();
    const unsavedNow = saves.failure;
    // Said only once it is so: an invalid file is replaced when the save is done.
    if (replaced !== undefined)
      log.warning(
        `${cause}: the state file ${store.path} was invalid (${replaced}); ${unsavedNow === undefined ? "replaced" : "not replaced yet: the save failed, and is retried"}`,
      );
    return { ok: true, state, replaced, unsaved: unsavedNow, cancelled: next.cancelled };
  };

  /**
   * What a change applies to: the file as read, nothing for an invalid file, and the state
   * answered when the file cannot be read for a reason other than the file (EMFILE, EIO …):
   * dropping the file's services for a moment's fault would put a drained service back.
   */
  const baseOfChange = (file: LoadResult, cause: string): State | undefined => {
    if (file.ok || !isTransientReadError(file.code)) {
      loaded(file.ok);
      return file.ok ? file.state : undefined;
    }
    log.warning(
      `${cause}: state file ${store.path} ${file.reason}, a fault of the moment, not of the file: changing the state answered, ${formatAnswered(state)}`,
    );
    // A state answered because the file was invalid is no base either.
    return fileValid() ? state : undefined;
  };

  const fileValid = (): boolean => loadedValid || saves.savedTotal > savesAtLoad;

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
          next.applied(await applyRequested(next.change, next.cause, next.by));
          continue;
        }
        if (next.command === "reload") {
          await reload(next.cause);
        } else if (next.command === "expire") {
          expireIfDue(next.cause);
        } else {
          const status = next.command === "up" ? "UP" : "DOWN";
          const origin: Origin = {
            atMs: now(),
            via: "signal",
            signal: isSignalName(next.cause) ? next.cause : undefined,
          };
          const ended = state.expires;
          log.notice(
            `${next.cause}: state ${set(applySignal(state, status, origin), "signal")}${cancelled(ended)}`,
          );
          // What is answered now is saved over the file: reading it again would undo it.
          cancelRetry();
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

    change(change, cause, by) {
      return new Promise<ChangeOutcome>((applied) =>
        enqueue({ command: "change", change, cause, by, applied }),
      );
    },

    get stats() {
      return {
        changes,
        fileValid: fileValid(),
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
