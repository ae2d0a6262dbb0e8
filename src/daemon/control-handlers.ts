/**
 * What the daemon answers on its control socket: the state and the load balancers polling it,
 * and changes, applied in order with signals and reloads.
 */
import { mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import type { ChangeReply, ControlRequest, PollerView, StatusReply } from "../control-protocol.js";
import type { Logger } from "../log.js";
import { controllerOf, walkPath } from "../path-control.js";
import type { CheckLayer } from "./checks/layer.js";
import {
  type ControlHandlers,
  type ControlServer,
  ControlSocketError,
  createControlServer,
} from "./control.js";
import type { FleetLayer } from "./fleet/layer.js";
import { keptMaxconn, type Ledger } from "./ledger.js";
import type { Operator } from "./operator.js";
import type { Replies } from "./replies.js";

export interface HandlerParts {
  readonly operator: Pick<Operator, "state" | "change">;
  readonly ledger: Pick<Ledger, "pollers">;
  readonly replies: Pick<Replies, "currentFor">;
  /** The agent's own checks; undefined without a checks file. */
  readonly checks: Pick<CheckLayer, "views" | "problem"> | undefined;
  /** The fleet's word from etcd; undefined without HAPGENT_ETCD_ENDPOINTS. */
  readonly fleet: Pick<FleetLayer, "view"> | undefined;
  readonly now: () => number;
}

const decoder = new TextDecoder();
const text = (bytes: Uint8Array | undefined) =>
  bytes === undefined ? null : decoder.decode(bytes).trimEnd();

export function controlHandlers({
  operator,
  ledger,
  replies,
  checks,
  fleet,
  now,
}: HandlerParts): ControlHandlers {
  const checksView = () => ({
    checks: checks?.views() ?? [],
    checksProblem: checks?.problem ?? null,
    fleet: fleet?.view() ?? null,
  });
  const pollers = (): PollerView[] => {
    const at = now();
    return ledger.pollers().map((p) => {
      const answer = replies.currentFor(p.service);
      return {
        address: p.address,
        service: p.service,
        intervalMs: p.intervalMs ?? null,
        lastProbeAgoMs: at - p.lastSeenMs,
        lastProbeAt: new Date(p.lastSeenMs).toISOString(),
        probes: p.probes,
        given: text(p.lastGiven),
        heard: text(p.lastHeard),
        heardAgoMs: p.lastHeardMs === undefined ? null : at - p.lastHeardMs,
        current: p.lastHeard !== undefined && Buffer.from(p.lastHeard).equals(answer),
        heldMaxconn: p.heldMaxconn ?? null,
        keptMaxconn: keptMaxconn(p.heldMaxconn, answer) ?? null,
      };
    });
  };
  return {
    async handle(request: ControlRequest): Promise<StatusReply | ChangeReply> {
      if (request.op === "status") {
        return { ok: true, state: operator.state, pollers: pollers(), ...checksView() };
      }
      const outcome = await operator.change(request.change, "control", request.by);
      if (!outcome.ok) return { ok: false, code: outcome.code, error: outcome.reason };
      return {
        ok: true,
        state: outcome.state,
        replaced: outcome.replaced ?? null,
        unsaved: outcome.unsaved ?? null,
        cancelled: outcome.cancelled ?? null,
        pollers: pollers(),
        ...checksView(),
      };
    },
  };
}

/**
 * Makes the control socket's directory where it is missing (for the user alone; systemd makes
 * /run/hapgent under the unit) and checks that nobody but this user or root controls its path:
 * otherwise another user could put their own socket there, or take the daemon's.
 */
export async function prepareSocketDirectory(path: string, uid: number): Promise<void> {
  const directory = dirname(path);
  // Only the socket's own directory: its parent must exist (/run, $XDG_RUNTIME_DIR, /tmp).
  await mkdir(directory, { mode: uid === 0 ? 0o755 : 0o700 }).catch(
    (err: NodeJS.ErrnoException) => {
      if (err.code !== "EEXIST") throw err;
    },
  );
  const controller = controllerOf(await walkPath(directory));
  if (controller.kind === "several" || (controller.kind === "user" && controller.uid !== uid)) {
    throw new ControlSocketError(
      `${directory} is not safe for the control socket: ${controller.why}; expected a directory only this user or root controls (HAPGENT_CONTROL_SOCKET)`,
    );
  }
}

/** Starts the control socket; a daemon without one still answers probes and signals. */
export async function startControl(
  path: string,
  uid: number,
  handlers: ControlHandlers,
  log: Logger,
): Promise<ControlServer | undefined> {
  try {
    await prepareSocketDirectory(path, uid);
    const control = createControlServer({ path, handlers });
    await control.listen();
    return control;
  } catch (err) {
    const why =
      err instanceof ControlSocketError ? err.message : `${path}: ${(err as Error).message}`;
    log.warning(
      `no control socket: ${why}; signals work, and commands fall back to them (without --wait)`,
    );
    return undefined;
  }
}
