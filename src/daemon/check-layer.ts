/**
 * The checks' layer of the reply (HAPGENT_CHECKS_FILE): the checks file read at start and on
 * HUP, its checks run, and each probe's answer composed from the operator's state and the failing
 * checks' verdicts (core/compose.ts). A checks file that cannot be used is a configuration error,
 * as a bad state file is: the agent answers MAINT until it is fixed.
 */
import { NO_VERDICTS, UNUSABLE_VERDICTS, type Verdicts } from "../core/compose.js";
import type { Logger } from "../log.js";
import { keyOf } from "./check-key.js";
import { type Checks, type CheckView, createChecks } from "./checks.js";
import { loadChecksFile } from "./checks-file.js";

export interface CheckLayer {
  /** The failing checks' verdicts now (MAINT for all while the checks file cannot be used). */
  verdicts(): Verdicts;
  /** Goes up whenever an answer may have changed: a verdict, a load. */
  version(): number;
  views(): CheckView[];
  /** Why the checks file cannot be used, while it cannot. */
  readonly problem: string | undefined;
  /** (Re)reads the checks file; `cause` names it in the log. */
  load(cause: string): Promise<void>;
  stop(): void;
}

export function createCheckLayer(path: string, uid: number, log: Logger): CheckLayer {
  let checks: Checks | undefined;
  let problem: string | undefined;
  // Bumped on every load and every change of a verdict: answers may differ.
  let version = 0;
  // What the running checks were made from: a file read again unchanged leaves them running.
  let loadedKey: string | undefined;
  let loading = Promise.resolve();
  let verdicts: { version: number; value: Verdicts } | undefined;

  const current = (): Verdicts => {
    if (problem !== undefined) return UNUSABLE_VERDICTS;
    if (checks === undefined) return NO_VERDICTS;
    if (verdicts?.version !== version) verdicts = { version, value: checks.verdicts() };
    return verdicts.value;
  };

  const load = async (cause: string): Promise<void> => {
    const result = await loadChecksFile(path, uid);
    const key = result.ok ? keyOf(result.checks) : undefined;
    if (key !== undefined && key === loadedKey && checks !== undefined) {
      log.info(`${cause}: checks file ${path} unchanged; its checks keep running`);
      return;
    }
    const previous = checks;
    previous?.stop();
    checks = undefined;
    loadedKey = key;
    version++;
    if (!result.ok) {
      problem = result.reason;
      log.warning(
        `${cause}: checks file ${path}: ${result.reason}; answering MAINT until it is fixed and read again (HUP)`,
      );
      return;
    }
    problem = undefined;
    // A check defined as before keeps its counters and its verdict.
    checks = createChecks({
      checks: result.checks,
      log,
      uid,
      previous,
      onChange: () => {
        version++;
      },
    });
    const names = result.checks.map((check) => check.name).join(", ");
    log.notice(
      `${cause}: loaded checks file ${path}: ${result.checks.length} check${result.checks.length === 1 ? "" : "s"}${names === "" ? "" : ` (${names})`}`,
    );
  };

  return {
    verdicts: current,
    version: () => version,
    views: () => checks?.views() ?? [],
    get problem() {
      return problem;
    },
    load(cause) {
      // Loads apply in the order they were asked for.
      loading = loading.then(() => load(cause));
      return loading;
    },
    stop() {
      checks?.stop();
    },
  };
}
