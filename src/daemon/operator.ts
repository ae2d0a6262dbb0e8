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
import { createSaves, type Saves, type SavesOptions } from "./saves.js";

export { defaultRetryDelayMs, SAVE_RETRY_MAX_MS } from "./saves.js";

export type Command = "up" | "down" | "reload";

/**
 * How a state change came about, as metrics count them: a command's kind, never its wording.
 * A change made through the control socket is `control` here and `via: "cli"` in the state
 * file's record (core/state.ts's VIAS): both names are public (a metric label, a file format)
 * and stay as released; they name the same origin.
 */
export const CHANGE_CAUSES = ["signal", "reload", "control", "expiry"] as const;
export type ChangeCause = (typeof CHANGE_CAUSES)[number];

/** What the commands have done since the start, for metrics. */
export interface OperatorStats {
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

export interface Operator {
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
  readonly stats: OperatorStats;
}

export interface OperatorOptions {
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

/** The operator's layer as it is: the answered state, the queue and the file's standing. */
interface OperatorState {
  readonly store: OperatorOptions["store"];
  readonly log: Logger;
  readonly now: () => number;
  readonly expiryCheckMs: number;
  readonly readRetryDelayMs: (attempts: number) => number;
  readonly saves: Saves;
  state: State;
  readonly queue: Queued[];
  running: boolean;
  // Before the first command the state was never answered, so there is no change to report.
  started: boolean;
  draining: Promise<void> | undefined;
  readonly changes: Record<ChangeCause, number>;
  // Whether the last read of the file found it valid, and how many saves had been made then: a
  // save since makes the file valid again.
  loadedValid: boolean;
  savesAtLoad: number;
  expiryTimer: NodeJS.Timeout | undefined;
  // The background read after a reload gave way to the commands behind it: one at a time.
  retryTimer: NodeJS.Timeout | undefined;
}

/** The operator's layer: what the state file says, and the commands on it, in their order. */
export function createOperator({
  store,
  log,
  initial = FALLBACK_STATE,
  retryDelayMs,
  now = Date.now,
  expiryCheckMs = EXPIRY_CHECK_MS,
  readRetryDelayMs = defaultReadRetryDelayMs,
}: OperatorOptions): Operator {
  const op: OperatorState = {
    store,
    log,
    now,
    expiryCheckMs,
    readRetryDelayMs,
    saves: createSaves({
      store,
      log,
      current: () => op.state,
      ...(retryDelayMs === undefined ? {} : { retryDelayMs }),
    }),
    state: initial,
    queue: [],
    running: false,
    started: false,
    draining: undefined,
    changes: { signal: 0, reload: 0, control: 0, expiry: 0 },
    loadedValid: true,
    savesAtLoad: 0,
    expiryTimer: undefined,
    retryTimer: undefined,
  };
  return {
    get state() {
      return op.state;
    },
    command(command, cause) {
      return new Promise<void>((applied) => enqueue(op, { command, cause, applied }));
    },
    change(change, cause, by) {
      return new Promise<ChangeOutcome>((applied) =>
        enqueue(op, { command: "change", change, cause, by, applied }),
      );
    },
    get stats() {
      return {
        changes: op.changes,
        fileValid: fileValid(op),
        saveFailures: op.saves.failedTotal,
      };
    },
    settled: () => settled(op),
  };
}

async function settled(op: OperatorState): Promise<void> {
  // A save waiting to be retried gets its last chance now (TERM waits for this).
  if (op.saves.pending) op.saves.request();
  do {
    while (op.draining) await op.draining;
    await op.saves.idle();
  } while (op.draining);
}

/** Applies a state; returns the change as log text: `old -> new`, or `new (unchanged)`. */
function set(op: OperatorState, next: State, cause: ChangeCause): string {
  const first = !op.started;
  op.started = true;
  let change: string;
  // The new state in full, with its record of how, who and why: the journal is the history.
  if (first) change = formatState(next);
  else if (sameState(op.state, next)) change = `${formatState(next)} (unchanged)`;
  else {
    change = `${formatAnswered(op.state)} -> ${formatState(next)}`;
    op.changes[cause]++;
  }
  op.state = next;
  armExpiry(op);
  return change;
}

/** A timer for the pending expiry, if any; it queues the expiry behind earlier commands. */
function armExpiry(op: OperatorState): void {
  clearTimeout(op.expiryTimer);
  op.expiryTimer = undefined;
  const leftMs = msUntilExpiry(op.state, op.now());
  if (leftMs === undefined) return;
  op.expiryTimer = setTimeout(
    () => enqueue(op, { command: "expire", cause: "expiry", applied: () => {} }),
    Math.min(leftMs, op.expiryCheckMs),
  );
  // The agent's sockets keep the process; a pending expiry alone does not.
  op.expiryTimer.unref();
}

/** The state that returns when the pending expiry is due; otherwise the timer is set again. */
function expireIfDue(op: OperatorState, cause: string): boolean {
  const returned = expire(op.state, op.now());
  if (returned === undefined) {
    armExpiry(op);
    return false;
  }
  const at = op.state.expires?.at;
  op.log.notice(`${cause}: the change expired (due ${at}): state ${set(op, returned, "expiry")}`);
  op.saves.request();
  return true;
}

function loaded(op: OperatorState, valid: boolean): void {
  op.loadedValid = valid;
  op.savesAtLoad = op.saves.savedTotal;
}

function fileValid(op: OperatorState): boolean {
  return op.loadedValid || op.saves.savedTotal > op.savesAtLoad;
}

async function reload(op: OperatorState, cause: string): Promise<void> {
  const { store, log, saves } = op;
  await saves.idle();
  // The operator asked for the file: a state that could not be saved gives way to it.
  if (saves.pending) {
    log.warning(
      `${cause}: the state file ${store.path} was never saved with ${formatAnswered(op.state)}; reading it as it is`,
    );
  }
  saves.abandon();
  const result = await readUntilRead(op, cause);
  if (result.ok || !isTransientReadError(result.code)) {
    cancelRetry(op);
    loaded(op, result.ok);
  }
  if (result.ok) {
    log.notice(
      `${cause}: loaded state file ${store.path}: ${set(op, reloaded(op, result.state, cause), "reload")}`,
    );
    // A deadline that passed while the agent was stopped, or while the file was being edited.
    expireIfDue(op, cause);
  } else if (isTransientReadError(result.code)) {
    const keeping = op.started ? `keeping state ${formatAnswered(op.state)}` : "answering MAINT";
    log.warning(
      `${cause}: state file ${store.path} still ${result.reason}: ${keeping}; the commands behind go on, and the file is read again every ${READ_RETRY_MAX_MS / 1000} s`,
    );
    retryLater(op, cause);
  } else {
    // Nothing of the previous state survives a bad file: the operator must look at it.
    log.warning(
      `${cause}: state file ${store.path}: ${result.reason}; state ${set(op, FALLBACK_STATE, "reload")}`,
    );
  }
}

/**
 * The file, or why it is invalid. A failure that is not about the file (EMFILE, EIO …) says
 * nothing of it: the state stays as it is (MAINT before the first read) and the file is read
 * again, 0.1 s to 5 s apart; the commands behind wait, so that they still apply in their order
 * on top of it, but for READ_HOLD_MAX_MS at most (START_READ_HOLD_MS before the agent listens):
 * then the fault is returned, and the reload reads again in the background. Not unref()'d:
 * before the agent listens it is all there is to do.
 */
async function readUntilRead(op: OperatorState, cause: string): Promise<LoadResult> {
  const { store, log } = op;
  const since = op.now();
  const holdMs = op.started ? READ_HOLD_MAX_MS : START_READ_HOLD_MS;
  for (let failures = 0; ; failures++) {
    const result = await store.load();
    const giveWay = failures > 0 && op.now() - since >= holdMs;
    if (result.ok || !isTransientReadError(result.code) || giveWay) {
      if (failures > 0 && !(giveWay && !result.ok && isTransientReadError(result.code))) {
        log.notice(
          `${cause}: read the state file ${store.path} after ${failures} failed attempt${failures === 1 ? "" : "s"}`,
        );
      }
      return result;
    }
    if (failures === 0) {
      const keeping = op.started ? `keeping state ${formatAnswered(op.state)} and ` : "";
      log.warning(
        `${cause}: state file ${store.path} ${result.reason}, a fault of the moment, not of the file: ${keeping}reading it again until it can be read`,
      );
      // Nothing read yet: MAINT is answered, for want of the file.
      if (!op.started) loaded(op, false);
    }
    await new Promise((resolve) => setTimeout(resolve, op.readRetryDelayMs(failures + 1)));
  }
}

function retryLater(op: OperatorState, cause: string): void {
  if (op.retryTimer !== undefined) return;
  op.retryTimer = setTimeout(() => {
    op.retryTimer = undefined;
    enqueue(op, { command: "reload", cause: `${cause}, read again`, applied: () => {} });
  }, READ_RETRY_MAX_MS);
  op.retryTimer.unref();
}

function cancelRetry(op: OperatorState): void {
  clearTimeout(op.retryTimer);
  op.retryTimer = undefined;
}

/**
 * A file an operator edited by hand and had read again (HUP) still holds the record of an
 * earlier change (or none): the agent records the reload in its own state (status and the log
 * show it; the file is not rewritten for it). A file written with its own, newer record (the
 * command line) keeps it.
 */
function reloaded(op: OperatorState, file: State, cause: string): State {
  if (!op.started || cause === "start-up") return file;
  const written = file.changed;
  const known = op.state.changed;
  const stale =
    written === undefined ||
    (known !== undefined && Date.parse(written.at) <= Date.parse(known.at));
  if (!stale) return file;
  // Read again without an edit that changes the answer: the last record still stands.
  if (sameState(file, op.state)) return withRecords(file, known, file.expires);
  return withRecords(file, { at: new Date(op.now()).toISOString(), via: "reload" }, file.expires);
}

async function applyRequested(
  op: OperatorState,
  change: Change,
  cause: string,
  by: string | undefined,
): Promise<ChangeOutcome> {
  const { store, log, saves } = op;
  await saves.idle();
  // A state answered but never saved (a full disk): the file does not hold what is answered.
  const unsaved = saves.pending;
  saves.abandon();
  const file = await store.load();
  const transient = !file.ok && isTransientReadError(file.code);
  // Nothing read yet to stand in for the file: applying the change to nothing would save it
  // over a file that may hold services.
  if (transient && !fileValid(op)) {
    const reason = `the state file ${store.path} ${file.reason}, a fault of the moment, and no state read before can stand in for it: nothing was changed; try again`;
    log.warning(`${cause}: refused: ${reason}`);
    return { ok: false, code: "unreadable", reason };
  }
  const base = baseOfChange(op, file, cause);
  const origin: Origin = { atMs: op.now(), via: "cli", by };
  // What an expiry brings back is what HAProxy hears now, which the file may not hold.
  const before = file.ok && !unsaved ? undefined : op.state;
  const next = applyChange(base, change, origin, before);
  if (!next.ok) {
    log.warning(`${cause}: refused: ${next.reason}`);
    return next;
  }
  const replaced = file.ok || transient || file.code === "ENOENT" ? undefined : file.reason;
  log.notice(`${cause}: state ${set(op, next.state, "control")}${cancelled(next.cancelled)}`);
  // What is answered now is saved over the file: reading it again would undo it.
  cancelRetry(op);
  saves.request();
  await saves.idle();
  const unsavedNow = saves.failure;
  // Said only once it is so: an invalid file is replaced when the save is done.
  if (replaced !== undefined)
    log.warning(
      `${cause}: the state file ${store.path} was invalid (${replaced}); ${unsavedNow === undefined ? "replaced" : "not replaced yet: the save failed, and is retried"}`,
    );
  return { ok: true, state: op.state, replaced, unsaved: unsavedNow, cancelled: next.cancelled };
}

/**
 * What a change applies to: the file as read, nothing for an invalid file, and the state
 * answered when the file cannot be read for a reason other than the file (EMFILE, EIO …):
 * dropping the file's services for a moment's fault would put a drained service back.
 */
function baseOfChange(op: OperatorState, file: LoadResult, cause: string): State | undefined {
  if (file.ok || !isTransientReadError(file.code)) {
    loaded(op, file.ok);
    return file.ok ? file.state : undefined;
  }
  op.log.warning(
    `${cause}: state file ${op.store.path} ${file.reason}, a fault of the moment, not of the file: changing the state answered, ${formatAnswered(op.state)}`,
  );
  // A state answered because the file was invalid is no base either.
  return fileValid(op) ? op.state : undefined;
}

/** An `up` or a `down`: answered at once, and saved. */
function applySignalled(op: OperatorState, command: "up" | "down", cause: string): void {
  const status = command === "up" ? "UP" : "DOWN";
  const origin: Origin = {
    atMs: op.now(),
    via: "signal",
    signal: isSignalName(cause) ? cause : undefined,
  };
  const ended = op.state.expires;
  op.log.notice(
    `${cause}: state ${set(op, applySignal(op.state, status, origin), "signal")}${cancelled(ended)}`,
  );
  // What is answered now is saved over the file: reading it again would undo it.
  cancelRetry(op);
  op.saves.request();
}

function enqueue(op: OperatorState, queued: Queued): void {
  op.queue.push(queued);
  if (op.running) return;
  const done = drain(op);
  // A drain that met no wait has already finished; only one still running is kept.
  if (op.running) op.draining = done;
}

async function drain(op: OperatorState): Promise<void> {
  op.running = true;
  try {
    // Runs synchronously until the first reload, so up/down reach the next probe at once.
    for (let next = op.queue.shift(); next; next = op.queue.shift()) {
      if (next.command === "change") {
        next.applied(await applyRequested(op, next.change, next.cause, next.by));
        continue;
      }
      if (next.command === "reload") {
        await reload(op, next.cause);
      } else if (next.command === "expire") {
        expireIfDue(op, next.cause);
      } else {
        applySignalled(op, next.command, next.cause);
      }
      next.applied();
    }
  } finally {
    op.running = false;
    op.draining = undefined;
  }
}
