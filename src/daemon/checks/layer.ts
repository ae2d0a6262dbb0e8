/**
 * The checks' layer of the reply (HAPGENT_CHECKS_FILE): the checks file read at start and on
 * HUP, its checks run, and each probe's answer composed from the operator's state and the failing
 * checks' verdicts (core/compose.ts). A checks file that cannot be used is a configuration error,
 * as a bad state file is: the agent answers MAINT until it is fixed. A read that fails for a
 * reason other than the file (EMFILE, EIO …) is no such error: the checks keep running as they
 * are, and the file is read again until it can be, as the state file is (commands.ts).
 */
import { NO_VERDICTS, UNUSABLE_VERDICTS, type Verdicts } from "../../core/compose.js";
import type { Logger } from "../../log.js";
import { isTransientReadError } from "../../store.js";
import { defaultReadRetryDelayMs } from "../operator.js";
import { type ChecksFileResult, loadChecksFile } from "./file.js";
import { keyOf } from "./key.js";
import { type Checks, type CheckView, createChecks } from "./runner.js";

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

export function createCheckLayer(
  path: string,
  uid: number,
  log: Logger,
  readRetryDelayMs: (attempts: number) => number = defaultReadRetryDelayMs,
): CheckLayer {
  let checks: Checks | undefined;
  let problem: string | undefined;
  // Bumped on every load and every change of a verdict: answers may differ.
  let version = 0;
  // What the running checks were made from: a file read again unchanged leaves them running.
  let loadedKey: string | undefined;
  let loading = Promise.resolve();
  let verdicts: { version: number; value: Verdicts } | undefined;
  // Whether the file was ever read (valid or not): before, a fault of the moment means MAINT.
  let read = false;
  let stopped = false;

  const current = (): Verdicts => {
    if (problem !== undefined) return UNUSABLE_VERDICTS;
    if (checks === undefined) return NO_VERDICTS;
    if (verdicts?.version !== version) verdicts = { version, value: checks.verdicts() };
    return verdicts.value;
  };

  /**
   * The file's checks, or why it cannot be used. A failure that is not about the file (EMFILE,
   * EIO …) says nothing of it: the checks keep running as they are (MAINT before the first read,
   * for want of the file) and it is read again, 0.1 s to 5 s apart, until it can be; the loads
   * asked for meanwhile wait behind. Undefined once the agent stops.
   */
  const readUntilRead = async (cause: string): Promise<ChecksFileResult | undefined> => {
    for (let failures = 0; !stopped; failures++) {
      const result = await loadChecksFile(path, uid);
      if (result.ok || !("code" in result) || !isTransientReadError(result.code)) {
        if (failures > 0) {
          log.notice(
            `${cause}: read the checks file ${path} after ${failures} failed attempt${failures === 1 ? "" : "s"}`,
          );
        }
        read = true;
        return result;
      }
      if (failures === 0) {
        const keeping = !read
          ? ""
          : problem === undefined
            ? "keeping its checks running and "
            : "still answering MAINT and ";
        log.warning(
          `${cause}: checks file ${path}: ${result.reason}, a fault of the moment, not of the file: ${keeping}reading it again until it can be read`,
        );
        if (!read) {
          problem = result.reason;
          version++;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, readRetryDelayMs(failures + 1)));
    }
    return undefined;
  };

  const load = async (cause: string): Promise<void> => {
    const result = await readUntilRead(cause);
    if (result === undefined) return;
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
      stopped = true;
      checks?.stop();
    },
  };
}
