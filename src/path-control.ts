/**
 * Who could have decided what a path reaches. A command run as root must never read or write a
 * path with more privilege than the user who controls it (logrotate's rule): a user who can
 * replace an entry on the way (a directory of theirs, a symlink in it) can point root at any file.
 * So the path is walked as the kernel walks it, and every directory searched says who, besides
 * root, could have put there what was found (or could put something where nothing is yet). A
 * directory a group may write (or one with an ACL, whose mask shows in the group bits) counts as
 * writable by several users.
 */
import { lstat, readlink } from "node:fs/promises";
import { dirname, isAbsolute, join } from "node:path";

/** The part of a file's status that decides who may change a directory's entries. */
export interface Owner {
  readonly uid: number;
  readonly gid: number;
  readonly mode: number;
}

/** One name looked up in one directory on the way. */
export interface Lookup {
  readonly dir: string;
  readonly dirOwner: Owner;
  readonly name: string;
  /** What the name is now; undefined when it does not exist (yet). */
  readonly entry: Owner | undefined;
}

export type Controller =
  /** Only root could have decided any step: root may act on the path as root. */
  | { readonly kind: "root" }
  /** One user besides root could have: act on the path as that user, with their rights only. */
  | { readonly kind: "user"; readonly uid: number; readonly why: string }
  /** Several users, a group or everyone could have: nobody's rights are safe to use. */
  | { readonly kind: "several"; readonly why: string };

/** Linux's own limit on symlinks followed in one path lookup. */
const MAX_SYMLINKS = 40;
const STICKY = 0o1000;
const GROUP_WRITE = 0o020;
const OTHER_WRITE = 0o002;

/** Who, besides root, could have decided what the lookups found. Pure. */
export function controllerOf(lookups: readonly Lookup[]): Controller {
  const users = new Map<number, string>();
  const add = (uid: number, why: string) => {
    if (uid !== 0 && !users.has(uid)) users.set(uid, why);
  };
  for (const { dir, dirOwner, name, entry } of lookups) {
    // The owner of a directory can always change its entries (chmod first if need be).
    add(dirOwner.uid, `${dir} is owned by uid ${dirOwner.uid}`);
    const everyone = (dirOwner.mode & OTHER_WRITE) !== 0;
    // Whatever the group, root's included: members are not known, and on a directory with an
    // ACL these bits are the mask, which any user or group the ACL names may write through.
    const group = (dirOwner.mode & GROUP_WRITE) !== 0;
    if (!everyone && !group) continue;
    const writers = everyone ? "every user" : `group ${dirOwner.gid}`;
    if ((dirOwner.mode & STICKY) === 0) {
      return { kind: "several", why: `${dir} is writable by ${writers}` };
    }
    // Sticky (like /tmp): only an entry's owner may replace it, but anyone may create a missing one.
    if (entry === undefined) {
      return {
        kind: "several",
        why: `${dir} is writable by ${writers} and ${name} does not exist there, so anyone may create it`,
      };
    }
    add(
      entry.uid,
      `${join(dir, name)} is owned by uid ${entry.uid} in ${dir}, which ${writers} may write`,
    );
  }
  const [first, ...more] = [...users];
  if (first === undefined) return { kind: "root" };
  if (more.length === 0) return { kind: "user", uid: first[0], why: first[1] };
  return { kind: "several", why: [first, ...more].map(([, why]) => why).join("; ") };
}

/**
 * Every lookup the kernel makes to reach `path` (absolute), following symlinks, the last one
 * too, as a save follows it. Stops at the first name that does not exist or is not a directory.
 */
export async function walkPath(path: string): Promise<Lookup[]> {
  if (!isAbsolute(path)) throw new Error(`walkPath needs an absolute path, got ${path}`);
  const lookups: Lookup[] = [];
  const owners = new Map<string, Owner>();
  const ownerOf = async (dir: string): Promise<Owner> => {
    let owner = owners.get(dir);
    if (owner === undefined) {
      owner = pick(await lstat(dir));
      owners.set(dir, owner);
    }
    return owner;
  };
  let pending = components(path);
  let current = "/";
  let symlinks = 0;
  while (pending.length > 0) {
    const [name = "", ...rest] = pending;
    pending = rest;
    if (name === ".") continue;
    if (name === "..") {
      current = dirname(current);
      continue;
    }
    const at = join(current, name);
    const stats = await lstat(at).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT" || err.code === "ENOTDIR") return undefined;
      throw err;
    });
    lookups.push({
      dir: current,
      dirOwner: await ownerOf(current),
      name,
      entry: stats && pick(stats),
    });
    if (stats === undefined) break;
    if (stats.isSymbolicLink()) {
      if (++symlinks > MAX_SYMLINKS) {
        throw Object.assign(new Error(`too many symlinks in ${path}`), { code: "ELOOP" });
      }
      const target = await readlink(at);
      if (isAbsolute(target)) current = "/";
      pending = [...components(target), ...pending];
      continue;
    }
    if (!stats.isDirectory()) break;
    current = at;
  }
  return lookups;
}

function components(path: string): string[] {
  return path.split("/").filter((part) => part !== "");
}

function pick({ uid, gid, mode }: Owner): Owner {
  return { uid, gid, mode };
}

const GROUP_OR_OTHER_WRITE = 0o022;

/**
 * Why a file must not be trusted by a process of `uid` (what it holds decides what that process
 * does: checks it runs, credentials it sends): unless only that user or root could have changed
 * the file or its path (for root, root alone), or undefined when it may be.
 */
export async function whyUntrusted(path: string, uid: number): Promise<string | undefined> {
  let lookups: Awaited<ReturnType<typeof walkPath>>;
  try {
    lookups = await walkPath(path);
  } catch (err) {
    return `its directories cannot be examined (${(err as NodeJS.ErrnoException).code})`;
  }
  const controller = controllerOf(lookups);
  if (controller.kind === "several" || (controller.kind === "user" && controller.uid !== uid)) {
    return `${controller.why}, so another user could change what it holds; expected a path only ${uid === 0 ? "root" : "this user or root"} can change`;
  }
  const entry = lookups.at(-1)?.entry;
  if (entry === undefined) return "not found (ENOENT)";
  if (entry.uid !== 0 && entry.uid !== uid) {
    return `it is owned by uid ${entry.uid}; expected ${uid === 0 ? "root" : "this user or root"}`;
  }
  if ((entry.mode & GROUP_OR_OTHER_WRITE) !== 0) {
    return `its group or every user may write it (mode ${(entry.mode & 0o7777).toString(8)}); expected it writable by its owner only`;
  }
  return undefined;
}
