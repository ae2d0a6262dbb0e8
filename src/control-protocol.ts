/**
 * What the command line and the daemon say to each other over the control socket: one JSON object
 * per line. Requests are checked here, by both sides' shared rules; the daemon trusts nothing else.
 */
import type { Change, FieldChange } from "./core/change.js";
import type { Verdict } from "./core/compose.js";
import { FIELD_NAMES, type FieldName } from "./core/fields.js";
import { findDuplicateKey } from "./core/json.js";
import {
  type Expiry,
  isRecordedUser,
  isServiceName,
  isStatus,
  STATUSES,
  type State,
  type Status,
} from "./core/state.js";

/** One result of one run. */
export interface CheckResult {
  readonly status: Status;
  /** What happened, for logs and status: `http://…/health: 503`, `exit 2: disk 95% full`. */
  readonly detail: string;
  readonly atMs: number;
  readonly durationMs: number;
  /**
   * Not run, for a fault of the agent's own of the moment (no descriptor left, no memory): it
   * says nothing of what is checked, so it counts as neither a pass nor a failure.
   */
  readonly agentFault?: true;
}

/** A check as status, metrics and the control socket show it. */
export interface CheckView {
  readonly name: string;
  readonly service: string | undefined;
  readonly target: string;
  readonly passing: boolean;
  /** Its word on the reply while it fails. */
  readonly verdict: Verdict | undefined;
  readonly last: CheckResult | undefined;
  /** Passes and failures in a row, against rise and fall. */
  readonly passes: number;
  readonly fails: number;
  readonly rise: number;
  readonly fall: number;
  readonly runs: number;
  readonly failedRuns: number;
}

/** What `hapgent status` and the metrics show of the fleet. */
export interface FleetView {
  readonly keys: readonly string[];
  readonly endpoint: string;
  /** Every key is watched on a live endpoint now. */
  readonly connected: boolean;
  /** The word followed: the key, its revision and its state; null: no key holds one. */
  readonly word: { readonly key: string; readonly revision: number; readonly state: State } | null;
  /** Why a key's value is not followed, or null. */
  readonly problem: string | null;
  /** When etcd last confirmed the word (an event, a read that agreed with it); null: never. */
  readonly heardAt: string | null;
  readonly heardAgoMs: number | null;
  /** Since when etcd cannot be reached, and why; null while connected. */
  readonly lostAt: string | null;
  readonly lostReason: string | null;
  /** The word came from the cache file and etcd has not confirmed it since the start. */
  readonly fromCache: boolean;
}

export type ControlRequest =
  | { readonly op: "status" }
  | {
      readonly op: "change";
      readonly change: Change;
      /** The user the command line runs as, for the audit record (as it says; not checked). */
      readonly by?: string;
    };

/** One load balancer polling the agent, as the daemon reports it. */
export interface PollerView {
  readonly address: string;
  /** "" for the instance. */
  readonly service: string;
  readonly intervalMs: number | null;
  /** How long ago it last probed. */
  readonly lastProbeAgoMs: number;
  readonly lastProbeAt: string;
  readonly probes: number;
  /** The reply it was last given, and the one it last heard (without the line end). */
  readonly given: string | null;
  readonly heard: string | null;
  readonly heardAgoMs: number | null;
  /** Whether what it last heard is what it would be given now. */
  readonly current: boolean;
  /** The last maxconn word it heard, which HAProxy holds until another; null for none heard. */
  readonly heldMaxconn?: number | null;
  /**
   * The held maxconn when the reply now says none (haproxy.cfg's): HAProxy keeps it, so the agent
   * and HAProxy disagree; null otherwise. Absent from a daemon older than this field.
   */
  readonly keptMaxconn?: number | null;
}

/** The agent's own checks, as the daemon reports them (none without a checks file). */
export interface ChecksView {
  readonly checks: readonly CheckView[];
  /** Why the checks file cannot be used (the agent answers MAINT), or null. */
  readonly checksProblem: string | null;
  /** The fleet's word from etcd, or null without HAPGENT_ETCD_ENDPOINTS. */
  readonly fleet: FleetView | null;
}

export interface StatusReply extends ChecksView {
  readonly ok: true;
  readonly state: State;
  readonly pollers: readonly PollerView[];
}

