import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { describe, test } from "node:test";
import { type AgentServerOptions, createAgentServer } from "../../../src/daemon/server.js";
import { probe, waitFor } from "../../helpers.js";

async function start(
  t: { after: (fn: () => Promise<void>) => void },
  options: Partial<AgentServerOptions> = {},
) {
  const agent = createAgentServer({ reply: () => "up ready 100%\n", ...options });
  const { port } = await agent.listen("127.0.0.1", 0);
  t.after(() => agent.close());
  return { agent, port };
}

function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port }, () => resolve(socket));
    socket.on("error", reject);
  });
}

describe("agent server", () => {
  test("answers at once, with no payload sent, and closes", async (t) => {
    const { port } = await start(t);
    assert.equal(await probe(port), "up ready 100%\n");
  });

  test("answers with HAProxy's agent-send payload, without resetting the connection", async (t) => {
    const { port } = await start(t);
    for (let i = 0; i < 50; i++) {
      assert.equal(await probe(port, { payload: "be_web/srv1\n" }), "up ready 100%\n");
    }
  });

  test("each connection gets the reply of that moment", async (t) => {
    let n = 0;
    const { port } = await start(t, { reply: () => `up ready ${++n}%\n` });
    assert.equal(await probe(port), "up ready 1%\n");
    assert.equal(await probe(port), "up ready 2%\n");
  });

  test("listens on IPv6 loopback", async (t) => {
    const agent = createAgentServer({ reply: () => "maint 100%\n" });
    const { port, family } = await agent.listen("::1", 0);
    t.after(() => agent.close());
    assert.equal(family, "IPv6");
    assert.equal(await probe(port, { host: "::1" }), "maint 100%\n");
  });

  test("a busy port is Node's EADDRINUSE", async (t) => {
    const { port } = await start(t);
    const second = createAgentServer({ reply: () => "x\n" });
    await assert.rejects(second.listen("127.0.0.1", port), { code: "EADDRINUSE" });
  });

  test("a client flooding junk is cut off; good probes keep their answers", async (t) => {
    const { agent, port } = await start(t, { maxPayloadBytes: 1024 });
    const flooder = await openSocket(port);
    const closed = new Promise((resolve) => flooder.on("close", resolve));
    flooder.on("error", () => {});
    // Reading is how the flooder notices the agent's reset.
    flooder.resume();
    const junk = Buffer.alloc(64 * 1024, 0xff);
    for (let i = 0; i < 16 && !flooder.destroyed; i++) flooder.write(junk);
    assert.equal(await probe(port), "up ready 100%\n");
    await closed;
    await waitFor("connections to drain", () => (agent.connections === 0 ? true : undefined));
  });

  test("idle clients linger only until the timeout", async (t) => {
    const { agent, port } = await start(t, { lingerMs: 100 });
    const idle = await Promise.all(Array.from({ length: 20 }, () => openSocket(port)));
    t.after(() => {
      for (const socket of idle) socket.destroy();
    });
    for (const socket of idle) socket.on("error", () => {});
    await waitFor("all connections open", () => (agent.connections === 20 ? true : undefined));
    await waitFor(
      "idle connections closed",
      () => (agent.connections === 0 ? true : undefined),
      2000,
    );
  });

  test("past the connection cap the oldest is closed and new probes are answered", async (t) => {
    const { agent, port } = await start(t, { maxConnections: 10, lingerMs: 60_000 });
    const idle: Socket[] = [];
    t.after(() => {
      for (const socket of idle) socket.destroy();
    });
    for (let i = 0; i < 30; i++) {
      const socket = await openSocket(port);
      socket.on("error", () => {});
      idle.push(socket);
    }
    await waitFor("cap reached", () => (agent.connections === 10 ? true : undefined));
    assert.equal(await probe(port), "up ready 100%\n");
    assert.ok(agent.connections <= 10);
    // The 20 oldest were answered and then closed by the agent: reading shows reply and end.
    const ends = idle.slice(0, 20).map(
      (socket) =>
        new Promise<string>((resolve) => {
          let text = "";
          socket.on("data", (d) => {
            text += d;
          });
          socket.on("close", () => resolve(text));
          socket.resume();
        }),
    );
    assert.deepEqual(await Promise.all(ends), Array(20).fill("up ready 100%\n"));
  });

  test("a burst of connections never holds more than the cap, even within one tick", async (t) => {
    const { agent, port } = await start(t, { maxConnections: 10, lingerMs: 60_000 });
    let most = 0;
    // Runs after the agent's own connection handler, for every connection accepted.
    agent.server.on("connection", () => {
      most = Math.max(most, agent.connections);
    });
    const sockets = await Promise.all(Array.from({ length: 60 }, () => openSocket(port)));
    t.after(() => {
      for (const socket of sockets) socket.destroy();
    });
    for (const socket of sockets) socket.on("error", () => {});
    await waitFor("all accepted", () => (most > 0 && agent.connections === 10 ? true : undefined));
    assert.ok(most <= 10, `at most 10 open, saw ${most}`);
  });

  test("a client that resets at once does not disturb others", async (t) => {
    const { port } = await start(t);
    for (let i = 0; i < 50; i++) {
      const socket = connect({ host: "127.0.0.1", port });
      socket.on("error", () => {});
      socket.on("connect", () => socket.resetAndDestroy());
    }
    assert.equal(await probe(port), "up ready 100%\n");
  });

  test("close ends idle connections and stops listening", async () => {
    const agent = createAgentServer({ reply: () => "up ready 100%\n", lingerMs: 60_000 });
    const { port } = await agent.listen("127.0.0.1", 0);
    const idle = await openSocket(port);
    const closed = new Promise((resolve) => idle.on("close", resolve));
    idle.on("error", () => {});
    idle.resume();
    await agent.close();
    await closed;
    await assert.rejects(probe(port), { code: "ECONNREFUSED" });
  });
});

