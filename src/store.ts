/**
 * The state file on disk: reading it strictly and saving it so that a crash at any moment
 * leaves either the old or the new complete file.
 */
import { randomBytes } from "node:crypto";
import { constants, type Stats } from "node:fs";
import {
  type FileHandle,
  lstat,
  open,
  readdir,
  readlink,
  realpath,
  rename,
  unlink,
} from "node:fs/promises";
import { basename, dirname, isAbsolute, join } from "node:path";
import {
  MAX_STATE_FILE_BYTES,
  parseState,
  RECORDS_ALLOWANCE_BYTES,
  type State,
  serialiseState,
} from "./core/state.js";
import type { Logger } from "./log.js";

/** A state file read and checked: its state, or why it has none. */
export type LoadResult =
  | { readonly ok: true; readonly state: State }
  | {
      readonly ok: false;
      readonly reason: string;
      /** Node's error code when the file could not be read (ENOENT, EACCES …); absent when it was read and is invalid. */
      readonly code?: string;
    };

/**
 * Errors that say something about the file itself: where the path leads, what is there, who may
 * read it. Each lasts until someone changes the file or its path, so the file counts as invalid.
 * `EINVAL` is readCapped's own "not a regular file"; `ENXIO` and `ENODEV` are a socket or a
 * device with no driver in the file's place; `EFBIG` and `EOVERFLOW` a file too large to read.
 */
const FILE_ERRORS: ReadonlySet<string> = new Set([
  "ENOENT",
  "ENOTDIR",
  "EISDIR",
  "ENAMETOOLONG",
  "ELOOP",
  "EACCES",
  "EPERM",
  "EINVAL",
  "ENXIO",
  "ENODEV",
  "EFBIG",
  "EOVERFLOW",
]);

/**
 * Whether a read failed for a reason other than the file: the machine or the moment (EMFILE and
 * ENFILE when descriptors run out, ENOMEM, EIO, EAGAIN, EINTR, ESTALE …). The same file read
 * again later may be perfectly valid, so such a failure says nothing about it. Any code not known
 * to be about the file counts as transient: taking a server out of rotation for an error nobody
 * can fix in the file would be worse than keeping the state it had.
 */
export function isTransientReadError(code: string | undefined): boolean {
  return code !== undefined && !FILE_ERRORS.has(code);
}

export interface StateStore {
  readonly path: string;
  /** Reads and validates the file. Never throws: every failure is a reason. */
  load(): Promise<LoadResult>;
  /** Writes the state crash-safely. Throws Node's fs error when it cannot. */
  save(state: State): Promise<void>;
  /** Removes temporary files that a crash in the middle of a save left behind. */
  removeStaleTemporaries(): Promise<void>;
}

/** Mode of a state file the agent creates; an existing file keeps its own. */
const NEW_FILE_MODE = 0o644;
/** Linux's own limit on symlinks followed in one path lookup. */
const MAX_SYMLINKS = 40;

/** What saving needs of the process it runs in; main.ts gives the real one. */
export interface StoreProcess {
  /** This process's pid, which names its temporary files. */
  readonly pid: number;
  /** Sends `signal` to `pid`; throws Node's error (ESRCH, EPERM). Signal 0 only asks. */
  readonly kill: (pid: number, signal: 0) => void;
}

export function createStateStore(path: string, log: Logger, self: StoreProcess): StateStore {
  const file = createTextFile(path, log, self);
  return {
    path,
    load: () => loadFile(path),
    save: (state) => file.save(serialiseState(state)),
    removeStaleTemporaries: () => file.removeStaleTemporaries(),
  };
}

/** A file the agent rewrites whole, crash-safely: the state file, the fleet's cache. */
export interface TextFile {
  /** Writes `text` crash-safely where the directory allows. Throws Node's fs error when it cannot. */
  save(text: string): Promise<void>;
  /** Removes temporary files that a crash in the middle of a save left behind. */
  removeStaleTemporaries(): Promise<void>;
}

export function createTextFile(path: string, log: Logger, self: StoreProcess): TextFile {
  let warnedInPlace = false;
  const inPlace = (directory: string, target: string): void => {
    if (warnedInPlace) return;
    warnedInPlace = true;
    log.warning(
      `directory ${directory} is not writable; saving ${target} in place, which a crash during the write can leave incomplete`,
    );
  };
  return {
    save: (text) => saveFile(path, text, self.pid, inPlace),
    async removeStaleTemporaries() {
      const target = await resolveSymlinks(path).catch(() => path);
      const prefix = temporaryPrefix(target);
      const names = await readdir(dirname(target)).catch(() => [] as string[]);
      for (const name of names) {
        if (!name.startsWith(prefix)) continue;
        // pid-random as made now; 12 hex digits as older versions made them.
        const made = /^(?:([1-9][0-9]{0,9})-)?[0-9a-f]{12}$/.exec(name.slice(prefix.length));
        if (made === null) continue;
        // A save in progress (the command line's, as an agent starts beside it) is not stale.
        // This process's own pid is one reused (a container's pid 1): it saves nothing yet.
        const pid = Number(made[1]);
        if (made[1] !== undefined && pid !== self.pid && isAlive(pid, self.kill)) continue;
        await unlink(join(dirname(target), name)).catch(() => {});
      }
    },
  };
}

