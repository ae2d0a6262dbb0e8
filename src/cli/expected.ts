/**
 * What the command line expects the agent to answer, from what the daemon reported: the same
 * composition the daemon makes (core/compose.ts), applied to the daemon's views.
 */

import type { ChecksView } from "../control-protocol.js";
import {
  answerFor,
  groupVerdicts,
  NO_VERDICTS,
  UNUSABLE_VERDICTS,
  type Verdicts,
} from "../core/compose.js";
import { fleetVerdict } from "../core/fleet.js";
import type { ServiceState, State } from "../core/state.js";

/**
 * What the agent answers a probe of `name` (undefined: the instance) in `state`, with the
 * verdicts of the checks and the fleet's word the daemon reported: what a command expects to
 * hear. A checks file that cannot be used means MAINT, as in the daemon. A daemon that says
 * nothing of checks or the fleet (one older than them) has none.
 */
export function answerWith(
  state: State,
  name: string | undefined,
  view: Partial<ChecksView> | undefined,
): ServiceState {
  const word = view?.fleet?.word ?? undefined;
  return answerFor(
    state,
    name,
    verdictsOf(view),
    word === undefined ? undefined : (named) => fleetVerdict(word, named),
  );
}

function verdictsOf(view: Partial<ChecksView> | undefined): Verdicts {
  if (view === undefined) return NO_VERDICTS;
  if (typeof view.checksProblem === "string") return UNUSABLE_VERDICTS;
  return groupVerdicts(view.checks ?? []);
}
