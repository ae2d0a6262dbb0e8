/** `hapgent status`: the file's state, what the live agent answers, and whether they agree. */

import { formatAddress } from "../config.js";
import type {
  ChecksView,
  CheckView,
  FleetView,
  PollerView,
  StatusReply,
} from "../control-protocol.js";
import { reply } from "../core/reply.js";
import {
  FALLBACK_STATE,
  formatAnswered,
  formatState,
  hasService,
  printable,
  type ServiceState,
  type State,
} from "../core/state.js";
import { silentLogger } from "../log.js";
import { createStateStore, type LoadResult } from "../store.js";
import type { Values } from "./args.js";
import { request } from "./control.js";
import { CLI_EXIT } from "./exit.js";
import { answerWith } from "./expected.js";
import { describeHistory } from "./history.js";
import type { CliIo } from "./io.js";
import { type Asked, ask, INSTANCE_PAYLOAD, servicePayload } from "./probe.js";
import { findTarget, type Target } from "./target.js";

interface ServiceView {
  readonly name: string;
  readonly state: ServiceState;
  readonly expected: string;
  readonly asked: Asked;
}

export async function status(io: CliIo, values: Values): Promise<number> {
  const target = await findTarget(io, values, "read");
  const daemon = await daemonStatus(target);
  const file = await createStateStore(target.config.stateFile, silentLogger, io).load();
  const last = recorded(file, daemon);
  const history = last === undefined ? undefined : describeHistory(last, Date.now());
  // What the agent should answer: the file's state, with its checks' verdicts when it has any.
  const answering = file.ok ? file.state : FALLBACK_STATE;
  const expected = reply(answerWith(answering, undefined, daemon));
  // The same without the fleet's word: which layer decided.
  const checksOnly = reply(answerWith(answering, undefined, { ...daemon, fleet: null }));
  const live = await ask(target.probeHost, target.probePort, INSTANCE_PAYLOAD);
  const services = file.ok ? await askServices(target, answering, live, daemon) : [];
  // Something else may listen on the port when no daemon serves the file: its word is no agreement.
  // HAProxy holds the last maxconn it heard: a reply without one does not bring haproxy.cfg's back.
  const agree =
    target.agents.length > 0 &&
    live.answer === expected &&
    services.every((service) => service.asked.answer === service.expected) &&
    !(daemon?.pollers ?? []).some((p) => typeof p.keptMaxconn === "number");
  // Two agents answer from one file in turns: whatever they say now, that is the problem.
  const code =
    target.agents.length > 1
      ? CLI_EXIT.SEVERAL_AGENTS
      : !file.ok
        ? CLI_EXIT.INVALID_FILE
        : live.answer === undefined || target.agents.length === 0
          ? CLI_EXIT.NO_AGENT
          : agree
            ? CLI_EXIT.OK
            : CLI_EXIT.NOT_CONFIRMED;
  const view: View = {
    target,
    file,
    expected,
    fileOnly: reply(file.ok ? file.state : FALLBACK_STATE),
    checksOnly,
    live,
    services,
    agree,
    daemon,
    history,
  };
  io.out(values.json ? `${JSON.stringify(asJson(view))}\n` : asText(view));
  return code;
}

/** Each service is asked as HAProxy asks it; once the agent does not answer, none is asked. */
async function askServices(
  target: Target,
  state: State,
  live: Asked,
  checks: Partial<ChecksView> | undefined,
): Promise<ServiceView[]> {
  const views: ServiceView[] = [];
  for (const [name, service] of Object.entries(state.services ?? {})) {
    const asked =
      live.answer === undefined
        ? live
        : await ask(target.probeHost, target.probePort, servicePayload(name));
    const expected = reply(answerWith(state, name, checks));
    views.push({ name, state: service, expected, asked });
  }
  return views;
}

/** The load balancers polling, from the daemon's control socket; undefined without one. */
async function daemonStatus(target: Target): Promise<StatusReply | undefined> {
  if (target.socket.path === undefined) return undefined;
  const reply = await request(target.socket.path, { op: "status" }, 2000).catch(() => undefined);
  return reply as StatusReply | undefined;
}

