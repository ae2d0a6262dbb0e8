/**
 * A daemon run as root must not read or write a path another user controls: that user could
 * point it at any file (a symlink in their directory), and root's save would overwrite it. The
 * path is checked at start, where such a daemon refuses to run, and again before every load and
 * save, since what is on the way can change while it runs: in a shared directory such as /tmp, a
 * cleaner may remove root's file, and another user create one of the same name.
 */
import { controllerOf, walkPath } from "../path-control.js";
import type { StateStore, TextFile } from "../store.js";

/** Why root must not use `stateFile`, or undefined when only root controls it. */
export async function refuseForeignPath(
  stateFile: string,
  variable = "HAPGENT_STATE_FILE",
): Promise<string | undefined> {
  let controller: ReturnType<typeof controllerOf>;
  try {
    controller = controllerOf(await walkPath(stateFile));
  } catch (err) {
    return `${variable}=${JSON.stringify(stateFile)}: its directories cannot be examined (${(err as NodeJS.ErrnoException).code}); expected a path root can look up`;
  }
  if (controller.kind === "root") return undefined;
  return `${variable}=${JSON.stringify(stateFile)} is not safe for a daemon running as root: ${controller.why}, so another user could point it at any file; expected a path only root can change, or run hapgent as that user (User= in the unit)`;
}

/** The same store, which refuses to load or save while the path is not root's alone. */
export function guardedStore(store: StateStore): StateStore {
  const file = guardedFile(store, store.path, "HAPGENT_STATE_FILE");
  return {
    path: store.path,
    async load() {
      const refused = await refuseForeignPath(store.path);
      return refused === undefined ? store.load() : { ok: false, reason: refused, code: "EPERM" };
    },
    save: (state) => file.save(state),
    removeStaleTemporaries: () => store.removeStaleTemporaries(),
  };
}

/**
 * A file root saves (the state file, the fleet's cache) that refuses to be written while `path`
 * is not root's alone: the save fails with EPERM and the reason, as a failed write would.
 */
export function guardedFile<T>(
  file: { save(value: T): Promise<void> },
  path: string,
  variable: string,
): { save(value: T): Promise<void> } {
  return {
    async save(value) {
      const refused = await refuseForeignPath(path, variable);
      if (refused !== undefined) throw Object.assign(new Error(refused), { code: "EPERM" });
      return file.save(value);
    },
  };
}

/** A text file (the fleet's cache) guarded as the state file is, for a daemon run as root. */
export function guardedTextFile(file: TextFile, path: string, variable: string): TextFile {
  const guarded = guardedFile(file, path, variable);
  return {
    save: (text) => guarded.save(text),
    removeStaleTemporaries: () => file.removeStaleTemporaries(),
  };
}
