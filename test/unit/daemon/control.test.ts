import assert from "node:assert/strict";
import { stat } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { parseRequest } from "../../../src/control-protocol.js";
import { createControlServer } from "../../../src/daemon/control.js";
import { exchange, tempDir } from "../../helpers.js";

/** A connection that says nothing and reads everything; `closed` resolves when the daemon ends it. */
async function held(path: string): Promise<{ socket: Socket; closed: Promise<unknown> }> {
  const socket = connect(path);
  socket.on("error", () => {});
  socket.resume();
  const closed = new Promise((resolve) => socket.on("close", resolve));
  await new Promise((resolve) => socket.on("connect", resolve));
  return { socket, closed };
}

/** `promise`, or a failure naming `what` after `ms`: the old rules would wait forever. */
async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe("control protocol", () => {
  test("requests are checked strictly, with a reason", () => {
    const cases: [string, string | object][] = [
      ['{"op":"status"}', { op: "status" }],
      [
        '{"op":"change","status":"DRAIN","weight":5,"maxconn":null}',
        {
          op: "change",
          change: { status: "DRAIN", weight: 5, maxconn: null },
        },
      ],
      [
        '{"op":"change","status":"UP","service":"be_web/srv1","description":"x"}',
        {
          op: "change",
          change: { status: "UP", service: "be_web/srv1", description: "x" },
        },
      ],
      ["status", "request is not JSON"],
      ["[1]", "request must be a JSON object"],
      ['{"op":"reboot"}', 'op must be "status" or "change", got "reboot"'],
      ['{"op":"status","x":1}', 'status takes no "x"'],
      ['{"op":"change","status":"up"}', "status must be one of UP, DOWN"],
      ['{"op":"change","status":"UP","service":"two words"}', "service must be a service name"],
      ['{"op":"change","status":"UP","weight":{}}', "weight must be a number, a string or null"],
      ['{"op":"change","status":"UP","path":"/etc/shadow"}', 'change takes no "path"'],
      // JSON.parse would keep the last: the request says two things.
      ['{"op":"status","op":"change"}', '"op" appears more than once; expected each key once'],
      [
        '{"op":"change","status":"UP","status":"DOWN"}',
        '"status" appears more than once; expected each key once',
      ],
    ];
    for (const [line, expected] of cases) {
      const parsed = parseRequest(line);
      if (typeof expected === "string") {
        assert.ok(
          !parsed.ok && parsed.reason.startsWith(expected),
          `${line}: ${JSON.stringify(parsed)}`,
        );
      } else {
        assert.deepEqual(parsed, { ok: true, request: expected }, line);
      }
    }
  });
});

describe("control socket", () => {
  async function serve(t: { after: (fn: () => Promise<void>) => void }, options = {}) {
    const dir = await tempDir(t);
    const path = join(dir, "c.sock");
    const server = createControlServer({
      path,
      handlers: { handle: async (request) => ({ ok: true, echo: request }) },
      ...options,
    });
    await server.listen();
    t.after(() => server.close());
    return { dir, path };
  }

  test("one reply per request, in order; bad lines get an error and the connection goes on", async (t) => {
    const { path } = await serve(t);
    const mode = (await stat(path)).mode & 0o777;
    assert.equal(mode, 0o660);
    const lines = await exchange(
      path,
      '{"op":"status"}\nnot json\n\n{"op":"nope"}\n{"op":"status"}\n',
    );
    assert.deepEqual(
      lines.map((line) => JSON.parse(line).ok),
      [true, false, false, true],
    );
  });

  test("a huge line is refused, and the rest of that client's input dropped", async (t) => {
    const { path } = await serve(t, { maxLineBytes: 1024 });
    const huge = await exchange(path, Buffer.alloc(64 * 1024, "x"));
    assert.deepEqual(huge, ['{"ok":false,"error":"request longer than 1024 bytes"}']);
    // Lines before it are answered; the one too long ends the conversation.
    const mixed = await exchange(path, `{"op":"status"}\n${"x".repeat(2000)}\n{"op":"status"}\n`);
    assert.deepEqual(
      mixed.map((line) => JSON.parse(line).ok),
      [true, false],
    );
  });

  test("a client that ends its side after its requests still gets every reply", async (t) => {
    const { path } = await serve(t);
    // As `nc -N` sends: the requests, the last without its newline, then the end of its side.
    const socket = connect({ path, allowHalfOpen: true });
    let received = "";
    socket.setEncoding("utf8").on("data", (chunk: string) => {
      received += chunk;
    });
    socket.end('{"op":"status"}\n{"op":"status"}');
    await new Promise((resolve) => socket.on("close", resolve));
    assert.deepEqual(
      received
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line).ok),
      [true, true],
    );
  });

  test("a new client closes the one idle longest; busy only while all wait for replies", async (t) => {
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let entered = 0;
    let bothEntered = () => {};
    const bothWaiting = new Promise<void>((resolve) => {
      bothEntered = resolve;
    });
    const dir = await tempDir(t);
    const path = join(dir, "c.sock");
    const server = createControlServer({
      path,
      maxClients: 2,
      handlers: {
        handle: async (request) => {
          if (request.op === "change") {
            if (++entered === 2) bothEntered();
            await gate;
          }
          return { ok: true, echo: request };
        },
      },
    });
    await server.listen();
    t.after(() => server.close());

    const [oldest, newer] = [await held(path), await held(path)];
    assert.equal((await exchange(path, '{"op":"status"}\n')).length, 1);
    await oldest.closed;
    assert.equal(newer.socket.destroyed, false, "only the one idle longest was closed");
    newer.socket.destroy();

    // Two clients whose changes are being saved are never closed: a third is told it is busy.
    const change = '{"op":"change","status":"DOWN"}\n';
    const waiting = [exchange(path, change, 5000), exchange(path, change, 5000)];
    await bothWaiting;
    const [busy] = await exchange(path, change);
    assert.deepEqual(JSON.parse(busy ?? ""), {
      ok: false,
      code: "busy",
      error: "busy: 2 clients are waiting for their replies",
    });
    release();
    for (const lines of await Promise.all(waiting)) assert.equal(lines.length, 1);
    assert.equal(JSON.parse((await exchange(path, change))[0] ?? "").ok, true);
  });

  test("a client silent, or never finishing a line, is closed after its idle time", async (t) => {
    const { path } = await serve(t, { idleMs: 1000 });
    const silent = await held(path);
    const slow = await held(path);
    // One byte every 100 ms, never a whole request: activity, but no request.
    const drip = setInterval(() => slow.socket.write("{"), 100);
    t.after(() => clearInterval(drip));
    await within(10_000, Promise.all([silent.closed, slow.closed]), "the quiet clients closed");
    // A client that asks keeps its connection meanwhile.
    const talker = await held(path);
    for (let i = 0; i < 8; i++) {
      talker.socket.write('{"op":"status"}\n');
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.equal(talker.socket.destroyed, false);
    await within(10_000, talker.closed, "the talker closed once quiet");
  });
});
