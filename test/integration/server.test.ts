/** The agent port against a client in another process, the event loop busy meanwhile. */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { type AgentServerOptions, createAgentServer } from "../../src/daemon/server.js";
import { exec, tempDir } from "../helpers.js";

async function start(
  t: { after: (fn: () => Promise<void>) => void },
  options: Partial<AgentServerOptions> = {},
) {
  const agent = createAgentServer({ reply: () => "up ready 100%\n", ...options });
  const { port } = await agent.listen("127.0.0.1", 0);
  t.after(() => agent.close());
  return { agent, port };
}

describe("the wait for a probe's first line", () => {
  test("a line that arrived while the event loop was busy is read before the wait ends", async (t) => {
    const dir = await tempDir(t);
    const written = join(dir, "written");
    const { agent, port } = await start(t, {
      awaitsName: () => true,
      nameWaitMs: 50,
      reply: (name) => (name === undefined ? "up ready 100%\n" : `up drain 5% # ${name}\n`),
    });
    // Right after the agent starts its wait (its own listener ran first), the loop is kept busy
    // past the wait's end, until the client (another process) has sent its line: the line then
    // waits in the kernel while the wait's timer is due.
    agent.server.on("connection", () => {
      const began = performance.now();
      while (!existsSync(written) || performance.now() - began < 150) {
        if (performance.now() - began > 20_000) throw new Error("the client never wrote");
      }
    });
    const client = await exec(process.execPath, [
      "-e",
      `const s = require("net").connect(${port}, "127.0.0.1", () => setTimeout(() =>
         s.write("be_web/srv1\\n", () => require("fs").writeFileSync(${JSON.stringify(written)}, "")), 20));
       let got = ""; s.setEncoding("utf8"); s.on("data", (c) => got += c);
       s.on("end", () => { process.stdout.write(got); s.end(); });`,
    ]);
    assert.equal(client.stdout, "up drain 5% # be_web/srv1\n", client.stderr);
  });
});