interface View {
  readonly target: Target;
  readonly file: LoadResult;
  readonly expected: string;
  /** The file's own answer, before the checks and the fleet; and with the checks alone. */
  readonly fileOnly: string;
  readonly checksOnly: string;
  readonly live: Asked;
  readonly services: readonly ServiceView[];
  readonly agree: boolean;
  /** What the daemon said through its control socket: the load balancers, the checks. */
  readonly daemon: Partial<StatusReply> | undefined;
  /** The last change and a pending expiry, as one line. */
  readonly history: string | undefined;
}

/** The state whose record to show: the daemon's, which may hold one the file has not yet (a hand
 * edit read again), else the file's. */
function recorded(file: LoadResult, daemon: Partial<StatusReply> | undefined): State | undefined {
  return daemon?.state ?? (file.ok ? file.state : undefined);
}

function asJson({ target, file, expected, live, services, agree, daemon, history }: View) {
  return {
    stateFile: target.config.stateFile,
    file: file.ok ? { valid: true, state: file.state } : { valid: false, reason: file.reason },
    changed: recorded(file, daemon)?.changed ?? null,
    expires: recorded(file, daemon)?.expires ?? null,
    history: history ?? null,
    expectedReply: expected.trimEnd(),
    agents: target.agents,
    address: formatAddress(target.probeHost, target.probePort),
    reply: live.answer?.trimEnd() ?? null,
    error: live.error ?? null,
    services: services.map((service) => ({
      name: service.name,
      state: service.state,
      expectedReply: service.expected.trimEnd(),
      reply: service.asked.answer?.trimEnd() ?? null,
      error: service.asked.error ?? null,
      agree: service.asked.answer === service.expected,
    })),
    loadBalancers: daemon?.pollers ?? null,
    checks: daemon?.checks ?? null,
    checksProblem: daemon?.checksProblem ?? null,
    fleet: daemon?.fleet ?? null,
    agree,
  };
}

function asText(view: View): string {
  const { target, file, expected, fileOnly, checksOnly, live, services, agree, daemon, history } =
    view;
  const address = formatAddress(target.probeHost, target.probePort);
  const lines = [
    `state file  ${target.config.stateFile}: ${file.ok ? formatState(file.state) : `INVALID: ${file.reason}`}`,
    ...(history === undefined ? [] : [`changed     ${history}`]),
    `expected    ${expected.trimEnd()}${file.ok ? "" : " (the agent falls back to MAINT on HUP or start)"}`,
    `agent       ${agentsText(target.agents)} at ${address}: ${answered(live)}`,
    ...services.map(
      (service) =>
        `service     ${service.name}: expected ${service.expected.trimEnd()}, agent ${answered(service.asked)}${service.asked.answer === service.expected ? "" : " (DIFFERS)"}`,
    ),
    ...checkLines(daemon?.checks, daemon?.checksProblem ?? null, file.ok ? file.state : undefined),
    ...fleetLines(daemon?.fleet ?? null, Date.now()),
    ...decidedLines(fileOnly, checksOnly, expected),
    ...pollerLines(daemon?.pollers),
    ...keptMaxconnLines(daemon?.pollers, file.ok ? file.state : undefined),
    ...target.notes.map((text) => `note        ${text}`),
    agree ? "agreement   yes" : "agreement   NO",
  ];
  return `${lines.join("\n")}\n`;
}

/** Which layers made the answer differ from the file's own, and what the file alone says. */
function decidedLines(fileOnly: string, checksOnly: string, expected: string): string[] {
  if (fileOnly === expected) return [];
  const who = [
    ...(checksOnly === fileOnly ? [] : ["the checks"]),
    ...(checksOnly === expected ? [] : ["the fleet"]),
  ];
  return [
    `note        ${who.join(" and ")} decide${who.length === 1 && who[0] === "the fleet" ? "s" : ""}: the file alone would answer ${fileOnly.trimEnd()}`,
  ];
}

