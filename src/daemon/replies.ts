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
  readonly generation?: () => number;
  readonly log: Logger;
  /** HAPGENT_SEND_WAIT_MS, quoted in the warning about probes that send no line. */
  readonly sendWaitMs: number;
}

/** Distinct unknown service names logged per state; a client cycling names cannot flood the log. */
export const MAX_UNKNOWN_NAMES_LOGGED = 20;

/** The lines of the state answered last, and what was logged about it. */
interface Lines {
  readonly current: () => State;
  readonly answer: (state: State, name: string | undefined) => ServiceState;
  readonly generation: () => number;
  readonly log: Logger;
  readonly sendWaitMs: number;
  answered: State | undefined;
  answeredGeneration: number;
  line: Uint8Array;
  named: boolean;
  serviceLines: Map<string, Uint8Array>;
  readonly unknownNames: Set<string>;
  waitLogged: boolean;
}

/** The lines of the current state, kept by the functions below. */
export function createReplies({
  current,
  log,
  sendWaitMs,
  answer = serviceState,
  generation = () => 0,
}: RepliesOptions): Replies {
  const lines: Lines = {
    current,
    answer,
    generation,
    log,
    sendWaitMs,
    answered: undefined,
    answeredGeneration: 0,
    line: new Uint8Array(0),
    named: false,
    serviceLines: new Map(),
    unknownNames: new Set(),
    waitLogged: false,
  };
  return {
    currentFor(service) {
      const state = refresh(lines);
      return service !== "" && hasService(state, service)
        ? serviceLine(lines, state, service)
        : lines.line;
    },
    serviceOf(name) {
      const state = refresh(lines);
      return name !== undefined && name !== "" && hasService(state, name) ? name : "";
    },
    awaitsName() {
      refresh(lines);
      return lines.named;
    },
    lineFor(name) {
      const state = refresh(lines);
      if (name === undefined) return unnamed(lines);
      if (name === "") return lines.line;
      if (!hasService(state, name)) return unknown(lines, name);
      return serviceLine(lines, state, name);
    },
  };
}

function refresh(lines: Lines): State {
  const state = lines.current();
  const now = lines.generation();
  if (state !== lines.answered || now !== lines.answeredGeneration) {
    lines.answered = state;
    lines.answeredGeneration = now;
    lines.line = Buffer.from(reply(lines.answer(state, undefined)));
    lines.named = state.services !== undefined && Object.keys(state.services).length > 0;
    lines.serviceLines = new Map();
    lines.unknownNames.clear();
    lines.waitLogged = false;
  }
  return state;
}

function unnamed(lines: Lines): Uint8Array {
  if (lines.named && !lines.waitLogged) {
    lines.waitLogged = true;
    lines.log.warning(
      `a probe sent no agent-send line within ${lines.sendWaitMs} ms (HAPGENT_SEND_WAIT_MS) and was answered the instance state; a server probing without agent-send waits that long for every reply`,
    );
  }
  return lines.line;
}

function unknown(lines: Lines, name: string): Uint8Array {
  const { unknownNames } = lines;
  if (!unknownNames.has(name) && unknownNames.size < MAX_UNKNOWN_NAMES_LOGGED) {
    unknownNames.add(name);
    lines.log.warning(
      `a probe asked for service ${printable(JSON.stringify(name))}, which the state file does not name; answered the instance state`,
    );
  }
  return lines.line;
}

/** A service's line, built once per state. */
function serviceLine(lines: Lines, state: State, name: string): Uint8Array {
  let bytes = lines.serviceLines.get(name);
  if (bytes === undefined) {
    bytes = Buffer.from(reply(lines.answer(state, name)));
    lines.serviceLines.set(name, bytes);
  }
  return bytes;
}
