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

/**
 * `maxconn:0` is no limit to HAProxy: it lifts an earlier agent's limit and haproxy.cfg's alike.
 * A state without maxconn says nothing, so haproxy.cfg's stands, unless HAProxy still holds a
 * limit an earlier reply said (see `maxconnWord` and the probe ledger).
 */
export const NO_MAXCONN_LIMIT = 0;

/** One line, ending in `\n` (HAProxy ignores a reply without a line end). */
export function reply(state: ServiceState): string {
  const words = [WORDS[state.status], `${state.weight ?? DEFAULT_WEIGHT_PERCENT}%`];
  // No maxconn is no opinion: haproxy.cfg's stands. The agent cannot know it, so cannot say it.
  if (state.maxconn !== undefined) words.push(`maxconn:${state.maxconn}`);
  // Everything after `#` is HAProxy's description; it shows it only with a health word (not MAINT).
  // A reason says why this state, so it is shown in place of the standing description.
  const text = state.reason ?? state.description;
  if (text !== undefined) words.push(`# ${text}`);
  return `${words.join(" ")}\n`;
}

/**
 * The maxconn a reply line (as `reply` writes it) tells HAProxy, or undefined when it says none.
 * Only the words before the description count: HAProxy reads none after `#`.
 */
export function maxconnWord(line: string): number | undefined {
  const hash = line.indexOf("#");
  const words = (hash === -1 ? line : line.slice(0, hash)).trim().split(/\s+/);
  for (const word of words) {
    const match = /^maxconn:([0-9]{1,5})$/.exec(word);
    if (match !== null) return Number(match[1]);
  }
  return undefined;
}
