import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { guardInspector, inspectorRequested } from "../../src/inspector-guard.js";

test("inspectorRequested sees the operator's --inspect flags only", () => {
  assert.equal(inspectorRequested([]), false);
  assert.equal(inspectorRequested(["--inspect"]), true);
  assert.equal(inspectorRequested(["--inspect=0.0.0.0:9230"]), true);
  assert.equal(inspectorRequested(["--inspect-brk"]), true);
  assert.equal(inspectorRequested(["--inspect-wait=9"]), true);
  assert.equal(inspectorRequested([], "--max-old-space-size=64 --inspect"), true);
  assert.equal(inspectorRequested(["--inspect-port=0"]), false);
  assert.equal(inspectorRequested([], "--inspect-port=9230"), false);
  assert.equal(inspectorRequested(["--max-semi-space-size=1"]), false);
});

test("a debugger opened a moment after start-up is closed and reported once", async () => {
  let url: string | undefined;
  const closed: string[] = [];
  guardInspector({
    url: () => url,
    close: () => {
      url = undefined;
    },
    onClosed: (u) => closed.push(u),
    windowMs: 300,
    intervalMs: 5,
  });
  assert.deepEqual(closed, []);
  await sleep(50);
  url = "ws://127.0.0.1:9229/x";
  await sleep(50);
  assert.equal(url, undefined);
  assert.deepEqual(closed, ["ws://127.0.0.1:9229/x"]);
});

test("a debugger open at the first look is closed at once", () => {
  let url: string | undefined = "ws://127.0.0.1:9229/y";
  const closed: string[] = [];
  const stop = guardInspector({
    url: () => url,
    close: () => {
      url = undefined;
    },
    onClosed: (u) => closed.push(u),
  });
  stop();
  assert.deepEqual(closed, ["ws://127.0.0.1:9229/y"]);
});

test("the guard stops looking after its window", async () => {
  let looks = 0;
  guardInspector({
    url: () => {
      looks++;
      return undefined;
    },
    close: () => {},
    onClosed: () => {},
    windowMs: 50,
    intervalMs: 5,
  });
  await sleep(150);
  const after = looks;
  await sleep(50);
  assert.equal(looks, after);
  assert.ok(after >= 3);
});
