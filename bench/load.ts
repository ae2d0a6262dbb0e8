/**
 * One probe from Node, as HAProxy makes it (connect, optionally send the agent-send payload, read
 * the line, close), for the measurements that need a probe at a given moment rather than load:
 * start-up and signal to reply. The load itself comes from loadgen.c.
 */
import { connect } from "node:net";

export interface ProbeTarget {
  readonly host: string;
  readonly port: number;
  /** Sent right after connecting, as HAProxy's agent-send does; none when undefined. */
  readonly payload?: string | undefined;
  /** The line every reply must be. */
  readonly expect: string;
  /** The address to probe from (any of 127.0.0.0/8 on loopback), as another load balancer. */
  readonly localAddress?: string | undefined;
}

/**
 * One probe. Resolves with the time in ms from `startedAt` (a performance.now() value) to the
 * complete reply line, or rejects. The socket is closed by the client once the agent has ended.
 */
export function probeOnce(target: ProbeTarget, startedAt = performance.now()): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: target.host,
      port: target.port,
      ...(target.localAddress === undefined ? {} : { localAddress: target.localAddress }),
    });
    let received = "";
    let lineAt = 0;
    socket.setEncoding("latin1");
    socket.setTimeout(5000, () => socket.destroy(new Error("timed out")));
    if (target.payload !== undefined) socket.write(target.payload);
    socket.on("data", (chunk: string) => {
      received += chunk;
      if (lineAt === 0 && received.includes("\n")) lineAt = performance.now();
    });
    socket.on("end", () => socket.end());
    socket.on("error", reject);
    socket.on("close", () => {
      if (received !== target.expect) {
        reject(
          new Error(`expected ${JSON.stringify(target.expect)}, got ${JSON.stringify(received)}`),
        );
      } else {
        resolve(lineAt - startedAt);
      }
    });
  });
}
