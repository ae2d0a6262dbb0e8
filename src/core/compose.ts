/**
 * What the agent answers when other layers than the operator's have a say (its own checks, the
 * fleet's word from etcd): the operator's state is the ceiling. Each layer yields verdicts; per
 * axis the most restrictive wins: the status (a failing check or the fleet can take a server out,
 * never put back one its operator took out), and the lowest weight and maxconn. The description
 * comes from whoever decided, so HAProxy's stats say why. Pure.
 */
import { LOWEST_FIELDS, type LowestName, REPLY_FIELDS } from "./fields.js";
import { hasService, type ServiceState, type State, type Status, serviceState } from "./state.js";

/**
 * What a layer allows at most of each field where the lowest wins (a weight in percent, a
 * maxconn): the lower of it and the operator's is sent.
 */
export type Limits = { readonly [K in LowestName]?: number | undefined };

/** A layer's word on the reply: a failing check's, the fleet's. A passing check has none. */
export interface Verdict extends Limits {
  readonly status: Status;
  /** Why, as HAProxy shows it: `check web: http://127.0.0.1:8080/health: 503 for 3 checks`. */
  readonly description: string;
}

/** A state's limits, as a layer's verdict carries them. */
export function limitsOf(state: ServiceState): Limits {
  const limits: { [K in LowestName]?: number | undefined } = {};
  for (const { name } of LOWEST_FIELDS) limits[name] = state[name];
  return limits;
}

/** What the agent answers while its checks file cannot be used: a configuration error. */
export const CHECKS_UNUSABLE: Verdict = Object.freeze({
  status: "MAINT",
  description: "hapgent: the checks file is invalid",
});

/**
 * How far each status takes a server out of rotation. UP and READY send the same words; DRAIN
 * keeps sessions that stick to it; DOWN, FAIL and STOPPED take it out (STOPPED tells HAProxy it
 * stops on purpose); MAINT takes it out whatever its health.
 */
export const RESTRICTION: Readonly<Record<Status, number>> = {
  UP: 0,
  READY: 0,
  DRAIN: 1,
  DOWN: 2,
  FAIL: 3,
  STOPPED: 4,
  MAINT: 5,
};

/**
 * The operator's state with the verdicts applied, per axis: the most restrictive status, the
 * lowest of each field where the lowest wins (fields.ts: the operator's absent weight is 100%,
 * maxconn 0 is none); the first of equals keeps its place. The description is the verdict's that
 * decided the status, else the one that lowered the weight, else the maxconn. The same object
 * when no verdict outranks the operator on any axis.
 */
export function compose(operator: ServiceState, verdicts: readonly Verdict[]): ServiceState {
  let decider: Verdict | undefined;
  const lowest = new Map<LowestName, number | undefined>();
  const loweredBy = new Map<LowestName, Verdict>();
  for (const { name } of LOWEST_FIELDS) lowest.set(name, operator[name]);
  for (const verdict of verdicts) {
    const bar = RESTRICTION[(decider ?? operator).status];
    if (RESTRICTION[verdict.status] > bar) decider = verdict;
    for (const { name, allows } of LOWEST_FIELDS) {
      const limit = verdict[name];
      if (limit !== undefined && allows(limit) < allows(lowest.get(name))) {
        lowest.set(name, limit);
        loweredBy.set(name, verdict);
      }
    }
  }
  const by =
    decider ??
    LOWEST_FIELDS.map(({ name }) => loweredBy.get(name)).find((verdict) => verdict !== undefined);
  if (by === undefined) return operator;
  const composed: { -readonly [K in keyof ServiceState]: ServiceState[K] } = {
    status: (decider ?? operator).status,
  };
  for (const field of REPLY_FIELDS) {
    const value = field.composes === "lowest" ? lowest.get(field.name) : by[field.name];
    if (value !== undefined) Object.assign(composed, { [field.name]: value });
  }
  return Object.freeze(composed);
}

/** The failing checks' verdicts: the instance's, and each service's. */
export interface Verdicts {
  readonly instance: readonly Verdict[];
  readonly services: ReadonlyMap<string, readonly Verdict[]>;
}

export const NO_VERDICTS: Verdicts = Object.freeze({ instance: [], services: new Map() });

/** While the checks file cannot be used: MAINT for every answer. */
export const UNUSABLE_VERDICTS: Verdicts = Object.freeze({
  instance: [CHECKS_UNUSABLE],
  services: new Map(),
});

/** The verdicts of checks, each of the instance or of one service, grouped as answers need them. */
export function groupVerdicts(
  checks: Iterable<{
    readonly service?: string | undefined;
    readonly verdict?: Verdict | undefined;
  }>,
): Verdicts {
  const instance: Verdict[] = [];
  const services = new Map<string, Verdict[]>();
  for (const { service, verdict } of checks) {
    if (verdict === undefined) continue;
    if (service === undefined) instance.push(verdict);
    else services.set(service, [...(services.get(service) ?? []), verdict]);
  }
  return { instance, services };
}

/**
 * What a probe that asks for `name` (undefined: the instance) is answered: the operator's state
 * for it, as the file decides (an instance out of service answers every service), with the
 * instance's verdicts and, for a service the file names, its own, and the fleet's word for that
 * name (`fleet`, see core/fleet.ts). Each answer is composed on its own, so a check of the
 * instance can take every service out but never loosen one.
 */
export function answerFor(
  state: State,
  name: string | undefined,
  verdicts: Verdicts,
  fleet?: (name: string | undefined) => Verdict | undefined,
): ServiceState {
  const own = serviceState(state, name);
  const named = name !== undefined && hasService(state, name) ? name : undefined;
  const mine = named === undefined ? undefined : verdicts.services.get(named);
  const word = fleet?.(named);
  const all = [...verdicts.instance, ...(mine ?? []), ...(word === undefined ? [] : [word])];
  return all.length === 0 ? own : compose(own, all);
}
