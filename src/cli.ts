/**
 * The command line: inspect and change the running agent safely. State changes go through the
 * same rules (state.ts) and the same crash-safe save (store.ts) as the daemon's own.
 */
import { parseArgs } from "node:util";
import { findAgents, probeAddress, type RunningAgent, samePath } from "./agents.js";
import { type Config, parseConfig } from "./config.js";
import { createLogger } from "./log.js";
import { probeAgent } from "./probe.js";
import { reply } from "./reply.js";
import {
  FALLBACK_STATE,
  formatState,
  hasService,
  isServiceName,
  isStatus,
  MAX_SERVICE_NAME_CHARS,
  MAX_STATE_FILE_BYTES,
  type ServiceState,
  STATUSES,
  type Status,
  serialiseState,
  serviceState,
  validateState,
  withService,
} from "./state.js";
import { createStateStore } from "./store.js";
import { VERSION } from "./version.js";

/** Exit codes of the commands, one meaning each. */
export const CLI_EXIT = Object.freeze({
  OK: 0,
  INVALID_FILE: 1,
  USAGE: 2,
  NO_AGENT: 3,
  NOT_CONFIRMED: 4,
  CANNOT_WRITE: 5,
  SEVERAL_AGENTS: 6,
});

const SHORT_FORMS: Readonly<Record<string, Status>> = {
  up: "UP",
  down: "DOWN",
  ready: "READY",
  drain: "DRAIN",
  maint: "MAINT",
};

const COMMANDS = ["status", "set", "check", ...Object.keys(SHORT_FORMS)];

export function isCliCommand(arg: string | undefined): boolean {
  return arg !== undefined && COMMANDS.includes(arg);
}

export interface CliIo {
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly cwd: string;
  /** This process, never taken for a daemon. */
  readonly pid: number;
  readonly procRoot: string;
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  /** Sends SIGHUP; throws Node's error (EPERM, ESRCH). */
  readonly reload: (pid: number) => void;
}

const DEFAULT_TIMEOUT_S = 5;
const CONFIRM_POLL_MS = 50;
const PROBE_TIMEOUT_MS = 2000;

const OPTIONS = {
  help: { type: "boolean", short: "h" },
  json: { type: "boolean" },
  weight: { type: "string" },
  "no-weight": { type: "boolean" },
  maxconn: { type: "string" },
  "no-maxconn": { type: "boolean" },
  description: { type: "string" },
  "no-description": { type: "boolean" },
  service: { type: "string" },
  timeout: { type: "string" },
  "no-wait": { type: "boolean" },
  "state-file": { type: "string" },
  ip: { type: "string" },
  port: { type: "string" },
} as const;

type Option = keyof typeof OPTIONS;
type Values = { [K in Option]?: (typeof OPTIONS)[K]["type"] extends "boolean" ? boolean : string };

const TARGET: readonly Option[] = ["state-file", "ip", "port", "help"];
const CHANGE: readonly Option[] = [
  ...TARGET,
  "service",
  "weight",
  "no-weight",
  "maxconn",
  "no-maxconn",
  "description",
  "no-description",
  "timeout",
  "no-wait",
];
const ALLOWED: Readonly<Record<string, readonly Option[]>> = {
  status: [...TARGET, "json"],
  check: ["state-file", "help"],
  set: CHANGE,
};

const TARGET_HELP = `  --state-file PATH   state file (default: $HAPGENT_STATE_FILE, else the one the single
                      running hapgent serves, else /etc/hapgent/state.json)
  --ip ADDR           agent address to probe (default: the agent's own, else $HAPGENT_IP)
  --port N            agent port to probe (default: the agent's own, else $HAPGENT_PORT)`;

const EXIT_HELP = `Exit codes:
  0  done: applied and confirmed, the agent agrees with the file, or the file is valid
  1  the state file is invalid
  2  invalid command or input; nothing was written
  3  no running hapgent serves the state file (set: the file was written, nothing signalled)
  4  the agent did not confirm in time, or answers other than the file says
  5  the state file cannot be written
  6  several hapgent processes serve the state file; nothing was written`;

