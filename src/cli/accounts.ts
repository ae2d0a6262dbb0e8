/**
 * Accounts by uid, from the system's user database (files, LDAP, whatever NSS is set to), through
 * getent: Node can look up only the account it runs as.
 */
import { execFileSync } from "node:child_process";

export interface Account {
  readonly name: string;
  readonly uid: number;
  /** The primary group. */
  readonly gid: number;
  /** Every group it is in, the primary one first, as login would set them. */
  readonly groups: readonly number[];
}

const LOOKUP_TIMEOUT_MS = 5000;
const cache = new Map<number, Account | undefined>();

/** The account of `uid`, or undefined when it has none (or getent cannot run). */
export function accountOf(uid: number): Account | undefined {
  if (cache.has(uid)) return cache.get(uid);
  let account: Account | undefined;
  try {
    const entry = parsePasswdLine(getent("passwd", String(uid)));
    if (entry !== undefined) {
      // `name gid gid …`: the groups that name the account as a member.
      const [, ...others] = getent("initgroups", entry.name).trim().split(/\s+/);
      const groups = [entry.gid, ...others.filter((g) => /^[0-9]+$/.test(g)).map(Number)];
      account = { ...entry, groups: [...new Set(groups)] };
    }
  } catch {
    account = undefined;
  }
  cache.set(uid, account);
  return account;
}

function getent(database: string, key: string): string {
  return execFileSync("getent", [database, key], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
    timeout: LOOKUP_TIMEOUT_MS,
  });
}

/** Whether `name` is an account of this system (false when getent cannot say). */
export function isAccount(name: string): boolean {
  try {
    return parsePasswdLine(getent("passwd", name))?.name === name;
  } catch {
    // getent exits 2 for a name it does not know.
    return false;
  }
}

/** `name:x:uid:gid:…` as in /etc/passwd, or undefined when the line is not one. */
export function parsePasswdLine(line: string): Omit<Account, "groups"> | undefined {
  const [name, , uid, gid] = line.trim().split(":");
  if (!name || !/^[0-9]+$/.test(uid ?? "") || !/^[0-9]+$/.test(gid ?? "")) return undefined;
  return { name, uid: Number(uid), gid: Number(gid) };
}
