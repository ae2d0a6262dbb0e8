import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { lstat, mkdir, stat, writeFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";
import { parseRequest } from "../../../src/control-protocol.js";
import { createControlServer } from "../../../src/daemon/control.js";
import { startDaemon, tempDir } from "../../helpers.js";

/** Sends raw text on a Unix socket; resolves with every line received until it closes or `ms`. */
function exchange(path: string, text: string | Buffer, ms = 1000): Promise<string[]> {
  return new Promise((resolve) => {
    const socket = connect(path);
    let received = "";
    const done = () => {
      socket.destroy();
      resolve(received.split("\n").filter(Boolean));
    };
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(text));
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.on("error", done);
    socket.on("close", done);
    setTimeout(done, ms);
  });
}

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
  test("a stale socket is replaced; a live one or another file is never taken", async (t) => {
    const dir = await tempDir(t);
    const stale = join(dir, "stale.sock");
    // A socket whose server is gone: left behind by a killed daemon.
    const holder = spawn(process.execPath, [
      "-e",
      `require("node:net").createServer().listen(${JSON.stringify(stale)}, () => console.log("up"))`,
    ]);
    await new Promise((resolve) => holder.stdout.once("data", resolve));
    holder.kill("SIGKILL");
    await new Promise((resolve) => holder.on("close", resolve));
    assert.ok((await lstat(stale)).isSocket());
    const handlers = { handle: async () => ({ ok: true }) };
    const fresh = createControlServer({ path: stale, handlers });
    await fresh.listen();
    t.after(() => fresh.close());

    const live = createControlServer({ path: stale, handlers });
    await assert.rejects(live.listen(), /is in use by another process/);
    const file = join(dir, "file");
    await writeFile(file, "x");
    await assert.rejects(
      createControlServer({ path: file, handlers }).listen(),
      /exists and is not a socket/,
    );
  });
});

describe("control socket of the daemon", () => {
  test("status and changes; junk, floods and half-closed clients leave it unharmed", async (t) => {
    const dir = await tempDir(t);
    const socket = join(dir, "run", "control.sock");
    await mkdir(join(dir, "run"));
    const d = await startDaemon(t, {
      state: '{"status":"UP","weight":30}',
      env: { HAPGENT_CONTROL_SOCKET: socket },
    });
    await d.waitForLog(/control socket .*control\.sock/);
    const [status] = await exchange(socket, '{"op":"status"}\n');
    assert.deepEqual(JSON.parse(status ?? ""), {
      ok: true,
      state: { status: "UP", weight: 30 },
      pollers: [],
      checks: [],
      checksProblem: null,
      fleet: null,
    });
    const junk = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        exchange(socket, i % 2 === 0 ? Buffer.alloc(100_000, "{") : "\u0000\u00ff\n", 500),
      ),
    );
    assert.ok(junk.flat().every((line) => JSON.parse(line).ok === false));
    const [changed] = await exchange(
      socket,
      '{"op":"change","status":"DRAIN","maxconn":7}\n',
      3000,
    );
    const reply = JSON.parse(changed ?? "");
    assert.match(reply.state.changed.at, /^20[0-9-]+T[0-9:.]+Z$/);
    assert.deepEqual(reply, {
      ok: true,
      state: {
        status: "DRAIN",
        weight: 30,
        maxconn: 7,
        // A client that does not say who it is is recorded as the command line, nobody named.
        changed: { at: reply.state.changed.at, via: "cli" },
      },
      replaced: null,
      unsaved: null,
      cancelled: null,
      pollers: [],
      checks: [],
      checksProblem: null,
      fleet: null,
    });
    assert.equal(await d.readState(), '{"status":"DRAIN","weight":30,"maxconn":7}\n');
    assert.equal(await d.probe(), "up drain 30% maxconn:7\n");
    await d.waitForLog(
      /control: state \{"status":"UP","weight":30\} -> \{"status":"DRAIN","weight":30,"maxconn":7,"changed":\{"at":"[^"]+","via":"cli"\}\}/,
    );
    const [twice] = await exchange(socket, '{"op":"change","status":"DOWN","status":"UP"}\n');
    assert.deepEqual(JSON.parse(twice ?? ""), {
      ok: false,
      error: '"status" appears more than once; expected each key once',
    });
    const [refused] = await exchange(socket, '{"op":"change","status":"UP","weight":900}\n');
    assert.deepEqual(JSON.parse(refused ?? ""), {
      ok: false,
      code: "invalid",
      error: "weight must be an integer 0-255, got 900",
    });
    assert.equal(d.child.exitCode, null, "still running");
    d.signal("SIGTERM");
    assert.equal((await d.exited).code, 0);
    await assert.rejects(lstat(socket), { code: "ENOENT" }, "the socket is removed at exit");
  });
});
