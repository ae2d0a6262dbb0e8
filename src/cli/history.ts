/**
 * The state's audit record and pending expiry as one line for `hapgent status`:
 * "DRAIN since 14:02 by alice: deploy 1.4.2; returns to UP at 14:32 (in 12 min)". Pure.
 */
import { formatDuration } from "../core/change.js";
import { printable, type State } from "../core/state.js";

/** A time of day as operators read it on this host; the date too when it is not today. */
export function localTime(ms: number, nowMs: number): string {
  const at = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, "0");
  const time = `${pad(at.getHours())}:${pad(at.getMinutes())}`;
  return at.toDateString() === new Date(nowMs).toDateString()
    ? time
    : `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ${time}`;
}

/** undefined when the state has neither a record nor a pending expiry (an older file). */
export function describeHistory(
  state: State,
  nowMs: number,
  timeOf: (ms: number, nowMs: number) => string = localTime,
): string | undefined {
  const { changed, expires } = state;
  if (changed === undefined && expires === undefined) return undefined;
  const target =
    changed?.service === undefined
      ? state.status
      : `service ${changed.service} ${state.services?.[changed.service]?.status ?? "removed"}`;
  let text = target;
  if (changed !== undefined) {
    text += ` since ${timeOf(Date.parse(changed.at), nowMs)} ${how(changed)}`;
    if (changed.reason !== undefined) text += `: ${printable(changed.reason)}`;
  }
  if (expires !== undefined) {
    const atMs = Date.parse(expires.at);
    const what =
      expires.returns === null
        ? `service ${expires.service} goes`
        : `${expires.service === undefined ? "" : `service ${expires.service} `}returns to ${expires.returns.status}`;
    const when =
      atMs > nowMs
        ? `in ${formatDuration(atMs - nowMs)}`
        : `due ${formatDuration(nowMs - atMs)} ago: the agent applies it when it runs`;
    text += `; ${what} at ${timeOf(atMs, nowMs)} (${when})`;
  }
  return text;
}

function how(changed: NonNullable<State["changed"]>): string {
  switch (changed.via) {
    case "cli":
      return `by ${changed.by === undefined ? "the command line" : printable(changed.by)}`;
    case "signal":
      return `by ${changed.signal ?? "a signal"}`;
    case "reload":
      return "(the file was edited and read again)";
    case "expiry":
      return "(a change expired)";
  }
}
