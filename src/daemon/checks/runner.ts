/**
 * The agent's own checks of its service: each runs every `interval`, is given `timeout`, and
 * counts passes and failures in a row as HAProxy counts a server's health: a check starts
 * passing but fails at its first failure until it has passed once (HAProxy's servers start "UP,
 * going down"); once it has passed, it fails after `fall` failures in a row, and a failing one
 * passes again after `rise` passes in a row. Only a change of a verdict is logged and wakes the
 * replies; probes read the last verdicts and never wait for a check.
 */
import { spawn } from "node:child_process";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect } from "node:net";
import type { CheckResult, CheckView } from "../../control-protocol.js";
import { type Check, statusFor, target } from "../../core/checks.js";
import { groupVerdicts, type Verdict } from "../../core/compose.js";
import { MAX_DESCRIPTION_CHARS } from "../../core/fields.js";
import { printable, type Status } from "../../core/state.js";
import type { Logger } from "../../log.js";
import { VERSION } from "../../version.js";
import { whyNotRunnable } from "./file.js";
import { keyOf } from "./key.js";

export type { CheckResult, CheckView };

export interface Checks {
  /** Goes up on every change of a verdict. */
  readonly generation: number;
  /** The counters of each check by its definition, for the checks that replace these. */
  carried(): ReadonlyMap<string, Carried>;
  /** The failing checks' verdicts: the instance's, and each service's. */
  verdicts(): {
    readonly instance: readonly Verdict[];
    readonly services: ReadonlyMap<string, readonly Verdict[]>;
  };
  views(): CheckView[];
  /** Stops every timer and kills every command still running. */
  stop(): void;
}

/** How long runs the agent cannot make (EMFILE …) leave a check's verdict as it was. */
export const NOT_RUN_MAX_MS = 30_000;

/** Runs one check once; never throws. */
export type Runner = (check: Check) => Promise<Omit<CheckResult, "atMs">>;

/** What a check defined as before keeps across a reload. */
export interface Carried {
  readonly passing: boolean;
  readonly confirmed: boolean;
  readonly verdict: Verdict | undefined;
  readonly last: CheckResult | undefined;
  readonly passes: number;
  readonly fails: number;
  readonly runs: number;
  readonly failedRuns: number;
}

/** Sends a signal to a process, or to a process group by its negative id, as kill(2) does. */
export type Kill = (pid: number, signal: NodeJS.Signals) => void;

export interface ChecksOptions {
  readonly checks: readonly Check[];
  readonly log: Logger;
  /** The agent's uid: a command's program is judged again before each run. */
  readonly uid: number;
  /** Ends a command's process group: at its timeout, at its exit, and at stop(). */
  readonly kill: Kill;
  /** The checks these replace: one defined the same keeps its counters. */
  readonly previous?: Checks | undefined;
  /** Told when a verdict changes. */
  readonly onChange?: () => void;
  /** For tests: how a check is run. */
  readonly run?: Runner;
  readonly now?: () => number;
}

/** One check's counters, and its timer. */
interface CheckState {
  readonly check: Check;
  readonly key: string;
  passing: boolean;
  // Passed at least once: until then the first failure fails it, as HAProxy does.
  confirmed: boolean;
  verdict: Verdict | undefined;
  last: CheckResult | undefined;
  passes: number;
  fails: number;
  runs: number;
  failedRuns: number;
  /** Since when runs are not made, for a fault of the agent's (logged once a streak). */
  faultedSinceMs: number | undefined;
  timer: NodeJS.Timeout | undefined;
}

/** The checks' counters, and what a run needs. */
interface ChecksState {
  readonly states: readonly CheckState[];
  readonly log: Logger;
  readonly onChange: () => void;
  readonly run: Runner;
  readonly now: () => number;
  generation: number;
  stopped: boolean;
}

