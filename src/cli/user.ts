/**
 * Who runs the command line, for the audit record of a change: the login name, and who ran sudo
 * when root runs it through sudo. It is what the command says of itself; whoever may change the
 * state may also write the file, so the record is a note for operators, not proof.
 */
import { userInfo } from "node:os";

/** Longest name recorded; the state file's rules allow 100 characters. */
const MAX_NAME_CHARS = 40;
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?$/;

export function userName(env: NodeJS.ProcessEnv = process.env): string {
  const uid = process.getuid?.() ?? -1;
  let name: string;
  try {
    name = userInfo().username;
  } catch {
    // No entry in the user database (a container's arbitrary uid).
    name = "";
  }
  const own = usable(name) ? name : `uid ${uid}`;
  const sudo = env.SUDO_USER;
  return uid === 0 && sudo !== undefined && sudo !== own && usable(sudo)
    ? `${own} (sudo by ${sudo})`
    : own;
}

function usable(name: string): boolean {
  return name.length <= MAX_NAME_CHARS && NAME.test(name);
}
