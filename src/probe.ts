/** The client side of a probe: what an agent answers, as HAProxy would read it. */
import { connect } from "node:net";

/** Connects, optionally sends `payload`, and resolves with the first line (with its `\n`). */
export function probeAgent(
  host: string,
  port: number,
  { timeoutMs = 2000, payload }: { timeoutMs?: number; payload?: string } = {},
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