/** Runs each check on its own timer, and keeps its counters and its verdict. */
export function createChecks({
  checks,
  log,
  uid,
  kill,
  previous,
  onChange = () => {},
  run = (check) => runCheckOnce(check, uid, kill),
  now = Date.now,
}: ChecksOptions): Checks {
  const kept = previous?.carried() ?? new Map<string, Carried>();
  const cs: ChecksState = {
    states: checks.map((check) => ({
      check,
      key: keyOf(check),
      passing: true,
      confirmed: false,
      verdict: undefined,
      last: undefined,
      passes: 0,
      fails: 0,
      runs: 0,
      failedRuns: 0,
      ...kept.get(keyOf(check)),
      faultedSinceMs: undefined,
      timer: undefined,
    })),
    log,
    onChange,
    run,
    now,
    generation: 0,
    stopped: false,
  };
  for (const s of cs.states) schedule(cs, s, 0);
  return {
    get generation() {
      return cs.generation;
    },
    carried: () => carried(cs),
    verdicts() {
      return groupVerdicts(
        cs.states.map((s) => ({ service: s.check.service, verdict: s.verdict })),
      );
    },
    views: () => views(cs),
    stop() {
      cs.stopped = true;
      for (const s of cs.states) clearTimeout(s.timer);
      for (const kill of running) kill();
    },
  };
}

function carried(cs: ChecksState): ReadonlyMap<string, Carried> {
  return new Map(
    cs.states.map((s) => [
      s.key,
      {
        passing: s.passing,
        confirmed: s.confirmed,
        verdict: s.verdict,
        last: s.last,
        passes: s.passes,
        fails: s.fails,
        runs: s.runs,
        failedRuns: s.failedRuns,
      },
    ]),
  );
}

function views(cs: ChecksState): CheckView[] {
  return cs.states.map((s) => ({
    name: s.check.name,
    service: s.check.service,
    target: target(s.check.action),
    passing: s.passing,
    verdict: s.verdict,
    last: s.last,
    passes: s.passes,
    fails: s.fails,
    rise: s.check.rise,
    fall: s.check.fall,
    runs: s.runs,
    failedRuns: s.failedRuns,
  }));
}

function schedule(cs: ChecksState, s: CheckState, delayMs: number): void {
  if (cs.stopped) return;
  s.timer = setTimeout(async () => {
    const started = cs.now();
    const result = await cs.run(s.check);
    if (cs.stopped) return;
    record(cs, s, { ...result, atMs: started });
    schedule(cs, s, Math.max(0, s.check.intervalMs - (cs.now() - started)));
  }, delayMs);
  // The agent's sockets keep the process; its checks alone do not.
  s.timer.unref();
}

/**
 * A run the agent could not make counts as nothing (undefined) for NOT_RUN_MAX_MS; after that,
 * each counts as a failure: a check nobody can run vouches for nothing.
 */
function counted(log: Logger, s: CheckState, result: CheckResult): CheckResult | undefined {
  const { name } = s.check;
  if (!result.agentFault) {
    if (s.faultedSinceMs !== undefined) log.notice(`check ${name}: runs again: ${result.detail}`);
    s.faultedSinceMs = undefined;
    return result;
  }
  if (s.faultedSinceMs === undefined) {
    s.faultedSinceMs = result.atMs;
    log.warning(
      `check ${name}: ${result.detail}; its verdict stands until it runs, for ${NOT_RUN_MAX_MS / 1000} s at most`,
    );
  }
  const forMs = result.atMs - s.faultedSinceMs;
  if (forMs < NOT_RUN_MAX_MS) return undefined;
  return { ...result, detail: `${result.detail} (${Math.round(forMs / 1000)} s)` };
}

function record(cs: ChecksState, s: CheckState, run: CheckResult): void {
  s.last = run;
  const result = counted(cs.log, s, run);
  if (result === undefined) return;
  s.last = result;
  s.runs++;
  const before = s.verdict;
  if (result.status === "UP" || result.status === "READY") passed(cs.log, s, result);
  else failed(cs.log, s, result);
  if (s.verdict !== before) {
    cs.generation++;
    cs.onChange();
  }
}

function passed(log: Logger, s: CheckState, result: CheckResult): void {
  const { check } = s;
  s.fails = 0;
  s.passes++;
  if (s.passing) s.confirmed = true;
  else if (s.passes >= check.rise) {
    s.passing = true;
    s.confirmed = true;
    s.verdict = undefined;
    log.notice(
      `check ${check.name}: passing again after ${s.passes} passes in a row: ${result.detail}`,
    );
  }
}