export type ChangeReply =
  | ({
      readonly ok: true;
      readonly state: State;
      readonly replaced: string | null;
      readonly unsaved: string | null;
      /** The pending expiry the change replaced. */
      readonly cancelled: Expiry | null;
      /** The load balancers polling at the moment of the change, after it. */
      readonly pollers: readonly PollerView[];
    } & ChecksView)
  | {
      readonly ok: false;
      readonly code: "invalid" | "no-instance" | "unreadable";
      readonly error: string;
    };

export type ErrorReply = { readonly ok: false; readonly error: string };

/**
 * Said at once, before the request is read, when every client the daemon takes is waiting for
 * a reply (changes being saved): nothing was done, and the request may be sent again.
 */
export type BusyReply = { readonly ok: false; readonly code: "busy"; readonly error: string };

export function isBusy(reply: unknown): reply is BusyReply {
  return (
    typeof reply === "object" &&
    reply !== null &&
    "code" in reply &&
    reply.code === "busy" &&
    "ok" in reply &&
    reply.ok === false
  );
}

export type RequestResult =
  | { readonly ok: true; readonly request: ControlRequest }
  | { readonly ok: false; readonly reason: string };

/** The keys a change request may have. */
const CHANGE_REQUEST_KEYS = ["op", "status", "service", ...FIELD_NAMES, "reason", "forMs", "by"];

/** Checks one line of a request. Never throws. */
export function parseRequest(line: string): RequestResult {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    return { ok: false, reason: `request is not JSON (${(err as Error).message.slice(0, 80)})` };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, reason: "request must be a JSON object" };
  }
  // JSON.parse keeps the last of a key given twice: `{"op":"status","op":"change"}` says two things.
  const duplicate = findDuplicateKey(line);
  if (duplicate !== undefined) {
    const where = duplicate.path.map((key) => `${shorten(key)}: `).join("");
    return {
      ok: false,
      reason: `${where}${shorten(duplicate.key)} appears more than once; expected each key once`,
    };
  }
  const record = value as Record<string, unknown>;
  if (record.op === "status") {
    const extra = Object.keys(record).find((key) => key !== "op");
    if (extra !== undefined) return { ok: false, reason: `status takes no ${shorten(extra)}` };
    return { ok: true, request: { op: "status" } };
  }
  if (record.op !== "change") {
    return {
      ok: false,
      reason: `op must be "status" or "change", got ${shorten(String(record.op))}`,
    };
  }
  return parseChange(record);
}

/** Checks a change request, its `op` read. */
function parseChange(record: Record<string, unknown>): RequestResult {
  const extra = Object.keys(record).find((key) => !CHANGE_REQUEST_KEYS.includes(key));
  if (extra !== undefined) return { ok: false, reason: `change takes no ${shorten(extra)}` };
  if (!isStatus(record.status)) {
    return { ok: false, reason: `status must be one of ${STATUSES.join(", ")}` };
  }
  if (
    record.service !== undefined &&
    !(typeof record.service === "string" && isServiceName(record.service))
  ) {
    return { ok: false, reason: "service must be a service name" };
  }
  const fields: Partial<Record<FieldName, FieldChange>> = {};
  for (const field of FIELD_NAMES) {
    const given = record[field];
    if (given === undefined) continue;
    if (given !== null && typeof given !== "number" && typeof given !== "string") {
      return { ok: false, reason: `${field} must be a number, a string or null` };
    }
    fields[field] = given;
  }
  const { reason, forMs, by } = record;
  if (reason !== undefined && typeof reason !== "string") {
    return { ok: false, reason: "reason must be a string" };
  }
  if (forMs !== undefined && !(typeof forMs === "number" && Number.isSafeInteger(forMs))) {
    return { ok: false, reason: "forMs must be a whole number of milliseconds" };
  }
  if (by !== undefined && !isRecordedUser(by)) {
    return {
      ok: false,
      reason: "by must be a user's name: 1-100 printable characters on one line",
    };
  }
  return {
    ok: true,
    request: {
      op: "change",
      change: {
        status: record.status,
        ...(record.service === undefined ? {} : { service: record.service as string }),
        ...fields,
        ...(reason === undefined ? {} : { reason }),
        ...(forMs === undefined ? {} : { forMs }),
      },
      ...(by === undefined ? {} : { by }),
    },
  };
}

function shorten(text: string): string {
  return JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}...` : text);
}
