/** The log sink with made-up descriptors and streams: order, partial writes, losses counted. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createLogSink } from "../../src/log-sink.js";
import { waitFor } from "../helpers.js";

describe("log sink", () => {
  type Callback = (err: NodeJS.ErrnoException | null, written: number) => void;
  /** A descriptor whose writes are answered by `answer`, one call at a time. */
  function fakeFd(answer: (bytes: string) => NodeJS.ErrnoException | number) {
    const written: string[] = [];
    /** Writes answered so far, failed ones included. */
    const answered = { count: 0 };
    const write = ((
      _fd: number,
      buffer: Buffer,
      offset: number,
      length: number,
      _position: null,
      callback: Callback,
    ) => {
      const bytes = buffer.subarray(offset, offset + length).toString();
      const outcome = answer(bytes);
      setImmediate(() => {
        answered.count++;
        if (typeof outcome === "number") {
          written.push(bytes.slice(0, outcome));
          callback(null, outcome);
        } else {
          callback(outcome, 0);
        }
      });
    }) as unknown as typeof import("node:fs").write;
    return { write, written, answered };
  }
  const note = (count: number, code: string) => `[${count} lost: ${code}]\n`;
  /** Until `count` writes were answered: a loaded machine may take a while, never a fixed time. */
  const answeredAtLeast = (fd: { answered: { count: number } }, count: number) =>
    waitFor(`${count} writes answered`, () => (fd.answered.count >= count ? true : undefined));
  /** Long enough for a write that should not happen to have happened, if it could. */
  const settle = () => new Promise((resolve) => setTimeout(resolve, 20));

  test("lines go out in order; partial writes are completed", async () => {
    const fd = fakeFd((bytes) => Math.min(bytes.length, 3));
    const sink = createLogSink({ fd: 9, dropNote: note, write: fd.write });
    sink.write("first\n");
    sink.write("second\n");
    await sink.drain(5000);
    assert.equal(fd.written.join(""), "first\nsecond\n");
  });

  test("failed lines are counted and reported before the next line that can be written", async () => {
    let failing = true;
    const fd = fakeFd((bytes) =>
      failing ? Object.assign(new Error("full"), { code: "ENOSPC" }) : bytes.length,
    );
    const sink = createLogSink({ fd: 9, dropNote: note, write: fd.write });
    for (const line of ["a\n", "b\n", "c\n"]) sink.write(line);
    await answeredAtLeast(fd, 3);
    failing = false;
    sink.write("d\n");
    await sink.drain(5000);
    assert.equal(fd.written.join(""), "[3 lost: ENOSPC]\nd\n");
  });

  test("a descriptor that would block is tried again; a stalled reader costs a bounded queue", async () => {
    let blocked = true;
    const fd = fakeFd((bytes) =>
      blocked ? Object.assign(new Error("again"), { code: "EAGAIN" }) : bytes.length,
    );
    const sink = createLogSink({
      fd: 9,
      dropNote: note,
      write: fd.write,
      maxQueuedBytes: 10,
      retryMs: 5,
    });
    for (const line of ["1234\n", "5678\n", "overflow\n", "more\n"]) sink.write(line);
    await answeredAtLeast(fd, 2);
    await settle();
    assert.deepEqual(fd.written, []);
    blocked = false;
    await sink.drain(5000);
    sink.write("z\n");
    await sink.drain(5000);
    assert.equal(
      fd.written.join(""),
      "1234\n5678\n[1 lost: the log reader is not keeping up]\nmore\nz\n",
    );
  });

  test("drain waits until every line is out, and counts lost lines that nothing followed", async () => {
    let failing = false;
    const fd = fakeFd((bytes) =>
      failing ? Object.assign(new Error("full"), { code: "ENOSPC" }) : bytes.length,
    );
    const sink = createLogSink({ fd: 9, dropNote: note, write: fd.write });
    sink.write("one\n");
    sink.write("two\n");
    await sink.drain(1000);
    assert.equal(fd.written.join(""), "one\ntwo\n");
    failing = true;
    const before = fd.answered.count;
    sink.write("lost\n");
    await answeredAtLeast(fd, before + 1);
    failing = false;
    await sink.drain(1000);
    assert.equal(fd.written.join(""), "one\ntwo\n[1 lost: ENOSPC]\n");
  });

  test("a stream (a pipe, a socket): lines go out in order, a failed write is counted", async () => {
    const written: string[] = [];
    let failing = true;
    const stream = {
      write(chunk: Uint8Array, callback: (err?: Error | null) => void) {
        const text = Buffer.from(chunk).toString();
        setImmediate(() => {
          if (failing) return callback(Object.assign(new Error("broken pipe"), { code: "EPIPE" }));
          written.push(text);
          callback(null);
        });
        return true;
      },
    };
    const sink = createLogSink({ fd: 9, dropNote: note, stream });
    sink.write("lost\n");
    await sink.drain(5000);
    failing = false;
    sink.write("a\n");
    sink.write("b\n");
    await sink.drain(5000);
    assert.equal(written.join(""), "[1 lost: EPIPE]\na\nb\n");
  });

  test("drain gives up after its time when the reader has stalled", async () => {
    // A write that never completes: a reader that stopped reading a blocking pipe.
    const write = (() => {}) as unknown as typeof import("node:fs").write;
    const sink = createLogSink({ fd: 9, dropNote: note, write });
    sink.write("stuck\n");
    sink.write("behind it\n");
    const began = performance.now();
    await sink.drain(50);
    const took = performance.now() - began;
    assert.ok(took >= 45 && took < 1000, `drain took ${took} ms`);
  });
});