function failed(log: Logger, s: CheckState, result: CheckResult): void {
  const { check } = s;
  s.failedRuns++;
  s.passes = 0;
  s.fails++;
  if (s.passing && (s.fails >= check.fall || !s.confirmed)) s.passing = false;
  // The reply's words change only with the verdict's status, not with every run's detail
  // (a plugin's "91% full", then "92%"): status and the log show each run.
  if (!s.passing && s.verdict?.status !== result.status) {
    s.verdict = verdictOf(check, result, s.fails);
    log.warning(
      `check ${check.name}: failing (${result.status}) after ${s.fails} failure${s.fails === 1 ? "" : "s"} in a row: ${result.detail}`,
    );
  }
}

/** What HAProxy shows while a check fails: `check web: http://…/health: 503 for 3 checks`. */
function verdictOf(check: Check, result: CheckResult, count: number): Verdict {
  const text = printable(
    `check ${check.name}: ${result.detail} for ${count} check${count === 1 ? "" : "s"}`,
  );
  const chars = [...text];
  const description = (
    chars.length > MAX_DESCRIPTION_CHARS
      ? `${chars.slice(0, MAX_DESCRIPTION_CHARS - 3).join("")}...`
      : text
  ).trim();
  return Object.freeze({ status: result.status, description });
}

/**
 * Commands still running, by the function that kills them, of every set of checks in this process:
 * any set's stop() ends them all. The daemon keeps one set at a time (a reload stops the old one
 * before it starts the next).
 */
const running = new Set<() => void>();

/** Runs a check's action once, within its timeout. Never throws. */
export async function runCheckOnce(
  check: Check,
  uid: number,
  kill: Kill,
): Promise<Omit<CheckResult, "atMs">> {
  const started = performance.now();
  const outcome = await runAction(check, uid, kill);
  return {
    status: outcome.status,
    detail: shownDetail(outcome.detail),
    durationMs: Math.round((performance.now() - started) * 10) / 10,
    ...(outcome.agentFault ? { agentFault: true } : {}),
  };
}

type Outcome = { status: Status; detail: string; agentFault?: true };

/**
 * Errors of the agent's own resources of the moment, not of what a check checks: a socket or a
 * process that could not be made (no descriptor, no memory, a process limit).
 */
const AGENT_FAULTS = new Set(["EMFILE", "ENFILE", "ENOMEM", "ENOBUFS", "EAGAIN"]);

/** The outcome of an action that failed with `err`: a failure, or the agent's fault. */
function failedWith(check: Check, err: NodeJS.ErrnoException, detail: string): Outcome {
  if (err.code !== undefined && AGENT_FAULTS.has(err.code)) {
    return {
      status: statusFor(check, undefined),
      detail: `not run: ${err.code}`,
      agentFault: true,
    };
  }
  return { status: statusFor(check, undefined), detail };
}

/**
 * A run's detail holds what a program printed or a server said, which may hold terminal escapes
 * (`ESC[2J`), bells, NULs or line breaks; it reaches the log and `status`. Bound after escaping,
 * so a line of escapes cannot make it six times longer.
 */
const MAX_DETAIL_CHARS = 512;

/** `text` with control characters escaped (`\u001b`) and at most MAX_DETAIL_CHARS long. */
export function shownDetail(text: string): string {
  const shown = printable(text);
  const chars = [...shown];
  if (chars.length <= MAX_DETAIL_CHARS) return shown;
  const head = chars.slice(0, MAX_DETAIL_CHARS - 3).join("");
  // Never half an escape: `\u00` would read as something else.
  const cut = head.lastIndexOf("\\u");
  return `${cut >= 0 && cut > head.length - 6 ? head.slice(0, cut) : head}...`;
}

async function runAction(check: Check, uid: number, kill: Kill): Promise<Outcome> {
  const { action } = check;
  switch (action.kind) {
    case "http":
      return runHttp(check, action.url);
    case "tcp":
      return runTcp(check, action.host, action.port);
    case "exec":
    case "shell": {
      const argv = action.kind === "exec" ? action.argv : [SHELL, "-c", action.command];
      // Judged again before each run: what is on its path may have changed since the load.
      const refused = await whyNotRunnable(argv[0] ?? "", uid);
      if (refused !== undefined) {
        return { status: statusFor(check, undefined), detail: `not run: ${refused}` };
      }
      return runExec(check, argv, kill);
    }
  }
}

