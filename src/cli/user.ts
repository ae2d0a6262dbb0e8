/**
 * Who runs the command line, for the audit record of a change (`changed.by`): the user who
 * invoked it, and who ran sudo when root runs it through sudo, as `root (sudo by alice)`. Fixed
 * at start, before the command switches to the user who controls the state file's path: the
 * record names who asked, not whose rights wrote. It is what the command says of itself; whoever
 * may change the state may also write the file, so the record is a note for operators, not proof.
 */

/** Longest name recorded; the state file's rules allow 100 characters. */
const MAX_NAME_CHARS = 40;
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?$/;

export interface Invocation {
  /** The real uid the command started with. */
  readonly uid: number;
  /** That uid's login name, if it has one. */
  readonly name: string | undefined;
  /** SUDO_USER from the environment, as given. */
  readonly sudoUser: string | undefined;
  /** Whether a name is an account of this system. */
  readonly isAccount: (name: string) => boolean;
}

/**
 * The record's `by`. SUDO_USER is taken only from a command run by root (anyone may set the
 * variable; only sudo makes root's command with it) and only when it names an account.
 */
export function invoker({ uid, name, sudoUser, isAccount }: Invocation): string {
  const own = name !== undefined && usable(name) ? name : `uid ${uid}`;
  const sudo =
    uid === 0 && sudoUser !== undefined && sudoUser !== own && usable(sudoUser)
      ? sudoUser
      : undefined;
  return sudo !== undefined && isAccount(sudo) ? `${own} (sudo by ${sudo})` : own;
}

function usable(name: string): boolean {
  return name.length <= MAX_NAME_CHARS && NAME.test(name);
}
