import assert from "node:assert/strict";
import { test } from "node:test";
import { createLedger, heldMaxconn, keptMaxconn } from "../../../src/daemon/ledger.js";

const line = (text: string) => new TextEncoder().encode(text);
const UP = line("up ready 100%\n");
const DOWN = line("down ready 100%\n");

function clock(start = 1_000_000) {
  let at = start;
  return { now: () => at, advance: (ms: number) => (at += ms) };
}

test("a load balancer's interval is learnt from the gaps between its probes", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now });
  for (const gap of [0, 2000, 2100, 1900, 2000, 9000]) {
    c.advance(gap);
    ledger.record("10.0.0.5", "", UP, c.now(), true);
  }
  const [lb] = ledger.pollers();
  assert.equal(lb?.probes, 6);
  // The median of the last five gaps: a late probe does not skew it.
  assert.equal(lb?.intervalMs, 2000);
  assert.equal(lb?.firstSeenMs, 1_000_000);
  assert.equal(lb?.lastSeenMs, 1_000_000 + 17_000);
});

test("given is not heard; heard is the reply the peer took", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now });
  ledger.record("10.0.0.5", "", UP, c.now(), true);
  c.advance(2000);
  // Reset, or closed before the whole line went out: given, never heard.
  ledger.record("10.0.0.5", "", DOWN, c.now(), false);
  const [lb] = ledger.pollers();
  assert.equal(lb?.lastGiven, DOWN);
  assert.equal(lb?.lastHeard, UP, "the second reply was given but not heard");
  assert.equal(lb?.lastHeardMs, 1_000_000);
});

test("connections that close out of order: the latest probe is what was given and heard", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now });
  ledger.record("10.0.0.5", "", UP, c.now(), true);
  ledger.record("10.0.0.5", "", DOWN, c.now() + 2000, true);
  // A slow client's older probe closes last: it changes neither what was given nor heard.
  ledger.record("10.0.0.5", "", UP, c.now() + 1000, true);
  const [lb] = ledger.pollers();
  assert.equal(lb?.lastGiven, DOWN);
  assert.equal(lb?.lastHeard, DOWN);
  assert.equal(lb?.intervalMs, 2000);
});

test("services and addresses are told apart", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now });
  ledger.record("10.0.0.5", "be_web/srv1", UP, c.now(), true);
  ledger.record("10.0.0.5", "be_api/srv1", DOWN, c.now(), true);
  ledger.record("10.0.0.6", "be_web/srv1", UP, c.now(), true);
  assert.deepEqual(
    ledger.pollers().map((p) => `${p.address} ${p.service}`),
    ["10.0.0.5 be_web/srv1", "10.0.0.5 be_api/srv1", "10.0.0.6 be_web/srv1"],
  );
});

test("a load balancer that stops polling is forgotten after a few of its intervals", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now });
  for (let i = 0; i < 4; i++) {
    ledger.record("10.0.0.5", "", UP, c.now(), true);
    c.advance(5000);
  }
  // Interval 5 s: forgotten after 3 of them without a probe (15 s), counting from the last one.
  c.advance(9000);
  assert.equal(ledger.pollers().length, 1);
  c.advance(2000);
  assert.equal(ledger.pollers().length, 0);
});

test("never forgotten sooner than 10 s, nor kept longer than 10 minutes", () => {
  const c = clock();
  const fast = createLedger({ now: c.now });
  for (let i = 0; i < 3; i++) {
    fast.record("10.0.0.5", "", UP, c.now(), true);
    c.advance(100);
  }
  c.advance(9800);
  assert.equal(fast.pollers().length, 1, "a 100 ms poller is kept 10 s");
  c.advance(300);
  assert.equal(fast.pollers().length, 0);
  const slow = createLedger({ now: c.now });
  for (let i = 0; i < 3; i++) {
    slow.record("10.0.0.5", "", UP, c.now(), true);
    c.advance(3_600_000);
  }
  assert.equal(slow.pollers().length, 0, "an hourly poller is not waited on for three hours");
});

test("a scan from many addresses cannot push out the load balancers that poll, nor grow the ledger", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now, maxPollers: 8, maxProbation: 4 });
  for (const address of ["10.0.0.5", "10.0.0.6"]) {
    ledger.record(address, "", UP, c.now(), true);
    ledger.record(address, "", UP, c.now(), true);
  }
  for (let i = 0; i < 100_000; i++) ledger.record(`192.0.2.${i % 250}.${i}`, "", UP, c.now(), true);
  assert.equal(ledger.size, 2 + 4, "bounded: the pollers and a full probation list");
  const known = ledger.pollers().map((p) => p.address);
  assert.ok(known.includes("10.0.0.5") && known.includes("10.0.0.6"), known.join(", "));
});

