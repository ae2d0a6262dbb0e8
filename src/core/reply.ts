/**
 * The agent's answer to one HAProxy probe.
 *
 * HAProxy treats each reply as commands, not as a declaration: whatever a reply leaves out stays
 * as an earlier reply left it (a `maint` is not undone by `up`, a `50%` not by silence). So every
 * reply states everything the state file decides: a health word, an admin word and the weight.
 */
import type { ServiceState, Status } from "./state.js";

/**
 * Health and admin words per status. `up` alone never clears MAINT or DRAIN, and `ready` alone
 * never clears an agent `down`, so UP and READY both send `up ready`. The down statuses send
 * `ready` too, so HAProxy shows DOWN rather than an old MAINT. MAINT sends no health word: HAProxy
 * applies maint whatever the health, and leaving health alone keeps its own check's view.
 */
const WORDS: Readonly<Record<Status, string>> = {
  UP: "up ready",
  READY: "up ready",
  DRAIN: "up drain",
  MAINT: "maint",
  DOWN: "down ready",
  FAIL: "fail ready",
  STOPPED: "stopped ready",
};

/** Without a weight the configured weight is restored, undoing an earlier one. */
export const DEFAULT_WEIGHT_PERCENT = 100;

/** One line, ending in `\n` (HAProxy ignores a reply without a line end). */
export function reply(state: ServiceState): string {
  const words = [WORDS[state.status], `${state.weight ?? DEFAULT_WEIGHT_PERCENT}%`];
  // The configured maxconn is unknown to the agent, so an absent maxconn is not mentioned.
  if (state.maxconn !== undefined) words.push(`maxconn:${state.maxconn}`);
  // Everything after `#` is HAProxy's description; it shows it only with a health word (not MAINT).
  // A reason says why this state, so it is shown in place of the standing description.
  const text = state.reason ?? state.description;
  if (text !== undefined) words.push(`# ${text}`);
  return `${words.join(" ")}\n`;
}
