/**
 * A daemon run as root must not read or write a path another user controls: that user could
 * point it at any file (a symlink in their directory), and root's save would overwrite it. The
 * path is checked at start, where such a daemon refuses to run, and again before every load and
 * save, since what is on the way can change while it runs: in a shared directory such as /tmp, a
 * cleaner may remove root's file, and another user create one of the same name.
 */
import { controllerOf, walkPath } from "../path-control.js";
import type { StateStore } from "../store.js";

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
  return {
    path: store.path,
    async load() {
      const refused = await refuseForeignPath(store.path);
      return refused === undefined ? store.load() : { ok: false, reason: refused, code: "EPERM" };
    },
    async save(state) {
      const refused = await refuseForeignPath(store.path);
      if (refused !== undefined) throw Object.assign(new Error(refused), { code: "EPERM" });
      return store.save(state);
    },
    removeStaleTemporaries: () => store.removeStaleTemporaries(),
  };
}
