/** The client side of a probe: what an agent answers, as HAProxy would read it. */
import { connect } from "node:net";

/**
 * What the command line's probes send first: a mark the agent knows (they are not a load
 * balancer's), then the service's name, if any, and the line end, so an agent with services
 * answers at once.
 */
export const CLI_PROBE_MARK = "#hapgent-cli";
export const INSTANCE_PAYLOAD = `${CLI_PROBE_MARK}\n`;
export const servicePayload = (name: string) => `${CLI_PROBE_MARK} ${name}\n`;
const PROBE_TIMEOUT_MS = 2000;

/** Connects, optionally sends `payload`, and resolves with the first line (with its `\n`). */
export function probeAgent(
  host: string,
  port: number,
  { timeoutMs = PROBE_TIMEOUT_MS, payload }: { timeoutMs?: number; payload?: string } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let received = "";
    socket.setEncoding("utf8");
    socket.setTimeout(timeoutMs, () =>
      socket.destroy(new Error(`no answer within ${timeoutMs} ms`)),
    );
    socket.on("connect", () => {
      if (payload !== undefined) socket.write(payload);
    });
    socket.on("data", (chunk: string) => {
      received += chunk;
      const end = received.indexOf("\n");
      if (end >= 0) {
        socket.destroy();
        resolve(received.slice(0, end + 1));
      }
    });
    socket.on("end", () => {
      socket.destroy();
      resolve(received);
    });
    socket.on("error", reject);
  });
}

export type Asked = { answer: string; error?: undefined } | { answer?: undefined; error: string };

/** One probe; a failure is its error code, as a result. */
export function ask(
  host: string,
  port: number,
  payload: string,
  timeoutMs?: number,
): Promise<Asked> {
  return probeAgent(host, port, {
    payload,
    ...(timeoutMs === undefined ? {} : { timeoutMs }),
  }).then(
    (answer) => ({ answer }),
    (err: NodeJS.ErrnoException) => ({ error: err.code ?? err.message }),
  );
}