describe("agent server, replies by agent-send name", () => {
  /** A server whose reply names what it was asked for, and which records every name. */
  async function named(t: Parameters<typeof start>[0], options: Partial<AgentServerOptions> = {}) {
    const names: (string | undefined)[] = [];
    const started = await start(t, {
      awaitsName: () => true,
      reply: (name) => {
        names.push(name);
        return name === undefined ? "up ready 100%\n" : `up ready 1% # ${name}\n`;
      },
      ...options,
    });
    return { ...started, names };
  }

  /** Sends `chunks` one by one, `gapMs` apart; resolves with what came back and when. */
  function conversation(port: number, chunks: string[], gapMs = 20, halfClose = false) {
    return new Promise<{ text: string; ms: number }>((resolve, reject) => {
      const began = performance.now();
      const socket = connect({ host: "127.0.0.1", port }, async () => {
        for (const chunk of chunks) {
          socket.write(chunk);
          await new Promise((done) => setTimeout(done, gapMs));
        }
        if (halfClose) socket.end();
      });
      let text = "";
      socket.setEncoding("utf8").on("data", (chunk: string) => {
        text += chunk;
      });
      socket.on("end", () => socket.end());
      socket.on("close", () => resolve({ text, ms: performance.now() - began }));
      socket.on("error", reject);
    });
  }

  test("the first line names the service; line end and blanks are not part of it", async (t) => {
    const { port, names } = await named(t);
    const cases: [string, string][] = [
      ["be_web/srv1\n", "be_web/srv1"],
      ["be_web/srv1\r\n", "be_web/srv1"],
      ["  be_api/srv2 \t\n", "be_api/srv2"],
      ["a\nsecond line\n", "a"],
      ["\n", ""],
    ];
    for (const [payload, name] of cases) {
      assert.equal(await probe(port, { payload }), `up ready 1% # ${name}\n`);
    }
    assert.deepEqual(
      names,
      cases.map(([, name]) => name),
    );
  });

  test("a line sent in pieces is read whole", async (t) => {
    const { port } = await named(t);
    const { text } = await conversation(port, ["be_", "web/s", "rv1", "\n"], 5);
    assert.equal(text, "up ready 1% # be_web/srv1\n");
  });

  test("no line within the wait: answered without a name, after the wait", async (t) => {
    const { port, names } = await named(t, { nameWaitMs: 150 });
    const silent = await conversation(port, []);
    assert.equal(silent.text, "up ready 100%\n");
    assert.ok(silent.ms >= 140, `answered after ${silent.ms} ms, before the wait ended`);
    const partial = await conversation(port, ["be_web/srv1"]);
    assert.equal(partial.text, "up ready 100%\n");
    assert.deepEqual(names, [undefined, undefined]);
  });

  test("a client that half-closes ends its line, and is answered at once", async (t) => {
    const { port } = await named(t, { nameWaitMs: 5000 });
    const { text, ms } = await conversation(port, ["be_web/srv1"], 0, true);
    assert.equal(text, "up ready 1% # be_web/srv1\n");
    assert.ok(ms < 2500, `answered after ${ms} ms`);
  });

  test("a first line longer than any name is answered at once, without a name", async (t) => {
    const { port, names } = await named(t, { nameWaitMs: 5000 });
    const { text, ms } = await conversation(port, ["x".repeat(300)]);
    assert.equal(text, "up ready 100%\n");
    assert.ok(ms < 2500, `answered after ${ms} ms`);
    assert.deepEqual(names, [undefined]);
  });

  test("without names the reply does not wait for the payload", async (t) => {
    const { port } = await start(t, { awaitsName: () => false, nameWaitMs: 5000 });
    const { text, ms } = await conversation(port, []);
    assert.equal(text, "up ready 100%\n");
    assert.ok(ms < 2500, `answered after ${ms} ms`);
  });

  test("clients waiting for their name are bounded like any other", async (t) => {
    const { agent, port } = await named(t, { maxConnections: 10, nameWaitMs: 60_000 });
    const waiting = await Promise.all(Array.from({ length: 30 }, () => openSocket(port)));
    t.after(() => {
      for (const socket of waiting) socket.destroy();
    });
    for (const socket of waiting) socket.on("error", () => {});
    await waitFor("cap reached", () => (agent.connections === 10 ? true : undefined));
    assert.equal(await probe(port, { payload: "a\n" }), "up ready 1% # a\n");
    assert.ok(agent.connections <= 10);
  });
});