const HELP: Readonly<Record<string, string>> = {
  main: `Usage: hapgent [COMMAND] [OPTIONS]

Without a command, runs the agent: it answers HAProxy agent checks from the state file.
  HAPGENT_IP (default 0.0.0.0), HAPGENT_PORT (default 9777), HAPGENT_STATE_FILE
  (default /etc/hapgent/state.json) and HAPGENT_SEND_WAIT_MS (default 100: how long a probe
  may take to send its agent-send line when the file has services) configure it. Signals: USR1 sets UP, USR2 sets DOWN (both
  saved), HUP re-reads the file, TERM/INT stop.

Commands:
  status                 the file's state, the agent's live answers, and whether they agree
  set STATUS [OPTIONS]   validate, save, make the agent reload, confirm its answer
  up | down | ready | drain | maint [OPTIONS]
                         set UP, DOWN, READY, DRAIN or MAINT, keeping the other fields
  set … --service NAME   the same for one service (the state HAProxy's agent-send NAME gets)
  check [FILE]           validate a state file; changes nothing

Options: --help, --version; hapgent COMMAND --help for a command's options.

${EXIT_HELP}
`,
  status: `Usage: hapgent status [--json] [OPTIONS]

Shows the state in the file, what the live agent answers now (one probe of its port, and one
per service with the service's name as agent-send), and whether they agree.
  --json              one JSON object for scripts
${TARGET_HELP}

${EXIT_HELP}
`,
  set: `Usage: hapgent set STATUS [OPTIONS]
       hapgent up | down | ready | drain | maint [OPTIONS]

STATUS is one of ${STATUSES.join(", ")}. Fields not named keep their value from the current
file. Validates first (nothing is written on bad input), saves the file crash-safely, sends the
running agent SIGHUP, then probes it until it answers the new state.
  --service NAME                      set the state of service NAME (added if the file has
                                      none of that name), not the instance's; NAME is what
                                      HAProxy sends with agent-send, without the line end
  --weight N | --no-weight            weight percent 0-255, or remove it (100%)
  --maxconn N | --no-maxconn          maxconn 0-65535, or remove it
  --description TEXT | --no-description
                                      text HAProxy shows in its stats (1-200 characters)
  --timeout SECONDS                   how long to wait for the agent's answer (default ${DEFAULT_TIMEOUT_S})
  --no-wait                           do not wait for the answer
${TARGET_HELP}

${EXIT_HELP}
`,
  check: `Usage: hapgent check [FILE] [--state-file PATH]

Validates a state file with the agent's own rules and changes nothing. Prints the state when
it is valid, else the precise reason.

${EXIT_HELP}
`,
};

class UsageError extends Error {}

/** Runs one command; resolves with its exit code. */
export async function runCli(io: CliIo): Promise<number> {
  try {
    return await dispatch(io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`hapgent: ${err.message}\n`);
      return CLI_EXIT.USAGE;
    }
    throw err;
  }
}

async function dispatch(io: CliIo): Promise<number> {
  const [command = "", ...rest] = io.args;
  if (command === "--version" || command === "-V") {
    io.out(`hapgent ${VERSION}\n`);
    return CLI_EXIT.OK;
  }
  if (command === "--help" || command === "-h" || command === "help") {
    io.out(HELP.main ?? "");
    return CLI_EXIT.OK;
  }
  const kind = command in SHORT_FORMS ? "set" : command;
  const help = HELP[kind];
  if (!isCliCommand(command) || help === undefined) {
    throw new UsageError(`unknown command ${JSON.stringify(command)} (see hapgent --help)`);
  }
  const { values, positionals } = parse(rest, ALLOWED[kind] ?? [], command);
  if (values.help) {
    io.out(help);
    return CLI_EXIT.OK;
  }
  switch (kind) {
    case "status":
      expectPositionals(positionals, 0, command);
      return status(io, values);
    case "check":
      expectPositionals(positionals, 1, command);
      return check(io, values, positionals[0]);
    default: {
      const short = SHORT_FORMS[command];
      if (short) {
        expectPositionals(positionals, 0, command);
        return set(io, values, short);
      }
      expectPositionals(positionals, 1, command);
      const [word] = positionals;
      if (word === undefined)
        throw new UsageError(`set needs a STATUS: one of ${STATUSES.join(", ")}`);
      const upper = word.toUpperCase();
      if (!isStatus(upper)) {
        throw new UsageError(
          `status must be one of ${STATUSES.join(", ")}, got ${JSON.stringify(word)}`,
        );
      }
      return set(io, values, upper);
    }
  }
}

function parse(args: readonly string[], allowed: readonly Option[], command: string) {
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({
      args: [...args],
      options: OPTIONS,
      strict: true,
      allowPositionals: true,
    }) as {
      values: Values;
      positionals: string[];
    };
  } catch (err) {
    throw new UsageError(`${(err as Error).message} (see hapgent ${command} --help)`);
  }
  for (const name of Object.keys(parsed.values) as Option[]) {
    if (!allowed.includes(name)) {
      throw new UsageError(
        `--${name} is not an option of ${command} (see hapgent ${command} --help)`,
      );
    }
  }
  for (const field of ["weight", "maxconn", "description"] as const) {
    if (parsed.values[field] !== undefined && parsed.values[`no-${field}`]) {
      throw new UsageError(`--${field} and --no-${field} contradict each other`);
    }
  }
  return parsed;
}

