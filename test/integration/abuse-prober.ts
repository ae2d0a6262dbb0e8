/**
 * The abuse tests' well-behaved prober, as HAProxy is: a client of its own. Run as a worker
 * thread, its connections are never delayed by the storm the test's main thread drives (a probe
 * whose line came late would rightly be answered without it, and fail the test for the wrong
 * reason).
 */
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { isMainThread, parentPort, workerData } from "node:worker_threads";

/** One good probe: connect, send HAProxy's payload, read to the end. */
export function goodProbe(port: number, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    let received = "";
    socket.setEncoding("utf8");
    socket.setTimeout(3000, () => socket.destroy(new Error("no answer in 3 s")));
    socket.on("connect", () => socket.write(payload));
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.on("end", () => socket.end());
    socket.on("close", () => resolve(received));
    socket.on("error", reject);
  });
}

export interface ProberData {
  readonly port: number;
  readonly probes: readonly (readonly [payload: string, expected: string])[];
  /** One Int32 the prober adds each right answer to, for the test to read as it goes. */
  readonly answered: SharedArrayBuffer;
}

export interface ProberResults {
  ok: number;
  wrong: string[];
}

/** In the worker: probes in turn until told to stop, then posts what it got. */
async function probeUntilStopped({ port, probes, answered }: ProberData): Promise<void> {
  const live = new Int32Array(answered);
  let stop = false;
  parentPort?.once("message", () => {
    stop = true;
  });
  const results: ProberResults = { ok: 0, wrong: [] };
  for (let i = 0; !stop; i++) {
    const [payload, expected] = probes[i % probes.length] ?? ["", ""];
    const answer = await goodProbe(port, payload).catch((err: Error) => `(${err.message})`);
    if (answer === expected) {
      results.ok++;
      Atomics.add(live, 0, 1);
    } else results.wrong.push(answer);
    await sleep(2);
  }
  parentPort?.postMessage(results);
}

if (!isMainThread && parentPort !== null) void probeUntilStopped(workerData as ProberData);
