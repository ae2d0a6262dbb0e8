import assert from "node:assert/strict";
import { test } from "node:test";
import { createLogger } from "../../src/log.js";

const now = () => new Date("2026-01-02T03:04:05.678Z");

test("plain lines carry a timestamp and the level", () => {
  const lines: string[] = [];
  const log = createLogger({ write: (line) => lines.push(line), journal: false, now });
  log.notice("hello");
  log.error("bad");
  assert.deepEqual(lines, [
    "2026-01-02T03:04:05.678Z hapgent notice: hello\n",
    "2026-01-02T03:04:05.678Z hapgent error: bad\n",
  ]);
});

test("journal lines carry syslog priorities", () => {
  const lines: string[] = [];
  const log = createLogger({ write: (line) => lines.push(line), journal: true, now });
  log.error("e");
  log.warning("w");
  log.notice("n");
  log.info("i");
  assert.deepEqual(lines, ["<3>e\n", "<4>w\n", "<5>n\n", "<6>i\n"]);
});

test("a message with line breaks stays one line", () => {
  const lines: string[] = [];
  const log = createLogger({ write: (line) => lines.push(line), journal: true, now });
  log.warning("file /tmp/a\nb\r\nc");
  assert.deepEqual(lines, ["<4>file /tmp/a b c\n"]);
});
