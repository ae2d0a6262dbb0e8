/**
 * What the agent answers when its own checks have a say: the operator's state is the ceiling.
 * Each failing check yields a status (its verdict); the most restrictive of the operator's status
 * and the verdicts wins, so a failing check can take a server out, and a passing one can never
 * put back a server its operator took out. The weight and maxconn stay the operator's; the
 * description comes from whoever decided, so HAProxy's stats say why. Pure.
 */
import { hasService, type ServiceState, type State, type Status, serviceState } from "./state.js";

/** A failing check's word on the reply. A passing check has none. */
export interface Verdict {
  readonly status: Status;
  /** Why, as HAProxy shows it: `check web: http://127.0.0.1:8080/health: 503 for 3 checks`. */
  readonly description: string;
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

/** The operator's state with the verdicts applied: the same object when none outranks it. */
export function compose(operator: ServiceState, verdicts: readonly Verdict[]): ServiceState {
  let decider: Verdict | undefined;
  for (const verdict of verdicts) {
    const bar = decider === undefined ? RESTRICTION[operator.status] : RESTRICTION[decider.status];
    if (RESTRICTION[verdict.status] > bar) decider = verdict;
  }
  if (decider === undefined) return operator;
  const { weight, maxconn } = operator;
  return Object.freeze({
    status: decider.status,
    ...(weight === undefined ? {} : { weight }),
    ...(maxconn === undefined ? {} : { maxconn }),
    description: decider.description,
  });
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
 * instance's verdicts and, for a service the file names, its own. Each answer is composed on its
 * own, so a check of the instance can take every service out but never loosen one.
 */
export function answerFor(
  state: State,
  name: string | undefined,
  verdicts: Verdicts,
): ServiceState {
  const own = serviceState(state, name);
  const mine =
    name !== undefined && hasService(state, name) ? verdicts.services.get(name) : undefined;
  const all = mine === undefined ? verdicts.instance : [...verdicts.instance, ...mine];
  return all.length === 0 ? own : compose(own, all);
}
