/**
 * Real local users for the tests of what other users can and cannot make hapgent do: created
 * with useradd for one test file, removed with userdel when it ends. Needs root.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";

export interface User {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

const SBIN = "/usr/sbin:/usr/bin:/sbin:/bin";

/** A new system user with its own group and no home; removed (with its processes) at `after`. */
export function createUser(
  t: { after: (fn: () => void | Promise<void>) => void },
  role: string,
): User {
  const name = `hgt-${role}-${randomBytes(3).toString("hex")}`.slice(0, 32);
  const env = { PATH: SBIN };
  execFileSync(
    "useradd",
    ["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
    { env, stdio: "ignore" },
  );
  t.after(() => {
    try {
      execFileSync("pkill", ["-KILL", "-u", name], { env, stdio: "ignore" });
    } catch {
      // None left.
    }
    execFileSync("userdel", [name], { env, stdio: "ignore" });
  });
  const id = (flag: string) =>
    Number(execFileSync("id", [flag, name], { env, encoding: "utf8" }).trim());
  return { name, uid: id("-u"), gid: id("-g") };
}
