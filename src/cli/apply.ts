/**
 * Two ways a change reaches the daemon. Through its control socket: the daemon applies it in order
 * with signals and reloads, saves it, and answers once it is saved. Without one (no daemon, an
 * older daemon, a socket this user may not use): the command saves the file crash-safely with the
 * daemon's own store and sends SIGHUP.
 */
import {
  type BusyReply,
  type ChangeReply,
  type ChecksView,
  isBusy,
  type PollerView,
} from "../control-protocol.js";
import { applyChange, type Change } from "../core/change.js";
import { type Expiry, formatState, isInService, type State } from "../core/state.js";
import { createLogger } from "../log.js";
import { createStateStore, isTransientReadError } from "../store.js";
import { ControlError, request } from "./control.js";
import { stillRunning } from "./daemons.js";
import { CLI_EXIT } from "./exit.js";
import type { CliIo } from "./io.js";
import type { Target } from "./target.js";

export type Applied =
  | {
      readonly code: typeof CLI_EXIT.OK;
      readonly state: State;
      readonly pid: number;
      /** The load balancers polling at the change, after it; undefined without the socket. */
      readonly pollers: readonly PollerView[] | undefined;
      /** The agent's checks at the change; undefined without the socket. */
      readonly checks: ChecksView | undefined;
    }
  | { readonly code: Exclude<(typeof CLI_EXIT)[keyof typeof CLI_EXIT], 0> };

/**
 * Applies `change`, through the socket when there is one to use; the daemon has `timeoutS` to
 * apply and save it (a stopped daemon accepts the connection and says nothing).
 */
export async function apply(
  io: CliIo,
  target: Target,
  change: Change,
  timeoutS: number,
): Promise<Applied> {
  const [daemon] = target.serving;
  if (target.agents.length > 1) {
    io.err(
      `hapgent: several hapgent processes serve ${target.config.stateFile} (pids ${target.agents.join(", ")}); nothing was written. Stop all but one.\n`,
    );
    return { code: CLI_EXIT.SEVERAL_AGENTS };
  }
  if (daemon !== undefined && target.socket.path !== undefined) {
    const reply = await request(
      target.socket.path,
      { op: "change", change, by: io.by },
      timeoutS * 1000,
    ).then(
      (value) => value as ChangeReply | BusyReply,
      (err: ControlError) => err,
    );
    if (!(reply instanceof ControlError)) return answered(io, target, daemon.pid, change, reply);
    if (reply.unanswered) {
      // The daemon may have read it and made it: sending it again (or through the file) could
      // make it twice, or undo one made since by someone else.
      io.err(
        `hapgent: the control socket ${target.socket.path} closed the connection before replying (${reply.message}); the change may or may not have been made, and was not sent again: see hapgent status\n`,
      );
      return { code: CLI_EXIT.NOT_CONFIRMED };
    }
    io.err(
      `hapgent: the control socket ${target.socket.path} did not answer (${reply.message}); saving the file and signalling instead\n`,
    );
  }
  return viaFile(io, target, change);
}

function answered(
  io: CliIo,
  target: Target,
  pid: number,
  change: Change,
  reply: ChangeReply | BusyReply,
): Applied {
  const path = target.config.stateFile;
  if (isBusy(reply)) {
    io.err(
      `hapgent: hapgent pid ${pid} was busy with other clients' changes until the timeout (${reply.error}); nothing was written\n`,
    );
    return { code: CLI_EXIT.NOT_CONFIRMED };
  }
  if (!reply.ok) {
    if (reply.code === "unreadable") {
      io.err(`hapgent: hapgent pid ${pid}: ${reply.error}\n`);
      return { code: CLI_EXIT.CANNOT_WRITE };
    }
    io.err(`hapgent: ${path}: ${reply.error}; nothing was written\n`);
    return { code: reply.code === "no-instance" ? CLI_EXIT.INVALID_FILE : CLI_EXIT.USAGE };
  }
  if (reply.unsaved !== null) {
    io.err(
      `hapgent: hapgent pid ${pid} answers the new state but cannot save ${path}: ${reply.unsaved}; it keeps trying${leftInvalid(reply.replaced ?? undefined)}\n`,
    );
    return { code: CLI_EXIT.CANNOT_WRITE };
  }
  // Only now that it is saved: what was there has really been replaced.
  if (reply.replaced !== null) {
    io.err(`hapgent: the state file ${path} was invalid (${reply.replaced}); replaced\n`);
  }
  io.out(`hapgent pid ${pid} wrote ${path}: ${formatState(reply.state)}\n`);
  noteService(io, change, reply.state);
  noteCancelled(io, reply.cancelled ?? undefined);
  const checks = {
    checks: reply.checks ?? [],
    checksProblem: reply.checksProblem ?? null,
    fleet: reply.fleet ?? null,
  };
  return { code: CLI_EXIT.OK, state: reply.state, pid, pollers: reply.pollers, checks };
}

