import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { serveConnection } from "../../../src/daemon/control-connection.js";
import { LineBuffer } from "../../../src/daemon/line-buffer.js";
import { tempDir } from "../../helpers.js";

/** The lines `text` holds and what is left after the last line end, as a split gives them. */
function expected(text: string): { lines: string[]; rest: string } {
  const parts = text.split("\n");
  return { lines: parts.slice(0, -1), rest: parts.at(-1) ?? "" };
}

/** Feeds `text` in chunks of `size` bytes, taking lines as soon as they are whole. */
function fed(text: string, size: number): { lines: string[]; rest: string } {
  const bytes = Buffer.from(text);
  const buffer = new LineBuffer();
  const lines: string[] = [];
  for (let at = 0; at < bytes.length; at += size) {
    buffer.push(bytes.subarray(at, at + size));
    for (let line = buffer.takeLine(); line !== undefined; line = buffer.takeLine()) {
      lines.push(line.toString());
    }
    assert.equal(buffer.firstLineEnd, -1);
  }
  const held = buffer.length;
  const rest = buffer.takeAll().toString();
  assert.equal(held, Buffer.byteLength(rest));
  return { lines, rest };
}

test("lines come out the same whatever the chunks they arrive in", () => {
  const cases = [
    "",
    "\n",
    "\n\n\n",
    '{"op":"status"}\n',
    '{"op":"status"}',
    '{"op":"status"}\n{"op":"change","status":"DRAIN"}\npartial',
    "a\nbb\n\nccc\nd",
    `${"x".repeat(300)}\n${"y".repeat(5)}\n\n${"z".repeat(70)}`,
    "é€😀\nnon-ascii split inside a character\n",
  ];
  for (const text of cases) {
    for (const size of [1, 2, 3, 7, 64, 1000]) {
      assert.deepEqual(fed(text, size), expected(text), `${JSON.stringify(text)} in ${size}s`);
    }
  }
});

test("a request a byte at a time is answered as the same request at once, copied once", async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, "c.sock");
  const accepted: Socket[] = [];
  const server = createServer({ allowHalfOpen: true }, (socket) => accepted.push(socket));
  server.listen(path);
  await once(server, "listening");
  t.after(() => server.close());
  const seen: unknown[] = [];
  const handlers = {
    handle: async (request: object) => {
      seen.push(request);
      return { ok: true, echo: request };
    },
  };
  const reason = "u".repeat(16 * 1024);
  const line = `${JSON.stringify({ op: "change", status: "DRAIN", reason, by: "ops" })}\n`;
  const ask = async (chunkBytes: number): Promise<string> => {
    const client = connect(path);
    await once(client, "connect");
    while (accepted.length === 0) await new Promise((resolve) => setImmediate(resolve));
    const socket = accepted.shift() as Socket;
    serveConnection(socket, { handlers, maxLineBytes: 64 * 1024, idleMs: 10_000 });
    // Chunks exactly this size, as a slow client's would arrive: the kernel would merge writes.
    const bytes = Buffer.from(line);
    for (let at = 0; at < bytes.length; at += chunkBytes) {
      socket.emit("data", bytes.subarray(at, at + chunkBytes));
    }
    client.setEncoding("utf8");
    const [reply] = (await once(client, "data")) as [string];
    client.destroy();
    return reply;
  };
  const whole = await ask(line.length);
  const concat = Buffer.concat;
  let copied = 0;
  Buffer.concat = (list: readonly Uint8Array[], length?: number) => {
    const joined = concat(list, length);
    copied += joined.length;
    return joined;
  };
  let dripped: string;
  try {
    dripped = await ask(1);
  } finally {
    Buffer.concat = concat;
  }
  assert.equal(dripped, whole);
  assert.deepEqual(seen[1], seen[0]);
  assert.equal(JSON.parse(whole).echo.change.reason, reason);
  // Each byte copied once into its line, not once per byte that came after it.
  assert.ok(copied <= 2 * line.length, `${copied} bytes copied for a ${line.length}-byte line`);
});