function expectPositionals(positionals: readonly string[], max: number, command: string): void {
  if (positionals.length > max) {
    throw new UsageError(
      `unexpected argument ${JSON.stringify(positionals[max])} (see hapgent ${command} --help)`,
    );
  }
}

interface Target {
  readonly config: Config;
  /** Daemons serving the file, by pid. */
  readonly agents: readonly number[];
  /** Daemons whose environment could not be read, with why. */
  readonly unknown: readonly string[];
  readonly probeHost: string;
  readonly probePort: number;
}

/** The CLI's flags, then the environment, name the state file and address; flags win. */
function configure(io: CliIo, values: Values): { config: Config; fileNamed: boolean } {
  const env: Record<string, string | undefined> = { ...io.env };
  const flags: [Option, string][] = [
    ["state-file", "HAPGENT_STATE_FILE"],
    ["ip", "HAPGENT_IP"],
    ["port", "HAPGENT_PORT"],
  ];
  for (const [flag, variable] of flags) {
    const value = values[flag];
    if (typeof value === "string") {
      if (value === "") throw new UsageError(`--${flag} needs a value`);
      env[variable] = value;
    }
  }
  const parsed = parseConfig(env, io.cwd);
  if (!parsed.ok) {
    let reason = parsed.reason;
    for (const [flag, variable] of flags) {
      if (typeof values[flag] === "string") reason = reason.replace(`${variable}=`, `--${flag} `);
    }
    throw new UsageError(reason);
  }
  return { config: parsed.config, fileNamed: Boolean(env.HAPGENT_STATE_FILE) };
}

async function findTarget(io: CliIo, values: Values): Promise<Target> {
  let { config, fileNamed } = configure(io, values);
  const found = await findAgents(io.procRoot, io.pid);
  const readable = found.filter((a): a is Extract<RunningAgent, { readable: true }> => a.readable);
  const unknown = found
    .filter((a): a is Extract<RunningAgent, { readable: false }> => !a.readable)
    .map((a) => `hapgent pid ${a.pid}: ${a.reason}`);
  // A deploy script on a host with one hapgent need not know where its file is.
  const only = readable[0];
  if (!fileNamed && readable.length === 1 && only)
    config = { ...config, stateFile: only.config.stateFile };
  const serving: typeof readable = [];
  for (const agent of readable) {
    if (await samePath(agent.config.stateFile, config.stateFile)) serving.push(agent);
  }
  const single = serving.length === 1 ? serving[0] : undefined;
  const address =
    single && values.ip === undefined && values.port === undefined ? single.config : config;
  return {
    config,
    agents: serving.map((a) => a.pid),
    unknown,
    probeHost: probeAddress(address.host),
    probePort: address.port,
  };
}

/** A probe asks for the instance with an empty line, so an agent with services answers at once. */
const INSTANCE_PAYLOAD = "\n";

interface ServiceCheck {
  readonly name: string;
  readonly state: ServiceState;
  readonly expected: string;
  readonly answer: string | undefined;
  readonly error: string | undefined;
}

async function ask(
  target: Target,
  payload: string,
): Promise<{ answer: string | undefined; error: string | undefined }> {
  return probeAgent(target.probeHost, target.probePort, { payload }).then(
    (answer) => ({ answer, error: undefined }),
    (err: Error) => ({
      answer: undefined,
      error: (err as NodeJS.ErrnoException).code ?? err.message,
    }),
  );
}

