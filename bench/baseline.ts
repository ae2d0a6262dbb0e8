/**
 * The floor for any Node agent: a bare `net` server that writes a fixed line and ends. Started
 * by the benchmark as a child process on BASELINE_PORT.
 */
import { createServer } from "node:net";

const LINE = "up ready 100%\n";
const port = Number(process.env.BASELINE_PORT);
if (!(port > 0)) {
  process.stderr.write("baseline: BASELINE_PORT must be a port number\n");
  process.exit(2);
}
createServer((socket) => {
  socket.on("error", () => socket.destroy());
  // Reading what the client sends (and dropping it) is the least any agent must do: a socket
  // whose input is never read never sees the client's end, and is never closed.
  socket.resume();
  socket.end(LINE);
}).listen({ host: "127.0.0.1", port }, () => process.stderr.write("listening\n"));
