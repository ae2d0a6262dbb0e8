/**
 * The bytes each probe is answered, per state: the agent's state is a frozen value replaced on
 * every change, so each line is built and encoded once per state (and service), never per probe.
 * Also what is worth logging about the names probes send, once per state and boundedly.
 */

import { reply } from "../core/reply.js";
import {
  hasService,
  printable,
  type ServiceState,
  type State,
  serviceState,
} from "../core/state.js";
import type { Logger } from "../log.js";

export interface Replies {
  /** Whether a reply depends on the probe's agent-send line: the state names services. */
  awaitsName(): boolean;
  /**
   * The bytes for a probe that sent `name` (its first line, trimmed), or sent no line in time
   * (undefined). A name the state lacks gets the instance's line.
   */
  lineFor(name: string | undefined): Uint8Array;
  /** The service a probe that sent `name` is answered for: the name, or "" for the instance. */
  serviceOf(name: string | undefined): string;
  /** The line a probe for `service` ("" for the instance) is given now; logs nothing. */
  currentFor(service: string): Uint8Array;
}

export interface RepliesOptions {
  /** The state to answer now; read on every probe, so a change shows at the next one. */
  readonly current: () => State;
  /**
   * The answer for a probe of `name` (undefined: the instance) in `state`: by default the
   * file's rule (serviceState); with checks, their verdicts too.
   */
  readonly answer?: (state: State, name: string | undefined) => ServiceState;
  /** Goes up whenever `answer` would answer differently for the same state (a check's verdict). */
  readonly version?: () => number;
  readonly log: Logger;
  /** HAPGENT_SEND_WAIT_MS, quoted in the warning about probes that send no line. */
  readonly sendWaitMs: number;
}

/** Distinct unknown service names logged per state; a client cycling names cannot flood the log. */
export const MAX_UNKNOWN_NAMES_LOGGED = 20;

/** A closure over the lines of the current state; each function inside reads in a screen. */
export function createReplies({
  current,
  log,
  sendWaitMs,
  answer = serviceState,
  version = () => 0,
}: RepliesOptions): Replies {
  let answered: State | undefined;
  let answeredVersion = 0;
  let line = new Uint8Array(0);
  let named = false;
  let serviceLines = new Map<string, Uint8Array>();
  const unknownNames = new Set<string>();
  let waitLogged = false;

  const refresh = (): State => {
    const state = current();
    const now = version();
    if (state !== answered || now !== answeredVersion) {
      answered = state;
      answeredVersion = now;
      line = Buffer.from(reply(answer(state, undefined)));
      named = state.services !== undefined && Object.keys(state.services).length > 0;
      serviceLines = new Map();
      unknownNames.clear();
      waitLogged = false;
    }
    return state;
  };

  const unnamed = (): Uint8Array => {
    if (named && !waitLogged) {
      waitLogged = true;
      log.warning(
        `a probe sent no agent-send line within ${sendWaitMs} ms (HAPGENT_SEND_WAIT_MS) and was answered the instance state; a server probing without agent-send waits that long for every reply`,
      );
    }
    return line;
  };

  const unknown = (name: string): Uint8Array => {
    if (!unknownNames.has(name) && unknownNames.size < MAX_UNKNOWN_NAMES_LOGGED) {
      unknownNames.add(name);
      log.warning(
        `a probe asked for service ${printable(JSON.stringify(name))}, which the state file does not name; answered the instance state`,
      );
    }
    return line;
  };

  /** A service's line, built once per state. */
  const serviceLine = (state: State, name: string): Uint8Array => {
    let bytes = serviceLines.get(name);
    if (bytes === undefined) {
      bytes = Buffer.from(reply(answer(state, name)));
      serviceLines.set(name, bytes);
    }
    return bytes;
  };

  return {
    currentFor(service) {
      const state = refresh();
      return service !== "" && hasService(state, service) ? serviceLine(state, service) : line;
    },
    serviceOf(name) {
      const state = refresh();
      return name !== undefined && name !== "" && hasService(state, name) ? name : "";
    },
    awaitsName() {
      refresh();
      return named;
    },
    lineFor(name) {
      const state = refresh();
      if (name === undefined) return unnamed();
      if (name === "") return line;
      if (!hasService(state, name)) return unknown(name);
      return serviceLine(state, name);
    },
  };
}
