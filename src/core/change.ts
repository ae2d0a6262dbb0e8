/**
 * A change an operator asks for (`hapgent set DRAIN --weight 50`, `hapgent up --service web`)
 * applied to the state in the file: the next state, or why there is none. Every change leaves an
 * audit record (when, how, who, why) in the state, and may carry an expiry: the state from before
 * it returns by itself. Signals and expiries are changes too. Pure.
 */

import { FIELD_NAMES, type FieldName } from "./fields.js";
import {
  type Changed,
  type Expiry,
  FALLBACK_STATE,
  hasService,
  MAX_STATE_FILE_BYTES,
  makeState,
  type ServiceState,
  type State,
  type Status,
  serialiseState,
  stateBytes,
  type Via,
  validateState,
  withFields,
  withoutService,
  withRecords,
  withService,
} from "./state.js";

/** A field's new value: absent keeps the current one, null removes it, anything else sets it. */
export type FieldChange = number | string | null;

/** A new value for each field (see fields.ts), unchecked: the state's rules judge it. */
export type FieldChanges = { readonly [K in FieldName]?: FieldChange | undefined };

export interface Change extends FieldChanges {
  readonly status: Status;
  /** The service to change; the instance when absent. */
  readonly service?: string | undefined;
  /** Why: recorded with the change, and shown by HAProxy until the next change. */
  readonly reason?: string | undefined;
  /** The change expires after this long, and the state from before it returns. */
  readonly forMs?: number | undefined;
}

/** Where a change comes from, for its audit record. */
export interface Origin {
  readonly atMs: number;
  readonly via: Via;
  readonly signal?: string | undefined;
  readonly by?: string | undefined;
}

/** A change may expire after a year at most; a longer one is not temporary. */
export const MAX_FOR_MS = 366 * 24 * 3600 * 1000;

export type ChangeResult =
  | {
      readonly ok: true;
      readonly state: State;
      /** The pending expiry this change replaced (one not yet due), if any. */
      readonly cancelled?: Expiry;
    }
  | {
      readonly ok: false;
      /** `no-instance`: a service cannot be added to a file without a valid instance state. */
      readonly code: "invalid" | "no-instance";
      readonly reason: string;
    };

/**
 * The state after `change`, checked by the file's own rules, as the agent will read it.
 * `file` is the file's valid state, or undefined when it is missing or invalid (a change of the
 * instance then starts afresh). A pending expiry that is due is applied first, so nothing of a
 * change that has run out carries over. `before` is what an expiry brings back: by default the
 * file's state (MAINT, what a missing file gives, when there is none); the daemon passes what it
 * answers when the file does not hold that. A pending expiry is replaced, by this change's or by
 * none; the one replaced is returned, for the operator to hear of it.
 */
export function applyChange(
  file: State | undefined,
  change: Change,
  origin: Origin,
  before: State | undefined = undefined,
): ChangeResult {
  const { service, reason, forMs } = change;
  if (forMs !== undefined && !(Number.isInteger(forMs) && forMs > 0 && forMs <= MAX_FOR_MS)) {
    return {
      ok: false,
      code: "invalid",
      reason: `a change may expire after 1 ms to a year, got ${forMs} ms`,
    };
  }
  const current = file === undefined ? undefined : (expire(file, origin.atMs) ?? file);
  if (service !== undefined && current === undefined) {
    return {
      ok: false,
      code: "no-instance",
      reason: `the file has no valid instance state to add service ${service} to; set the instance first (e.g. hapgent up)`,
    };
  }
  const base: Partial<ServiceState> =
    current === undefined
      ? {}
      : service === undefined
        ? current
        : hasService(current, service)
          ? (current.services?.[service] ?? {})
          : {};
  const candidate: Record<string, unknown> = { status: change.status };
  for (const field of FIELD_NAMES) {
    const given = change[field];
    if (given === null) continue;
    const value = given === undefined ? base[field] : given;
    if (value !== undefined) candidate[field] = value;
  }
  // A reason is this change's own: the last one's is never carried over.
  if (reason !== undefined) candidate.reason = reason;
  const validated = validateState(candidate);
  if (!validated.ok) {
    const where = service === undefined ? "" : `services[${JSON.stringify(service)}]: `;
    return { ok: false, code: "invalid", reason: `${where}${validated.reason}` };
  }
  const expires =
    forMs === undefined ? undefined : expiry(origin.atMs + forMs, before ?? current, service);
  const next = withRecords(
    service !== undefined && current !== undefined
      ? withService(current, service, validated.state)
      : current?.services !== undefined
        ? { ...validated.state, services: current.services }
        : validated.state,
    record(origin, service, reason),
    expires,
  );
  // The whole file, as the agent will read it: the number of services, its size.
  if (stateBytes(next) > MAX_STATE_FILE_BYTES) {
    return {
      ok: false,
      code: "invalid",
      reason: `the state file would be larger than ${MAX_STATE_FILE_BYTES} bytes`,
    };
  }
  const reread = validateState(JSON.parse(serialiseState(next)));
  if (!reread.ok) {
    return {
      ok: false,
      code: "invalid",
      reason: `the state file would be invalid: ${reread.reason}`,
    };
  }
  const cancelled = current === file ? file?.expires : undefined;
  return cancelled === undefined ? reread : { ...reread, cancelled };
}