/** Whether a process of that pid exists (of any user). */
function isAlive(pid: number, kill: StoreProcess["kill"]): boolean {
  try {
    kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function loadFile(path: string): Promise<LoadResult> {
  const read = await readCapped(path, MAX_STATE_FILE_BYTES + RECORDS_ALLOWANCE_BYTES);
  return read.ok ? parseState(read.bytes) : read;
}

export type ReadResult =
  | { readonly ok: true; readonly bytes: Uint8Array }
  | { readonly ok: false; readonly reason: string; readonly code: string };

/**
 * A regular file's bytes, at most `maxBytes` and one more (so a file over the cap, or one that
 * grew after stat(), is seen to be), or why it cannot be read, in an operator's words. A FIFO put
 * there by mistake never hangs the agent (O_NONBLOCK). Never throws.
 */
export async function readCapped(path: string, maxBytes: number): Promise<ReadResult> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
    const stats = await handle.stat();
    if (stats.isDirectory()) {
      return { ok: false, reason: "is a directory, expected a file", code: "EISDIR" };
    }
    if (!stats.isFile()) return { ok: false, reason: "is not a regular file", code: "EINVAL" };
    const buffer = Buffer.alloc(maxBytes + 1);
    let length = 0;
    while (length < buffer.length) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    return { ok: true, bytes: buffer.subarray(0, length) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "EIO";
    return { ok: false, reason: describeFsError(err), code };
  } finally {
    await handle?.close().catch(() => {});
  }
}

/** Replaces the file (a symlink's target) with `text`, crash-safely where the directory allows. */
async function saveFile(
  path: string,
  text: string,
  pid: number,
  inPlace: (directory: string, target: string) => void,
): Promise<void> {
  const target = await resolveSymlinks(path);
  const previous = await lstat(target).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
  const directory = dirname(target);
  // Named after the process that writes it, so that an agent starting beside this save (the
  // command line's, as systemd restarts the agent) leaves it alone.
  const temporary = join(
    directory,
    `${temporaryPrefix(target)}${pid}-${randomBytes(6).toString("hex")}`,
  );
  let handle: FileHandle;
  try {
    handle = await open(temporary, "wx", NEW_FILE_MODE);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // A root-owned directory with a group-writable state.json (a common manual set-up): no
    // temporary file can be made there, but the file itself can still be rewritten.
    if (previous?.isFile() && (code === "EACCES" || code === "EPERM")) {
      inPlace(directory, target);
      return saveInPlace(target, text);
    }
    throw err;
  }
  try {
    await handle.writeFile(text, "utf8");
    if (previous) await keepModeAndOwner(handle, previous);
    await handle.sync();
    await handle.close();
    await rename(temporary, target);
  } catch (err) {
    await handle.close().catch(() => {});
    await unlink(temporary).catch(() => {});
    throw err;
  }
  await syncDirectory(directory);
}

/** open() applied the umask; the file keeps the mode, and owner where allowed, it had. */
async function keepModeAndOwner(handle: FileHandle, previous: Stats): Promise<void> {
  await handle.chmod(previous.mode & 0o7777);
  const written = await handle.stat();
  if (written.uid === previous.uid && written.gid === previous.gid) return;
  await handle.chown(previous.uid, previous.gid).catch((err: NodeJS.ErrnoException) => {
    // Only root may give a file away; anyone else saves it as their own.
    if (err.code !== "EPERM") throw err;
  });
}

/** Explains a failed read in words an operator can act on. */
export function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  switch (code) {
    case "ENOENT":
      return "does not exist";
    case "EACCES":
    case "EPERM":
      return "cannot be read: permission denied";
    case "EISDIR":
      return "is a directory, expected a file";
    case "ENOTDIR":
      return "has a path component that is not a directory";
    case "ELOOP":
      return "is a symlink loop";
    default:
      return `cannot be read: ${(err as Error).message}`;
  }
}

function temporaryPrefix(target: string): string {
  return `.${basename(target)}.tmp-`;
}

/**
 * Follows symlinks to the file that a save must replace, even when the final target is missing.
 * The directories are resolved by the kernel (realpath), never as text: in a link's target, `..`
 * after a symlinked directory is the parent of where that link leads, as for every other reader
 * of the path (and as path-control.ts walks it).
 */
async function resolveSymlinks(path: string): Promise<string> {
  let current = path;
  for (let hops = 0; hops < MAX_SYMLINKS; hops++) {
    const name = basename(current);
    // A path ending in . or .. names a directory: resolved whole, it fails as one would.
    if (name === "." || name === ".." || name === "") return realpath(current);
    const directory = await realpath(dirname(current));
    const at = join(directory, name);
    const stats = await lstat(at).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return undefined;
      throw err;
    });
    if (!stats?.isSymbolicLink()) return at;
    const target = await readlink(at);
    // Joined as text, not normalised: the next realpath() resolves what the target's `..` mean.
    current = isAbsolute(target) ? target : `${directory}/${target}`;
  }
  throw Object.assign(new Error(`too many symlinks from ${path}`), { code: "ELOOP" });
}

async function saveInPlace(target: string, text: string): Promise<void> {
  const handle = await open(target, "r+");
  try {
    const bytes = Buffer.from(text, "utf8");
    await handle.write(bytes, 0, bytes.length, 0);
    await handle.truncate(bytes.length);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes the rename itself durable; some file systems cannot sync a directory, which is fine. */
async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync().catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "EINVAL" && err.code !== "ENOTSUP") throw err;
    });
  } finally {
    await handle.close();
  }
}
