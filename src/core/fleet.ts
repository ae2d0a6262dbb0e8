/**
 * The fleet's word: states kept in etcd under keys that name this host, its groups and the whole
 * fleet (HAPGENT_ETCD_KEYS, most specific first). The first key that exists speaks for this host;
 * its value is a state in the state file's format. Pure: values in, the word and its verdicts out.
 */
import { limitsOf, type Verdict } from "./compose.js";
import {
  MAX_STATE_FILE_BYTES,
  parseState,
  RECORDS_ALLOWANCE_BYTES,
  type State,
  type StateResult,
  sameState,
  serviceState,
} from "./state.js";

/** What one key holds: nothing, a valid state, or bytes that are not one (and why). */
export type KeyValue =
  | { readonly kind: "absent"; readonly revision: number }
  | { readonly kind: "state"; readonly revision: number; readonly state: State }
  | { readonly kind: "invalid"; readonly revision: number; readonly reason: string };

/** The word this host follows: the state of the first key that holds one. */
export interface FleetEntry {
  readonly key: string;
  /** The revision at which the key got this value (etcd's mod_revision). */
  readonly revision: number;
  readonly state: State;
}

/** Keys a host may follow; each is one watch. */
export const MAX_FLEET_KEYS = 16;
export const MAX_FLEET_KEY_BYTES = 512;

/**
 * The most of a key's value that is read: what the state file's rules could accept. A larger
 * value is an invalid value of that key alone; etcd allows 1.5 MiB.
 */
export const MAX_FLEET_VALUE_BYTES = MAX_STATE_FILE_BYTES + RECORDS_ALLOWANCE_BYTES;

/** A fleet value: a state file's text, with no pending expiry (an expiring word is a lease). */
export function parseFleetValue(bytes: Uint8Array, revision: number): KeyValue {
  const parsed: StateResult = parseState(bytes);
  if (!parsed.ok) {
    return { kind: "invalid", revision, reason: parsed.reason.replace(/^file /, "value ") };
  }
  if (parsed.state.expires !== undefined) {
    return {
      kind: "invalid",
      revision,
      reason:
        "expires is not applied to a fleet value (an expiring fleet word is written with hapgent fleet set --for, as an etcd lease)",
    };
  }
  return { kind: "state", revision, state: parsed.state };
}

/**
 * What a read found for a key: its value at its revision, or nothing as of the read's revision.
 * A value left unread (larger than MAX_FLEET_VALUE_BYTES) is invalid.
 */
export function readValue(
  found: { readonly value: Uint8Array | undefined; readonly modRevision: number } | undefined,
  readRevision: number,
): KeyValue {
  if (found === undefined) return { kind: "absent", revision: readRevision };
  if (found.value === undefined) {
    return {
      kind: "invalid",
      revision: found.modRevision,
      reason: `value is larger than ${MAX_STATE_FILE_BYTES} bytes`,
    };
  }
  return parseFleetValue(found.value, found.modRevision);
}

/**
 * What the host follows, given each key's value in order, and the word it followed before.
 * The first key that exists decides. When that key holds an invalid value, the word before stands
 * (one typo in a group key must not take a fleet out, nor put back in what it had out, nor let a
 * less specific key speak instead); with no word before, the fleet has none (the operator's state
 * alone). `problem` says why a value is not followed.
 */
export function chooseEntry(
  keys: readonly string[],
  values: ReadonlyMap<string, KeyValue>,
  before: FleetEntry | undefined,
): { readonly entry: FleetEntry | undefined; readonly problem: string | undefined } {
  for (const key of keys) {
    const value = values.get(key);
    if (value === undefined || value.kind === "absent") continue;
    if (value.kind === "state") {
      // The same word read again (a cached one confirmed): nothing to log or save. Its content
      // is compared too: etcd's data made anew can reuse a revision for another value.
      const same =
        before?.key === key &&
        before.revision === value.revision &&
        sameState(before.state, value.state);
      return {
        entry: same ? before : Object.freeze({ key, revision: value.revision, state: value.state }),
        problem: undefined,
      };
    }
    return {
      entry: before,
      problem: `${key} (revision ${value.revision}) is not a valid state: ${value.reason}; ${
        before === undefined
          ? "no fleet word was followed before, so the operator's state alone decides"
          : `still following ${before.key} (revision ${before.revision})`
      }`,
    };
  }
  return { entry: undefined, problem: undefined };
}

/**
 * The revision at which the key that speaks got a value that is not a valid state, if it holds
 * one: the word a host follows then is the one it followed just before.
 */
export function invalidSince(
  keys: readonly string[],
  values: ReadonlyMap<string, KeyValue>,
): number | undefined {
  for (const key of keys) {
    const value = values.get(key);
    if (value === undefined || value.kind === "absent") continue;
    return value.kind === "invalid" ? value.revision : undefined;
  }
  return undefined;
}

/**
 * What a host that followed the keys all along follows: chooseEntry over the keys' values at
 * successive revisions (oldest first), each time with the word chosen before, as the agent does.
 */
export function entryAfter(
  keys: readonly string[],
  history: readonly ReadonlyMap<string, KeyValue>[],
): ReturnType<typeof chooseEntry> {
  let chosen: ReturnType<typeof chooseEntry> = { entry: undefined, problem: undefined };
  for (const values of history) chosen = chooseEntry(keys, values, chosen.entry);
  return chosen;
}

/** The fleet's verdict on an answer for `name` (undefined: the instance), as a layer of compose. */
export function fleetVerdict(entry: FleetEntry, name: string | undefined): Verdict {
  const own = serviceState(entry.state, name);
  const why = own.reason ?? own.description;
  return {
    status: own.status,
    ...limitsOf(own),
    description: `fleet ${entry.key}${why === undefined ? "" : `: ${why}`}`,
  };
}

/** Whether `key` can be an etcd key the fleet follows: printable ASCII, starting with `/`. */
export function isFleetKey(key: string): boolean {
  return /^\/[\x21-\x7e]*$/.test(key) && key.length <= MAX_FLEET_KEY_BYTES;
}