function runHttp(check: Check, url: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const request = url.startsWith("https:") ? httpsRequest : httpRequest;
    const failed = (why: string) =>
      resolve({ status: statusFor(check, undefined), detail: `${url}: ${why}` });
    const req = request(url, {
      method: "GET",
      agent: false,
      timeout: check.timeoutMs,
      headers: { "user-agent": `hapgent/${VERSION}`, connection: "close" },
    });
    const timer = setTimeout(() => {
      req.destroy();
      failed(`no answer within ${check.timeoutMs} ms`);
    }, check.timeoutMs);
    req.on("response", (res) => {
      clearTimeout(timer);
      const code = res.statusCode ?? 0;
      resolve({ status: statusFor(check, code), detail: `${url}: ${code}` });
      // The status line is the answer; the body is not read.
      res.destroy();
    });
    req.on("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(failedWith(check, err, `${url}: ${err.code ?? err.message}`));
    });
    req.end();
  });
}

function runTcp(check: Check, host: string, port: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const where = target(check.action);
    const socket = connect({ host, port });
    const done = (outcome: Outcome) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(
      () =>
        done({
          status: statusFor(check, undefined),
          detail: `${where}: no connection within ${check.timeoutMs} ms`,
        }),
      check.timeoutMs,
    );
    socket.on("connect", () => done({ status: "UP", detail: `${where}: connected` }));
    socket.on("error", (err: NodeJS.ErrnoException) =>
      done(failedWith(check, err, `${where}: ${err.code ?? err.message}`)),
    );
  });
}

/** The first line a command prints is its detail, as Nagios plugins do; more is not read. */
const MAX_OUTPUT_BYTES = 4096;
/** Only directories of the system's own packages: /usr/local may be writable by group staff. */
const COMMAND_PATH = "/usr/sbin:/usr/bin:/sbin:/bin";
/** After a command exits, how long what it printed may take to arrive. */
const OUTPUT_GRACE_MS = 100;
const SHELL = "/bin/sh";

function runExec(check: Check, argv: readonly string[], killGroup: Kill): Promise<Outcome> {
  return new Promise((resolve) => {
    const [file = "", ...args] = argv;
    let output = "";
    let settled = false;
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(file, args, {
        stdio: ["ignore", "pipe", "ignore"],
        // Its own process group, so a timeout ends whatever it started too.
        detached: true,
        cwd: "/",
        env: { PATH: COMMAND_PATH, LANG: "C.UTF-8", HAPGENT_CHECK: check.name },
      });
    } catch (err) {
      // Node throws rather than emits for some of the system's refusals (ENOMEM).
      const error = err as NodeJS.ErrnoException;
      resolve(failedWith(check, error, `cannot run ${file}: ${error.code ?? error.message}`));
      return;
    }
    const kill = () => {
      try {
        if (child.pid !== undefined) killGroup(-child.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    };
    running.add(kill);
    const finish = (outcome: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      running.delete(kill);
      resolve(outcome);
    };
    const timer = setTimeout(() => {
      kill();
      finish({
        status: statusFor(check, undefined),
        detail: `no exit within ${check.timeoutMs} ms (killed)`,
      });
    }, check.timeoutMs);
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      if (output.length < MAX_OUTPUT_BYTES)
        output += chunk.slice(0, MAX_OUTPUT_BYTES - output.length);
    });
    child.on("error", (err: NodeJS.ErrnoException) =>
      finish(failedWith(check, err, `cannot run ${file}: ${err.code ?? err.message}`)),
    );
    // The exit decides, not the end of its output: something it started may hold the pipe.
    // Whatever it left running is ended with it, so a check leaves nothing behind.
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    const exited = () => {
      if (exit === undefined) return;
      const line = output.split("\n", 1)[0]?.trim() ?? "";
      const said = line === "" ? "" : `: ${line}`;
      if (exit.code === null) {
        finish({ status: statusFor(check, undefined), detail: `killed by ${exit.signal}${said}` });
      } else {
        finish({ status: statusFor(check, exit.code), detail: `exit ${exit.code}${said}` });
      }
    };
    child.on("exit", (code, signal) => {
      exit = { code, signal };
      kill();
      // A process it started in a session of its own escapes the kill and may hold the pipe.
      setTimeout(() => {
        child.stdout?.destroy();
        exited();
      }, OUTPUT_GRACE_MS).unref();
    });
    child.on("close", exited);
  });
}
