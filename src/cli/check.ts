/** `hapgent check [FILE]`: validates a state file with the agent's own rules; changes nothing. */
import { resolve } from "node:path";
import { formatState } from "../core/state.js";
import { silentLogger } from "../log.js";
import { createStateStore } from "../store.js";
import type { Values } from "./args.js";
import { CLI_EXIT } from "./exit.js";
import type { CliIo } from "./io.js";
import { actOn, configure } from "./target.js";

export async function check(io: CliIo, values: Values, file: string | undefined): Promise<number> {
  // Only the file matters here: an address in the environment is not checked.
  const only = { cwd: io.cwd, uid: io.uid, env: { HAPGENT_STATE_FILE: io.env.HAPGENT_STATE_FILE } };
  const path = file ?? configure(only, values).config.stateFile;
  const absolute = resolve(io.cwd, path);
  await actOn(io, absolute, "read");
  // Nothing is saved, so the store never has anything to log.
  const result = await createStateStore(absolute, silentLogger, io).load();
  if (result.ok) {
    io.out(`${path}: valid: ${formatState(result.state)}\n`);
    return CLI_EXIT.OK;
  }
  io.err(`${path}: ${result.reason}\n`);
  return CLI_EXIT.INVALID_FILE;
}
