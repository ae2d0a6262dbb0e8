/** What the command line needs from its process; main.ts gives the real one, tests their own. */
import type { StoreProcess } from "../store.js";
import type { TargetIo } from "./target.js";

export interface CliIo extends TargetIo, StoreProcess {
  readonly args: readonly string[];
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  /** Who runs the command, for the record of a change: fixed before it switches users. */
  readonly by: string;
  /** Sends SIGHUP; throws Node's error (EPERM, ESRCH). */
  readonly reload: (pid: number) => void;
}
