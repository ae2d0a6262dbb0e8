/**
 * The checks' layer of the reply (HAPGENT_CHECKS_FILE): the checks file read at start and on
 * HUP, its checks run, and each probe's answer composed from the operator's state and the failing
 * checks' verdicts (core/compose.ts). A checks file that cannot be used is a configuration error,
 * as a bad state file is: the agent answers MAINT until it is fixed. A read that fails for a
 * reason other than the file (EMFILE, EIO …) is no such error: the checks keep running as they
 * are, and the file is read again until it can be, as the state file is (operator.ts).
 */
import { NO_VERDICTS, UNUSABLE_VERDICTS, type Verdicts } from "../../core/compose.js";
import type { Logger } from "../../log.js";
import { isTransientReadError } from "../../store.js";
import { defaultReadRetryDelayMs } from "../operator.js";
import { type ChecksFileResult, loadChecksFile } from "./file.js";
import { keyOf } from "./key.js";
import { type Checks, type CheckView, createChecks, type Kill } from "./runner.js";

export interface CheckLayer {
  /** The failing checks' verdicts now (MAINT for all while the checks file cannot be used). */
  verdicts(): Verdicts;
  /** Goes up whenever an answer may have changed: a verdict, a load. */
  generation(): number;
  views(): CheckView[];
  /** Why the checks file cannot be used, while it cannot. */
  readonly problem: string | undefined;
  /** (Re)reads the checks file; `cause` names it in the log. */
  load(cause: string): Promise<void>;
  stop(): void;
}

export interface CheckLayerOptions {
  /** The checks file. */
  readonly path: string;
  /** The agent's uid: who may control the file and the programs it names. */
  readonly uid: number;
  /** Ends a command's process group, as its checks need (kill(2)). */
  readonly kill: Kill;
  readonly log: Logger;
  readonly readRetryDelayMs?: (attempts: number) => number;
}

/** The layer as it is: the running checks, or why the file cannot be used. */
interface LayerState {
  readonly path: string;
  readonly uid: number;
  readonly kill: Kill;
  readonly log: Logger;
  readonly readRetryDelayMs: (attempts: number) => number;
  checks: Checks | undefined;
  problem: string | undefined;
  // Bumped on every load and every change of a verdict: answers may differ.
  generation: number;
  // What the running checks were made from: a file read again unchanged leaves them running.
  loadedKey: string | undefined;
  loading: Promise<void>;
  verdicts: { generation: number; value: Verdicts } | undefined;
  // Whether the file was ever read (valid or not): before, a fault of the moment means MAINT.
  read: boolean;
  stopped: boolean;
}

export function createCheckLayer({
  path,
  uid,
  kill,
  log,
  readRetryDelayMs = defaultReadRetryDelayMs,
}: CheckLayerOptions): CheckLayer {
  const layer: LayerState = {
    path,
    uid,
    kill,
    log,
    readRetryDelayMs,
    checks: undefined,
    problem: undefined,
    generation: 0,
    loadedKey: undefined,
    loading: Promise.resolve(),
    verdicts: undefined,
    read: false,
    stopped: false,
  };
  return {
    verdicts: () => current(layer),
    generation: () => layer.generation,
    views: () => layer.checks?.views() ?? [],
    get problem() {
      return layer.problem;
    },
    load(cause) {
      // Loads apply in the order they were asked for.
      layer.loading = layer.loading.then(() => load(layer, cause));
      return layer.loading;
    },
    stop() {
      layer.stopped = true;
      layer.checks?.stop();
    },
  };
}

function current(layer: LayerState): Verdicts {
  if (layer.problem !== undefined) return UNUSABLE_VERDICTS;
  if (layer.checks === undefined) return NO_VERDICTS;
  if (layer.verdicts?.generation !== layer.generation) {
    layer.verdicts = { generation: layer.generation, value: layer.checks.verdicts() };
  }
  return layer.verdicts.value;
}

/**
 * The file's checks, or why it cannot be used. A failure that is not about the file (EMFILE,
 * EIO …) says nothing of it: the checks keep running as they are (MAINT before the first read,
 * for want of the file) and it is read again, 0.1 s to 5 s apart, until it can be; the loads
 * asked for meanwhile wait behind. Undefined once the agent stops.
 */
async function readUntilRead(
  layer: LayerState,
  cause: string,
): Promise<ChecksFileResult | undefined> {
  const { path, log } = layer;
  for (let failures = 0; !layer.stopped; failures++) {
    const result = await loadChecksFile(path, layer.uid);
    if (result.ok || !("code" in result) || !isTransientReadError(result.code)) {
      if (failures > 0) {
        log.notice(
          `${cause}: read the checks file ${path} after ${failures} failed attempt${failures === 1 ? "" : "s"}`,
        );
      }
      layer.read = true;
      return result;
    }
    if (failures === 0) {
      const keeping = !layer.read
        ? ""
        : layer.problem === undefined
          ? "keeping its checks running and "
          : "still answering MAINT and ";
      log.warning(
        `${cause}: checks file ${path}: ${result.reason}, a fault of the moment, not of the file: ${keeping}reading it again until it can be read`,
      );
      if (!layer.read) {
        layer.problem = result.reason;
        layer.generation++;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, layer.readRetryDelayMs(failures + 1)));
  }
  return undefined;
}

async function load(layer: LayerState, cause: string): Promise<void> {
  const { path, log } = layer;
  const result = await readUntilRead(layer, cause);
  if (result === undefined) return;
  const key = result.ok ? keyOf(result.checks) : undefined;
  if (key !== undefined && key === layer.loadedKey && layer.checks !== undefined) {
    log.info(`${cause}: checks file ${path} unchanged; its checks keep running`);
    return;
  }
  const previous = layer.checks;
  previous?.stop();
  layer.checks = undefined;
  layer.loadedKey = key;
  layer.generation++;
  if (!result.ok) {
    layer.problem = result.reason;
    log.warning(
      `${cause}: checks file ${path}: ${result.reason}; answering MAINT until it is fixed and read again (HUP)`,
    );
    return;
  }
  layer.problem = undefined;
  // A check defined as before keeps its counters and its verdict.
  layer.checks = createChecks({
    checks: result.checks,
    log,
    uid: layer.uid,
    kill: layer.kill,
    previous,
    onChange: () => {
      layer.generation++;
    },
  });
  const names = result.checks.map((check) => check.name).join(", ");
  log.notice(
    `${cause}: loaded checks file ${path}: ${result.checks.length} check${result.checks.length === 1 ? "" : "s"}${names === "" ? "" : ` (${names})`}`,
  );
}