/** The fleet's word and how fresh it is; nothing without HAPGENT_ETCD_ENDPOINTS. */
function fleetLines(fleet: FleetView | null, nowMs: number): string[] {
  if (fleet === null) return [];
  const word =
    fleet.word === null
      ? `no word (none of ${fleet.keys.join(", ")} exists)`
      : `${formatAnswered(fleet.word.state)} from ${fleet.word.key} (revision ${fleet.word.revision})${fleet.fromCache ? ", from the cache" : ""}`;
  const heard =
    fleet.heardAgoMs === null ? "never heard from etcd" : `heard ${ago(fleet.heardAgoMs)}`;
  const link = fleet.connected
    ? `etcd ${fleet.endpoint} watched, ${heard}`
    : fleet.lostAt === null
      ? `etcd ${fleet.endpoint} not watched yet, ${heard}`
      : `etcd UNREACHABLE since ${fleet.lostAt} (${ago(nowMs - Date.parse(fleet.lostAt))}): ${printable(fleet.lostReason ?? "")}; the last word stands, ${heard}`;
  return [
    `fleet       ${printable(word)}; ${link}`,
    ...(fleet.problem === null ? [] : [`fleet       NOT FOLLOWED: ${printable(fleet.problem)}`]),
  ];
}

/** 4.2 s ago, 3m ago, 2h ago. */
function ago(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 120) return `${s.toFixed(1)} s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

function checkLines(
  checks: readonly CheckView[] | undefined,
  problem: string | null,
  state: State | undefined,
): string[] {
  if (problem !== null) {
    return [`checks      UNUSABLE: ${printable(problem)}; the agent answers MAINT`];
  }
  const lines = (checks ?? []).map((c) => {
    const rules =
      c.service === undefined
        ? ""
        : state !== undefined && hasService(state, c.service)
          ? ` for ${c.service}`
          : ` for ${c.service} (the state file names no such service: no effect)`;
    const result =
      c.last === undefined
        ? "not run yet"
        : `last ${printable(c.last.detail)} in ${c.last.durationMs} ms, ${((Date.now() - c.last.atMs) / 1000).toFixed(1)} s ago`;
    const now = c.passing ? "passing" : `FAILING (${c.verdict?.status ?? "?"})`;
    return `check       ${c.name}${rules}: ${now}; ${result}; passes ${c.passes}/${c.rise}, failures ${c.fails}/${c.fall}`;
  });
  return lines;
}

function pollerLines(pollers: readonly PollerView[] | undefined): string[] {
  if (pollers === undefined) return [];
  if (pollers.length === 0) return ["polled by   no load balancer"];
  return pollers.map((p) => {
    const every =
      p.intervalMs === null ? "once so far" : `every ${(p.intervalMs / 1000).toFixed(1)} s`;
    const heard =
      p.heard === null ? "has heard nothing yet" : `heard ${JSON.stringify(printable(p.heard))}`;
    return `polled by   ${p.address}${p.service === "" ? "" : ` (${p.service})`}: ${every}, last ${(p.lastProbeAgoMs / 1000).toFixed(1)} s ago, ${heard}${p.current ? "" : " (NOT the current state)"}`;
  });
}

/** Each load balancer that keeps a maxconn the reply no longer says, and the command to fix it. */
function keptMaxconnLines(
  pollers: readonly PollerView[] | undefined,
  state: State | undefined,
): string[] {
  return (pollers ?? []).flatMap((p) => {
    const kept = p.keptMaxconn;
    if (typeof kept !== "number") return [];
    // A service the file does not name is answered the instance's reply.
    const named = p.service !== "" && state !== undefined && hasService(state, p.service);
    const status = (named ? state.services?.[p.service] : state)?.status ?? "STATUS";
    const set = `hapgent set ${status}${named ? ` --service ${p.service}` : ""}`;
    const fix =
      kept === 0
        ? `${set} --maxconn N says the limit you want, --maxconn 0 (or --no-maxconn) agrees with none`
        : `${set} --maxconn 0 (or --no-maxconn) lifts it`;
    const where = `${p.address}${p.service === "" ? "" : ` (${p.service})`}`;
    return [
      `note        ${printable(where)} HOLDS maxconn:${kept}${kept === 0 ? " (no limit)" : ""} from an earlier reply: the reply says no maxconn, which HAProxy does not read as haproxy.cfg's; ${printable(fix)}`,
    ];
  });
}

/** What was answered, as text safe for a terminal: whoever listens chose these bytes. */
function answered(asked: Asked): string {
  return asked.answer === undefined
    ? `no answer (${asked.error})`
    : printable(asked.answer.trimEnd());
}

function agentsText(pids: readonly number[]): string {
  if (pids.length === 0) {
    return "no hapgent process found for this file; whatever listens";
  }
  if (pids.length === 1) return `hapgent pid ${pids[0]}`;
  return `SEVERAL hapgent processes (pids ${pids.join(", ")}); probed`;
}