async function viaFile(io: CliIo, target: Target, change: Change): Promise<Applied> {
  const path = target.config.stateFile;
  // The store logs only the in-place save's warning, which the operator should see.
  const store = createStateStore(path, createLogger({ write: io.err, journal: false }), io);
  const current = await store.load();
  // EMFILE, EIO …: the file may be perfectly valid; replacing it would lose what it holds.
  if (!current.ok && isTransientReadError(current.code)) {
    io.err(
      `hapgent: the state file ${path} ${current.reason}, a fault of the moment, not of the file; nothing was written: try again\n`,
    );
    return { code: CLI_EXIT.CANNOT_WRITE };
  }
  const origin = { atMs: Date.now(), via: "cli", by: io.by } as const;
  const next = applyChange(current.ok ? current.state : undefined, change, origin);
  if (!next.ok) {
    io.err(`hapgent: ${path}: ${next.reason}; nothing was written\n`);
    return { code: next.code === "no-instance" ? CLI_EXIT.INVALID_FILE : CLI_EXIT.USAGE };
  }
  const invalid = !current.ok && current.code !== "ENOENT" ? current.reason : undefined;
  try {
    await store.save(next.state);
  } catch (err) {
    io.err(`hapgent: cannot write ${path}: ${(err as Error).message}${leftInvalid(invalid)}\n`);
    return { code: CLI_EXIT.CANNOT_WRITE };
  }
  if (invalid !== undefined) {
    io.err(`hapgent: the state file ${path} was invalid (${invalid}); replaced\n`);
  }
  io.out(`wrote ${path}: ${formatState(next.state)}\n`);
  noteService(io, change, next.state);
  noteCancelled(io, next.cancelled);
  return signal(io, target, next.state);
}

/** Sends the daemon SIGHUP, so it reads the file just written. */
async function signal(io: CliIo, target: Target, state: State): Promise<Applied> {
  const path = target.config.stateFile;
  const [daemon] = target.serving;
  if (daemon === undefined) {
    for (const text of target.notes) io.err(`hapgent: ${text}\n`);
    io.err(
      `hapgent: no running hapgent serves ${path}, so none was signalled; the next start loads it\n`,
    );
    return { code: CLI_EXIT.NO_AGENT };
  }
  // The pid was found before the save: a daemon that stopped since may have left it to another.
  if (!(await stillRunning(io.procRoot, daemon))) {
    io.err(
      `hapgent: hapgent pid ${daemon.pid} has stopped, so none was signalled; the next start loads ${path}\n`,
    );
    return { code: CLI_EXIT.NO_AGENT };
  }
  try {
    io.reload(daemon.pid);
  } catch (err) {
    io.err(
      `hapgent: cannot signal hapgent pid ${daemon.pid}: ${(err as NodeJS.ErrnoException).code ?? err}\n`,
    );
    return { code: CLI_EXIT.NO_AGENT };
  }
  io.out(`signalled hapgent pid ${daemon.pid} to reload\n`);
  return { code: CLI_EXIT.OK, state, pid: daemon.pid, pollers: undefined, checks: undefined };
}

/** What a save that failed left of an invalid file: all of it. */
function leftInvalid(reason: string | undefined): string {
  return reason === undefined
    ? ""
    : `; what is there is still invalid (${reason}) and was not replaced`;
}

function noteCancelled(io: CliIo, expires: Expiry | undefined): void {
  if (expires === undefined) return;
  const what =
    expires.returns === null
      ? `service ${expires.service} would have gone`
      : `${expires.service === undefined ? "" : `service ${expires.service} `}${expires.returns.status} would have returned`;
  io.out(`note: this replaces the pending expiry: ${what} at ${expires.at}\n`);
}

function noteService(io: CliIo, change: Change, state: State): void {
  if (change.service !== undefined && !isInService(state.status)) {
    io.out(
      `note: the instance is ${state.status}, so every service answers its state until it is UP or READY\n`,
    );
  }
}
