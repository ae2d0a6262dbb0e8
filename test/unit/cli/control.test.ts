/** The command line's client of the control socket, against a daemon played in a worker thread. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { request } from "../../../src/cli/control.js";
import { tempDir } from "../../helpers.js";

/**
 * A daemon on `path`, in a thread of its own, that closes its first client at once, told busy,
 * as a daemon closes the idlest client to make room, and answers every later one. Resolves with
 * the lines it read from each client once it is listening.
 */
async function closingDaemon(path: string): Promise<{ worker: Worker; lines: () => string[] }> {
  const worker = new Worker(
    `
    const { createServer } = require("node:net");
    const { parentPort, workerData } = require("node:worker_threads");
    let clients = 0;
    const server = createServer((socket) => {
      if (clients++ === 0) {
        socket.end('{"ok":false,"code":"busy","error":"busy: 16 clients are waiting"}\\n');
        socket.destroy();
        return;
      }
      let text = "";
      socket.setEncoding("utf8");
      socket.on("data", (chunk) => {
        text += chunk;
        if (!text.includes("\\n")) return;
        parentPort.postMessage({ line: text.slice(0, text.indexOf("\\n")) });
        socket.end('{"ok":true,"answered":true}\\n');
      });
    });
    server.listen(workerData, () => parentPort.postMessage({ listening: true }));
    parentPort.on("message", () => server.close(() => parentPort.close()));
    `,
    { eval: true, workerData: path },
  );
  const lines: string[] = [];
  await new Promise<void>((listening, failed) => {
    worker.on("error", failed);
    worker.on("message", (message: { listening?: true; line?: string }) => {
      if (message.line !== undefined) lines.push(message.line);
      if (message.listening) listening();
    });
  });
  return { worker, lines: () => lines };
}

/** Holds this thread's event loop, as a command started on a loaded machine is held. */
function holdEventLoop(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {}
}

test("a change the daemon closed before it was written (EPIPE) was not read, and is sent again", async (t) => {
  const path = join(await tempDir(t), "control.sock");
  const daemon = await closingDaemon(path);
  t.after(() => daemon.worker.postMessage("stop"));
  const change = { op: "change", status: "DOWN" };
  const reply = request(path, change, 10_000);
  // The connection is made now; the request is written only once this thread runs again, after
  // the daemon closed it.
  holdEventLoop(300);
  assert.deepEqual(await reply, { ok: true, answered: true });
  assert.deepEqual(daemon.lines(), [JSON.stringify(change)], "read once, on the second connection");
});