describe("agent server, what the probe ledger is told", () => {
  type Told = { address: string; name: string | undefined; reply: string; heard: boolean };
  async function observed(
    t: { after: (fn: () => Promise<void>) => void },
    options: Partial<AgentServerOptions> = {},
  ) {
    const told: Told[] = [];
    const { port } = await start(t, {
      lingerMs: 200,
      ...options,
      observer: {
        probed: (address, name, reply, _atMs, heard) =>
          told.push({ address, name, reply: String(reply), heard }),
      },
    });
    return { port, told };
  }

  test("a reply read to the end and closed, as HAProxy does, is heard", async (t) => {
    const { port, told } = await observed(t);
    assert.equal(await probe(port), "up ready 100%\n");
    await waitFor("the close", () => (told.length > 0 ? true : undefined));
    assert.deepEqual(told, [
      { address: "127.0.0.1", name: undefined, reply: "up ready 100%\n", heard: true },
    ]);
  });

  test("a line read and then reset, as HAProxy closes its checks, is heard", async (t) => {
    const { port, told } = await observed(t);
    const socket = connect({ host: "127.0.0.1", port });
    socket.on("error", () => {});
    socket.on("data", () => socket.resetAndDestroy());
    await waitFor("the close", () => (told.length > 0 ? true : undefined), 3000);
    assert.deepEqual(told, [
      { address: "127.0.0.1", name: undefined, reply: "up ready 100%\n", heard: true },
    ]);
  });

  test("a client that never closes, cut off at the linger, has not heard", async (t) => {
    const { port, told } = await observed(t);
    const silent = await openSocket(port);
    silent.pause();
    await waitFor("the close", () => (told.length === 1 ? true : undefined), 3000);
    assert.equal(told[0]?.heard, false);
    silent.destroy();
  });

  test("hapgent's own probes are answered and not told, with or without a wait for the name", async (t) => {
    for (const awaitsName of [false, true]) {
      const { port, told } = await observed(t, {
        awaitsName: () => awaitsName,
        reply: (name) => `up ready 100% # ${name ?? "none"}\n`,
      });
      const own = await probe(port, { payload: "#hapgent-cli be_web/srv1\n" });
      assert.equal(own, `up ready 100% # ${awaitsName ? "be_web/srv1" : "none"}\n`);
      assert.equal(
        await probe(port, { payload: "be_web/srv1\n" }),
        `up ready 100% # ${awaitsName ? "be_web/srv1" : "none"}\n`,
      );
      await waitFor("the close", () => (told.length > 0 ? true : undefined));
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(
        told.map((x) => [x.name, x.heard]),
        [[awaitsName ? "be_web/srv1" : undefined, true]],
      );
    }
  });
});