async function status(io: CliIo, values: Values): Promise<number> {
  const target = await findTarget(io, values);
  const store = createStateStore(target.config.stateFile, cliLogger(io));
  const file = await store.load();
  const expected = reply(file.ok ? file.state : FALLBACK_STATE);
  const live = await ask(target, INSTANCE_PAYLOAD);
  // Each service is asked as HAProxy asks it; once the agent does not answer, none is asked.
  const services: ServiceCheck[] = [];
  for (const name of file.ok ? Object.keys(file.state.services ?? {}) : []) {
    if (!file.ok) break;
    const asked =
      live.answer === undefined
        ? { answer: undefined, error: live.error }
        : await ask(target, `${name}\n`);
    services.push({
      name,
      state: file.state.services?.[name] as ServiceState,
      expected: reply(serviceState(file.state, name)),
      ...asked,
    });
  }
  const agree =
    live.answer === expected && services.every((service) => service.answer === service.expected);
  const code = !file.ok
    ? CLI_EXIT.INVALID_FILE
    : live.answer === undefined
      ? CLI_EXIT.NO_AGENT
      : agree
        ? CLI_EXIT.OK
        : CLI_EXIT.NOT_CONFIRMED;
  const address = formatAddress(target.probeHost, target.probePort);
  if (values.json) {
    io.out(
      `${JSON.stringify({
        stateFile: target.config.stateFile,
        file: file.ok ? { valid: true, state: file.state } : { valid: false, reason: file.reason },
        expectedReply: expected.trimEnd(),
        agents: target.agents,
        address,
        reply: live.answer?.trimEnd() ?? null,
        error: live.error ?? null,
        services: services.map((service) => ({
          name: service.name,
          state: service.state,
          expectedReply: service.expected.trimEnd(),
          reply: service.answer?.trimEnd() ?? null,
          error: service.error ?? null,
          agree: service.answer === service.expected,
        })),
        agree,
      })}\n`,
    );
    return code;
  }
  const answered = (answer: string | undefined, error: string | undefined) =>
    answer === undefined ? `no answer (${error})` : answer.trimEnd();
  const lines = [
    `state file  ${target.config.stateFile}: ${file.ok ? formatState(file.state) : `INVALID: ${file.reason}`}`,
    `expected    ${expected.trimEnd()}${file.ok ? "" : " (the agent falls back to MAINT on HUP or start)"}`,
    `agent       ${agentsText(target.agents)} at ${address}: ${answered(live.answer, live.error)}`,
    ...services.map(
      (service) =>
        `service     ${service.name}: expected ${service.expected.trimEnd()}, agent ${answered(service.answer, service.error)}${service.answer === service.expected ? "" : " (DIFFERS)"}`,
    ),
    ...target.unknown.map((text) => `note        ${text}`),
    agree ? "agreement   yes" : "agreement   NO",
  ];
  io.out(`${lines.join("\n")}\n`);
  return code;
}

