/**
 * Reading the checks file: the file and every program it runs must be safe to use with the
 * agent's rights. A check runs commands, so whoever could change the file, or a program it
 * names, could run their own as the agent: the file and the programs must be the agent's user's
 * or root's alone (for an agent run as root, root's alone), and a set-user-ID program, which
 * would run with more privilege than the agent, is refused.
 */
import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import {
  type Check,
  type ChecksResult,
  MAX_CHECKS_FILE_BYTES,
  parseChecks,
} from "../../core/checks.js";
import { whyUntrusted } from "../../path-control.js";
import { readCapped } from "../../store.js";

const SET_ID = 0o6000;

/**
 * The checks, or why there are none to run; with Node's error `code` when the file could not be
 * read, which may be a fault of the moment rather than the file's (EMFILE, EIO …).
 */
export type ChecksFileResult =
  | ChecksResult
  | { readonly ok: false; readonly reason: string; readonly code: string };

/** The checks of `path`, or the reason there are none to run (a configuration error). */
export async function loadChecksFile(path: string, uid: number): Promise<ChecksFileResult> {
  const unsafe = await whyUntrusted(path, uid);
  if (unsafe !== undefined) return { ok: false, reason: unsafe };
  const read = await readCapped(path, MAX_CHECKS_FILE_BYTES);
  if (!read.ok) return { ok: false, reason: `it ${read.reason}`, code: read.code };
  const parsed = parseChecks(read.bytes);
  if (!parsed.ok) return parsed;
  for (const check of parsed.checks) {
    const program = programOf(check);
    if (program === undefined) continue;
    const refused = await whyNotRunnable(program, uid);
    if (refused !== undefined) return { ok: false, reason: `${check.name}: ${refused}` };
  }
  return parsed;
}

function programOf(check: Check): string | undefined {
  const { action } = check;
  if (action.kind === "exec") return action.argv[0];
  if (action.kind === "shell") return "/bin/sh";
  return undefined;
}

/** Why a check's program may not run with the agent's rights, or undefined. */
export async function whyNotRunnable(program: string, uid: number): Promise<string | undefined> {
  const unsafe = await whyUntrusted(program, uid);
  if (unsafe !== undefined) return `${program}: ${unsafe}`;
  try {
    const stats = await stat(program);
    if (!stats.isFile()) return `${program} is not a regular file; expected a program`;
    if (uid !== 0 && (stats.mode & SET_ID) !== 0) {
      return `${program} is set-user-ID or set-group-ID; a check never runs with more privilege than the agent`;
    }
    await access(program, constants.X_OK);
  } catch (err) {
    return `${program} cannot be run (${(err as NodeJS.ErrnoException).code}); expected an executable file`;
  }
  return undefined;
}
