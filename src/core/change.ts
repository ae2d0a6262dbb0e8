/**
 * A change an operator asks for (`hapgent set DRAIN --weight 50`, `hapgent up --service web`)
 * applied to the state in the file: the next state, or why there is none. Pure.
 */
import {
  hasService,
  MAX_STATE_FILE_BYTES,
  type ServiceState,
  type State,
  type Status,
  serialiseState,
  validateState,
  withService,
} from "./state.js";

/** A field's new value: absent keeps the current one, null removes it, anything else sets it. */
export type FieldChange = number | string | null;

export interface Change {
  readonly status: Status;
  /** The service to change; the instance when absent. */
  readonly service?: string | undefined;
  readonly weight?: FieldChange | undefined;
  readonly maxconn?: FieldChange | undefined;
  readonly description?: FieldChange | undefined;
}

export type ChangeResult =
  | { readonly ok: true; readonly state: State }
  | {
      readonly ok: false;
      /** `no-instance`: a service cannot be added to a file without a valid instance state. */
      readonly code: "invalid" | "no-instance";
      readonly reason: string;
    };

const CHANGED_FIELDS = ["weight", "maxconn", "description"] as const;

/**
 * The state after `change`, checked by the file's own rules, as the agent will read it.
 * `current` is the file's valid state, or undefined when it is missing or invalid (a change of
 * the instance then starts afresh).
 */
export function applyChange(current: State | undefined, change: Change): ChangeResult {
  const { service } = change;
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
  for (const field of CHANGED_FIELDS) {
    const given = change[field];
    if (given === null) continue;
    const value = given === undefined ? base[field] : given;
    if (value !== undefined) candidate[field] = value;
  }
  const validated = validateState(candidate);
  if (!validated.ok) {
    const where = service === undefined ? "" : `services[${JSON.stringify(service)}]: `;
    return { ok: false, code: "invalid", reason: `${where}${validated.reason}` };
  }
  const next =
    service !== undefined && current !== undefined
      ? withService(current, service, validated.state)
      : current?.services !== undefined
        ? { ...validated.state, services: current.services }
        : validated.state;
  // The whole file, as the agent will read it: the number of services, its size.
  const text = serialiseState(next);
  if (new TextEncoder().encode(text).length > MAX_STATE_FILE_BYTES) {
    return {
      ok: false,
      code: "invalid",
      reason: `the state file would be larger than ${MAX_STATE_FILE_BYTES} bytes`,
    };
  }
  const reread = validateState(JSON.parse(text));
  if (!reread.ok) {
    return {
      ok: false,
      code: "invalid",
      reason: `the state file would be invalid: ${reread.reason}`,
    };
  }
  return reread;
}