async function set(io: CliIo, values: Values, statusValue: Status): Promise<number> {
  const timeoutS = values.timeout === undefined ? DEFAULT_TIMEOUT_S : Number(values.timeout);
  if (!(timeoutS > 0 && timeoutS <= 3600)) {
    throw new UsageError(
      `--timeout must be a number of seconds, 0-3600, got ${JSON.stringify(values.timeout)}`,
    );
  }
  const target = await findTarget(io, values);
  const path = target.config.stateFile;
  const store = createStateStore(path, cliLogger(io));
  const current = await store.load();
  if (!current.ok && current.reason !== "does not exist") {
    io.err(
      `hapgent: the current state file ${path} is invalid (${current.reason}); it will be replaced\n`,
    );
  }
  const service = values.service;
  if (service !== undefined && !isServiceName(service)) {
    throw new UsageError(
      `--service must be 1-${MAX_SERVICE_NAME_CHARS} printable ASCII characters without spaces, as HAProxy sends it with agent-send (without the line end), got ${JSON.stringify(service)}`,
    );
  }
  if (service !== undefined && !current.ok) {
    io.err(
      `hapgent: ${path} has no valid instance state to add service ${service} to; set the instance first (e.g. hapgent up); nothing was written\n`,
    );
    return CLI_EXIT.INVALID_FILE;
  }
  const base: Partial<ServiceState> = !current.ok
    ? {}
    : service === undefined
      ? current.state
      : hasService(current.state, service)
        ? (current.state.services?.[service] ?? {})
        : {};
  const candidate: Record<string, unknown> = { status: statusValue };
  for (const field of ["weight", "maxconn", "description"] as const) {
    const given = values[field];
    if (values[`no-${field}`]) continue;
    if (given !== undefined)
      candidate[field] = field === "description" ? given : numberOrText(given);
    else if (base[field] !== undefined) candidate[field] = base[field];
  }
  const validated = validateState(candidate);
  if (!validated.ok) {
    const where = service === undefined ? "" : `services[${JSON.stringify(service)}]: `;
    io.err(`hapgent: ${where}${validated.reason}; nothing was written\n`);
    return CLI_EXIT.USAGE;
  }
  const state =
    service !== undefined && current.ok
      ? withService(current.state, service, validated.state)
      : current.ok && current.state.services !== undefined
        ? { ...validated.state, services: current.state.services }
        : validated.state;
  // The whole file is checked as the agent will read it (the number of services, the size).
  const text = serialiseState(state);
  const reread = validateState(JSON.parse(text));
  if (!reread.ok || Buffer.byteLength(text) > MAX_STATE_FILE_BYTES) {
    io.err(
      `hapgent: the state file would be invalid: ${reread.ok ? `larger than ${MAX_STATE_FILE_BYTES} bytes` : reread.reason}; nothing was written\n`,
    );
    return CLI_EXIT.USAGE;
  }
  if (target.agents.length > 1) {
    io.err(
      `hapgent: several hapgent processes serve ${path} (pids ${target.agents.join(", ")}); nothing was written. Stop all but one.\n`,
    );
    return CLI_EXIT.SEVERAL_AGENTS;
  }
  try {
    await store.save(reread.state);
  } catch (err) {
    io.err(`hapgent: cannot write ${path}: ${(err as Error).message}\n`);
    return CLI_EXIT.CANNOT_WRITE;
  }
  io.out(`wrote ${path}: ${formatState(reread.state)}\n`);
  if (service !== undefined && !["UP", "READY"].includes(reread.state.status)) {
    io.out(
      `note: the instance is ${reread.state.status}, so every service answers its state until it is UP or READY\n`,
    );
  }
  const [pid] = target.agents;
  if (pid === undefined) {
    for (const text of target.unknown) io.err(`hapgent: ${text}\n`);
    io.err(
      `hapgent: no running hapgent serves ${path}, so none was signalled; the next start loads it\n`,
    );
    return CLI_EXIT.NO_AGENT;
  }
  try {
    io.reload(pid);
  } catch (err) {
    io.err(
      `hapgent: cannot signal hapgent pid ${pid}: ${(err as NodeJS.ErrnoException).code ?? err}\n`,
    );
    return CLI_EXIT.NO_AGENT;
  }
  if (values["no-wait"]) {
    io.out(`signalled hapgent pid ${pid} to reload\n`);
    return CLI_EXIT.OK;
  }
  const expected = reply(serviceState(reread.state, service));
  const payload = service === undefined ? INSTANCE_PAYLOAD : `${service}\n`;
  const deadline = Date.now() + timeoutS * 1000;
  let last = "no answer";
  for (;;) {
    // A probe never outlives the deadline by much: a stopped agent accepts and says nothing.
    const timeoutMs = Math.max(50, Math.min(PROBE_TIMEOUT_MS, deadline - Date.now()));
    const answer = await probeAgent(target.probeHost, target.probePort, {
      timeoutMs,
      payload,
    }).catch((err: NodeJS.ErrnoException) => ({ failed: err.code ?? err.message }));
    if (answer === expected) {
      const whom = service === undefined ? "" : ` ${service}`;
      io.out(`hapgent pid ${pid} answers${whom}: ${expected.trimEnd()}\n`);
      return CLI_EXIT.OK;
    }
    last =
      typeof answer === "string"
        ? `it answers ${JSON.stringify(answer.trimEnd())}`
        : `no answer (${answer.failed})`;
    if (Date.now() >= deadline) break;
    await new Promise((resolve) => setTimeout(resolve, CONFIRM_POLL_MS));
  }
  io.err(
    `hapgent: hapgent pid ${pid} did not confirm within ${timeoutS} s: at ${formatAddress(target.probeHost, target.probePort)} ${last}; expected ${JSON.stringify(expected.trimEnd())}\n`,
  );
  return CLI_EXIT.NOT_CONFIRMED;
}

async function check(io: CliIo, values: Values, file: string | undefined): Promise<number> {
  const path = file === undefined ? configure(io, values).config.stateFile : file;
  const result = await createStateStore(path, cliLogger(io)).load();
  if (result.ok) {
    io.out(`${path}: valid: ${formatState(result.state)}\n`);
    return CLI_EXIT.OK;
  }
  io.err(`${path}: ${result.reason}\n`);
  return CLI_EXIT.INVALID_FILE;
}

/** Numbers as numbers so the state rules judge them; anything else stays text and is refused. */
function numberOrText(text: string): number | string {
  return /^-?[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : text;
}

function agentsText(pids: readonly number[]): string {
  if (pids.length === 0) return "no hapgent process found for this file; probed";
  if (pids.length === 1) return `hapgent pid ${pids[0]}`;
  return `SEVERAL hapgent processes (pids ${pids.join(", ")}); probed`;
}

function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

function cliLogger(io: CliIo) {
  return createLogger({ write: io.err, journal: false });
}