/**
 * A signal's change: USR1 (UP) and USR2 (DOWN) keep the other fields but the instance's reason,
 * which was the last change's, and end a pending expiry.
 */
export function applySignal(current: State, status: Status, origin: Origin): State {
  return withRecords(
    withFields(current, { ...current, status, reason: undefined }),
    record(origin, undefined, undefined),
    undefined,
  );
}

/** The state once its pending expiry is due at `nowMs` (the state from before returns), or undefined. */
export function expire(current: State, nowMs: number): State | undefined {
  const expires = current.expires;
  if (expires === undefined || Date.parse(expires.at) > nowMs) return undefined;
  const { service, returns } = expires;
  const returned =
    service === undefined
      ? withFields(current, returns ?? FALLBACK_STATE)
      : returns === null
        ? withoutService(current, service)
        : withService(current, service, returns);
  return withRecords(
    returned,
    record({ atMs: nowMs, via: "expiry" }, service, undefined),
    undefined,
  );
}

/** Milliseconds until the pending expiry is due (0 when it is), or undefined when none is. */
export function msUntilExpiry(state: State, nowMs: number): number | undefined {
  if (state.expires === undefined) return undefined;
  return Math.max(0, Date.parse(state.expires.at) - nowMs);
}

const UNITS_MS: Readonly<Record<string, number>> = {
  d: 86_400_000,
  h: 3_600_000,
  m: 60_000,
  s: 1000,
};

/**
 * `90s`, `30m`, `2h`, `1d`, or several in that order (`1h30m`), in milliseconds; undefined when the
 * text is not a duration above zero and at most a year.
 */
export function parseDuration(text: string): number | undefined {
  const match = /^(?:([0-9]{1,6})d)?(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,7})s)?$/.exec(
    text,
  );
  if (match === null || text === "") return undefined;
  const [, d = "0", h = "0", m = "0", s = "0"] = match;
  const ms =
    Number(d) * (UNITS_MS.d as number) +
    Number(h) * (UNITS_MS.h as number) +
    Number(m) * (UNITS_MS.m as number) +
    Number(s) * (UNITS_MS.s as number);
  return ms > 0 && ms <= MAX_FOR_MS ? ms : undefined;
}

/** A duration as `parseDuration` reads it, largest units first: 5400000 -> "1h30m". */
export function formatDuration(ms: number): string {
  let left = Math.round(ms / 1000) * 1000;
  let text = "";
  for (const [unit, size] of Object.entries(UNITS_MS)) {
    const count = Math.floor(left / size);
    if (count > 0) text += `${count}${unit}`;
    left -= count * size;
  }
  return text === "" ? "0s" : text;
}

function record(origin: Origin, service: string | undefined, reason: string | undefined): Changed {
  return Object.freeze({
    at: new Date(origin.atMs).toISOString(),
    via: origin.via,
    ...(origin.signal === undefined ? {} : { signal: origin.signal }),
    ...(origin.by === undefined ? {} : { by: origin.by }),
    ...(service === undefined ? {} : { service }),
    ...(reason === undefined ? {} : { reason }),
  });
}

/** What returns at `atMs`: the target's state before the change (a service it adds goes). */
function expiry(atMs: number, current: State | undefined, service: string | undefined): Expiry {
  const at = new Date(atMs).toISOString();
  if (service === undefined)
    return Object.freeze({ at, returns: makeState(current ?? FALLBACK_STATE) });
  const returns =
    current !== undefined && hasService(current, service)
      ? makeState(current.services?.[service] as ServiceState)
      : null;
  return Object.freeze({ at, service, returns });
}