test("past its bound, the stalest poller gives way to a new one that comes back", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now, maxPollers: 2, maxProbation: 2 });
  for (const address of ["a", "b", "c"]) {
    ledger.record(address, "", UP, c.now(), true);
    c.advance(10);
    ledger.record(address, "", UP, c.now(), true);
    c.advance(10);
  }
  assert.deepEqual(
    ledger.pollers().map((p) => p.address),
    ["b", "c"],
  );
});

test("a load balancer polling less often than every 10 s joins at its second probe, however often it is read", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now });
  ledger.record("10.0.0.5", "", UP, c.now(), true);
  assert.deepEqual(
    ledger.pollers().map((p) => [p.address, p.established]),
    [["10.0.0.5", false]],
  );
  // Read (scraped, waited on) every 5 s between its probes, 30 s apart.
  for (let i = 0; i < 6; i++) {
    c.advance(5000);
    ledger.pollers();
  }
  assert.deepEqual(ledger.pollers(), [], "seen once, 30 s ago: not reported");
  ledger.record("10.0.0.5", "", UP, c.now(), true);
  const [lb] = ledger.pollers();
  assert.equal(lb?.established, true);
  assert.equal(lb?.intervalMs, 30_000);
  // Kept for three of its intervals now.
  c.advance(85_000);
  assert.equal(ledger.pollers().length, 1);
  c.advance(10_000);
  assert.equal(ledger.pollers().length, 0);
});

test("an address seen once is dropped after 10 minutes, or sooner when newer ones push it out", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now, maxProbation: 2 });
  ledger.record("10.0.0.5", "", UP, c.now(), true);
  c.advance(10 * 60_000 + 1);
  ledger.pollers();
  assert.equal(ledger.size, 0);
  ledger.record("a", "", UP, c.now(), true);
  ledger.record("b", "", UP, c.now(), true);
  ledger.record("c", "", UP, c.now(), true);
  assert.equal(ledger.size, 2);
  assert.deepEqual(
    ledger.pollers().map((p) => p.address),
    ["b", "c"],
  );
});

test("heldMaxconn: a reply's maxconn word replaces the one held; a reply without one keeps it", () => {
  const cases: [held: number | undefined, reply: string, after: number | undefined][] = [
    [undefined, "up ready 100%\n", undefined],
    [undefined, "up ready 100% maxconn:10\n", 10],
    [10, "up ready 100% maxconn:20\n", 20],
    [20, "up ready 100%\n", 20],
    [20, "up ready 100% maxconn:0\n", 0],
    [0, "down ready 50%\n", 0],
    // A description is not read by HAProxy as commands.
    [7, "up ready 100% # maxconn:99\n", 7],
    [undefined, "maint 100% maxconn:65535 # deploy\n", 65535],
  ];
  for (const [held, reply, after] of cases) {
    assert.equal(heldMaxconn(held, line(reply)), after, `${held} then ${JSON.stringify(reply)}`);
  }
});

test("keptMaxconn: the held limit HAProxy keeps only when the current reply says none", () => {
  const cases: [held: number | undefined, current: string, kept: number | undefined][] = [
    [undefined, "up ready 100%\n", undefined],
    [10, "up ready 100%\n", 10],
    [0, "up ready 100%\n", 0],
    [10, "up ready 100% maxconn:0\n", undefined],
    [10, "up ready 100% maxconn:10\n", undefined],
    [10, "up ready 100% # maxconn:10\n", 10],
  ];
  for (const [held, current, kept] of cases) {
    assert.equal(keptMaxconn(held, line(current)), kept, `${held} now ${JSON.stringify(current)}`);
  }
});

test("the ledger holds the last maxconn heard, per load balancer, not one only given", () => {
  const c = clock();
  const ledger = createLedger({ now: c.now });
  const limited = line("up ready 100% maxconn:10\n");
  ledger.record("10.0.0.5", "", limited, c.now(), true);
  ledger.record("10.0.0.6", "", limited, c.now(), false);
  c.advance(2000);
  ledger.record("10.0.0.5", "", UP, c.now(), true);
  ledger.record("10.0.0.6", "", UP, c.now(), true);
  // A late close of an older probe changes nothing it heard since.
  ledger.record("10.0.0.5", "", line("up ready 100% maxconn:3\n"), c.now() - 1000, true);
  const held = Object.fromEntries(ledger.pollers().map((p) => [p.address, p.heldMaxconn]));
  assert.deepEqual(held, { "10.0.0.5": 10, "10.0.0.6": undefined });
  c.advance(2000);
  ledger.record("10.0.0.5", "", line("up ready 100% maxconn:0\n"), c.now(), true);
  assert.equal(ledger.pollers().find((p) => p.address === "10.0.0.5")?.heldMaxconn, 0);
});
