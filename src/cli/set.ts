/**
 * `hapgent set STATUS` and its short forms: validate, apply (through the daemon's control socket,
 * or by saving the file and signalling), confirm with a probe, and optionally wait until every
 * load balancer heard it (--wait) and the service's port is idle (--idle PORT).
 */

import { type Change, type FieldChange, parseDuration } from "../core/change.js";
import {
  type FieldName,
  isDescription,
  MAX_DESCRIPTION_CHARS,
  REPLY_FIELDS,
  type ReplyField,
} from "../core/fields.js";
import { reply } from "../core/reply.js";
import {
  isServiceName,
  MAX_SERVICE_NAME_CHARS,
  type Status,
  validateState,
} from "../core/state.js";
import { apply } from "./apply.js";
import type { Values } from "./args.js";
import { CLI_EXIT, usage } from "./exit.js";
import { answerWith } from "./expected.js";
import { DEFAULT_IDLE_TIMEOUT_S, DEFAULT_TIMEOUT_S } from "./help.js";
import type { CliIo } from "./io.js";
import { findTarget } from "./target.js";
import { confirm, waitHeard, waitIdle } from "./waits.js";

const MAX_TIMEOUT_S = 3600;

export async function set(io: CliIo, values: Values, status: Status): Promise<number> {
  // Everything the arguments alone can get wrong is refused before anything is read.
  const timeoutS = seconds("timeout", values.timeout) ?? DEFAULT_TIMEOUT_S;
  const waitTimeoutS = seconds("wait-timeout", values["wait-timeout"]);
  const idleTimeoutS = seconds("idle-timeout", values["idle-timeout"]) ?? DEFAULT_IDLE_TIMEOUT_S;
  const idle = (values.idle ?? []).map(port);
  const wait = values.wait === true || idle.length > 0;
  const change = changeOf(values, status, "agent");

  const target = await findTarget(io, values, "change");
  if (wait && target.socket.path === undefined) {
    io.err(
      `hapgent: --wait and --idle need the running daemon's control socket (${target.socket.why}); nothing was written\n`,
    );
    return CLI_EXIT.NO_AGENT;
  }
  const applied = await apply(io, target, change, timeoutS);
  if (applied.code !== CLI_EXIT.OK) return applied.code;
  if (!values["no-confirm"] && !values["no-wait"]) {
    // With the agent's checks failing, it answers their verdict, not the file's state.
    const expected = reply(answerWith(applied.state, change.service, applied.checks));
    const confirmed = await confirm(io, target, applied.pid, change.service, expected, timeoutS);
    if (confirmed !== CLI_EXIT.OK) return confirmed;
  }
  if (!wait || target.socket.path === undefined) return CLI_EXIT.OK;
  const heard = await waitHeard(
    io,
    target.socket.path,
    applied.pollers ?? [],
    waitTimeoutS === undefined ? undefined : waitTimeoutS * 1000,
  );
  if (heard !== CLI_EXIT.OK || idle.length === 0) return heard;
  return waitIdle(io, idle, idleTimeoutS * 1000);
}

/** A number of seconds above 0 and at most an hour, or undefined when the option is not given. */
function seconds(option: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const value = /^[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : Number.NaN;
  if (!(value > 0 && value <= MAX_TIMEOUT_S)) {
    throw usage(
      `--${option} must be a number of seconds above 0 and at most ${MAX_TIMEOUT_S}, got ${JSON.stringify(text)}`,
    );
  }
  return value;
}

function port(text: string): number {
  const value = /^[1-9][0-9]{0,4}$/.test(text) ? Number(text) : Number.NaN;
  if (!(value >= 1 && value <= 65535)) {
    throw usage(`--idle must be a TCP port 1-65535, got ${JSON.stringify(text)}`);
  }
  return value;
}

/**
 * Throws a usage error naming the flag when its value breaks the file's rules: the argument is
 * wrong whatever the file holds, so it is refused before the file is read.
 */
function fieldProblem(status: Status, name: string, value: FieldChange | undefined): void {
  if (value === undefined || value === null) return;
  const checked = validateState({ status, [name]: value });
  if (checked.ok) return;
  throw usage(
    checked.reason.startsWith(`${name} `) ? `--${checked.reason}` : `--${name}: ${checked.reason}`,
  );
}

/**
 * What `--no-FIELD` does. For the agent's own state (`"agent"`) it sets the field's `cleared`
 * (core/fields.ts): `maxconn: 0`, no limit, since HAProxy keeps the last maxconn it heard and a
 * reply without one would leave it. For a fleet key (`"fleet"`) it removes the field: a fleet's
 * word only ever lowers, so it needs no value of its own.
 */
export type Clearing = "agent" | "fleet";

/** The change the options ask for, with `--no-FIELD` done as `clearing` says. */
export function changeOf(values: Values, status: Status, clearing: Clearing): Change {
  const service = values.service;
  if (service !== undefined && !isServiceName(service)) {
    throw usage(
      `--service must be 1-${MAX_SERVICE_NAME_CHARS} printable ASCII characters without spaces, as HAProxy sends it with agent-send (without the line end), got ${JSON.stringify(service)}`,
    );
  }
  const fields: { [K in FieldName]?: FieldChange | undefined } = {};
  for (const field of REPLY_FIELDS) {
    const value = fieldChange(values, field, clearing);
    fieldProblem(status, field.name, value);
    fields[field.name] = value;
  }
  const reason = values.reason;
  if (reason !== undefined && !isDescription(reason)) {
    throw usage(
      `--reason is the description HAProxy shows: 1-${MAX_DESCRIPTION_CHARS} characters of printable text on one line, not beginning or ending with a space, got ${JSON.stringify(reason)}`,
    );
  }
  const forText = values.for;
  const forMs = forText === undefined ? undefined : parseDuration(forText);
  if (forText !== undefined && forMs === undefined) {
    throw usage(
      `--for must be a duration above zero and at most a year, such as 90s, 30m, 2h, 1d or 1h30m, got ${JSON.stringify(forText)}`,
    );
  }
  return { status, service, ...fields, reason, forMs };
}

/** What the options say of one field: a new value, null to remove it, undefined to keep it. */
function fieldChange(
  values: Values,
  field: ReplyField,
  clearing: Clearing,
): FieldChange | undefined {
  if (values[`no-${field.name}`]) return clearing === "agent" ? field.cleared : null;
  const given = values[field.name];
  return given === undefined ? undefined : field.fromArg(given);
}
