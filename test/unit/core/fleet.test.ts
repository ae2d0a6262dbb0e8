/** The fleet's word, pure: which key speaks, what a bad value does, and how it composes. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { answerFor, compose, NO_VERDICTS } from "../../../src/core/compose.js";
import {
  chooseEntry,
  entryAfter,
  type FleetEntry,
  fleetVerdict,
  invalidSince,
  isFleetKey,
  type KeyValue,
  parseFleetValue,
} from "../../../src/core/fleet.js";
import { reply } from "../../../src/core/reply.js";
import { STATUSES, type State, type Status } from "../../../src/core/state.js";
import { firstLine } from "../../../src/etcd/options.js";

const KEYS = ["/hapgent/host/web-12", "/hapgent/group/web", "/hapgent/all"];
const ORDER: Status[][] = [["UP", "READY"], ["DRAIN"], ["DOWN"], ["FAIL"], ["STOPPED"], ["MAINT"]];
const rank = (status: Status) => ORDER.findIndex((group) => group.includes(status));

const value = (text: string, revision: number): KeyValue =>
  parseFleetValue(Buffer.from(text), revision);
const absent = (revision: number): KeyValue => ({ kind: "absent", revision });

test("chooseEntry: the first key that exists speaks; absent keys are passed over", () => {
  const cases: [string, (KeyValue | undefined)[], string | undefined][] = [
    ["nothing at all", [undefined, undefined, undefined], undefined],
    ["all absent", [absent(3), absent(3), absent(3)], undefined],
    ["only the fleet's", [absent(3), absent(3), value('{"status":"DRAIN"}', 2)], "/hapgent/all"],
    [
      "the group's over the fleet's",
      [absent(3), value('{"status":"UP"}', 3), value('{"status":"DRAIN"}', 2)],
      "/hapgent/group/web",
    ],
    [
      "the host's over both",
      [value('{"status":"DOWN"}', 4), value('{"status":"UP"}', 3), value('{"status":"DRAIN"}', 2)],
      "/hapgent/host/web-12",
    ],
  ];
  for (const [name, given, expected] of cases) {
    const values = new Map<string, KeyValue>();
    given.forEach((v, i) => {
      if (v !== undefined) values.set(KEYS[i] as string, v);
    });
    const { entry: word, problem } = chooseEntry(KEYS, values, undefined);
    assert.equal(word?.key, expected, name);
    assert.equal(problem, undefined, name);
  }
});

test("chooseEntry: a bad value keeps the word before, never lets a less specific key speak, never MAINT", () => {
  const before: FleetEntry = { key: "/hapgent/group/web", revision: 3, state: { status: "DRAIN" } };
  const values = new Map<string, KeyValue>([
    ["/hapgent/host/web-12", absent(9)],
    ["/hapgent/group/web", value('{"status":"UPP"}', 9)],
    ["/hapgent/all", value('{"status":"UP"}', 1)],
  ]);
  const kept = chooseEntry(KEYS, values, before);
  assert.equal(kept.entry, before, "the last good word stands");
  assert.match(
    kept.problem ?? "",
    /^\/hapgent\/group\/web \(revision 9\) is not a valid state: .*status.*; still following \/hapgent\/group\/web \(revision 3\)$/,
  );
  // With no word before, the fleet has none: the operator's state alone (not /hapgent/all's UP).
  const none = chooseEntry(KEYS, values, undefined);
  assert.equal(none.entry, undefined);
  assert.match(none.problem ?? "", /operator's state alone decides/);
  // A cached word and etcd's value at the same revision but different (etcd made anew): etcd's.
  const anew = new Map<string, KeyValue>([
    ["/hapgent/group/web", { kind: "state", revision: 3, state: { status: "UP", weight: 10 } }],
  ]);
  assert.deepEqual(chooseEntry(KEYS, anew, before).entry?.state, { status: "UP", weight: 10 });
  // The same word read again is the same object: nothing to log or save.
  const same = new Map<string, KeyValue>([
    ["/hapgent/group/web", { kind: "state", revision: 3, state: { status: "DRAIN" } }],
  ]);
  assert.equal(chooseEntry(KEYS, same, before).entry, before);
});

test("parseFleetValue: the state file's rules, with reasons; no pending expiry", () => {
  const bad: [string, RegExp][] = [
    ["", /empty/],
    ["{", /not valid JSON/],
    ['{"status":"up"}', /status/],
    ['{"status":"UP","weight":300}', /weight/],
    ['{"status":"UP","status":"DOWN"}', /twice|duplicate|more than once/],
    ['{"status":"UP","bogus":1}', /bogus/],
    [
      '{"status":"DRAIN","expires":{"at":"2030-01-01T00:00:00Z","returns":{"status":"UP"}}}',
      /expires is not applied to a fleet value.*lease/,
    ],
  ];
  for (const [text, reason] of bad) {
    const parsed = value(text, 7);
    assert.equal(parsed.kind, "invalid", text);
    assert.match((parsed as { reason: string }).reason, reason, text);
    assert.doesNotMatch((parsed as { reason: string }).reason, /^file /, "says value, not file");
  }
  const good = value('{"status":"DRAIN","weight":50,"services":{"api":{"status":"DOWN"}}}', 7);
  assert.deepEqual(good, {
    kind: "state",
    revision: 7,
    state: { status: "DRAIN", weight: 50, services: { api: { status: "DOWN" } } },
  });
});

test("compose with the fleet, every pair of statuses: more restrictive wins; weight and maxconn the lower", () => {
  for (const operator of STATUSES) {
    for (const fleet of STATUSES) {
      const word: FleetEntry = {
        key: "/hapgent/all",
        revision: 1,
        state: { status: fleet, weight: 60 },
      };
      const own: State = { status: operator, weight: 80, maxconn: 9 };
      const got = answerFor(own, undefined, NO_VERDICTS, (name) => fleetVerdict(word, name));
      const name = `${operator} + fleet ${fleet}`;
      assert.equal(got.status, rank(fleet) > rank(operator) ? fleet : operator, name);
      assert.equal(got.weight, 60, `${name}: the lower weight`);
      assert.equal(got.maxconn, 9, `${name}: the operator's maxconn, the fleet sets none`);
      assert.ok(rank(got.status) >= rank(operator), `${name}: never less restrictive`);
      assert.equal(got.description, "fleet /hapgent/all", `${name}: the fleet decided an axis`);
    }
  }
});

test("compose: a fleet weight above the operator's changes nothing; the operator's absent weight is 100%", () => {
  const up: State = { status: "UP", weight: 40, description: "canary" };
  const word = (state: State): FleetEntry => ({ key: "/k", revision: 1, state });
  const fleet = (state: State) => (name: string | undefined) => fleetVerdict(word(state), name);
  // The very object: nothing on any axis was lowered.
  assert.equal(answerFor(up, undefined, NO_VERDICTS, fleet({ status: "UP", weight: 90 })), up);
  assert.equal(
    reply(
      answerFor({ status: "UP" }, undefined, NO_VERDICTS, fleet({ status: "UP", weight: 150 })),
    ),
    "up ready 100%\n",
  );
  assert.equal(
    reply(
      answerFor(
        { status: "UP" },
        undefined,
        NO_VERDICTS,
        fleet({ status: "UP", maxconn: 30, reason: "zone b" }),
      ),
    ),
    "up ready 100% maxconn:30 # fleet /k: zone b\n",
  );
  // The operator's MAINT with its reason stays whole; the fleet's lower weight still applies.
  const maint: State = { status: "MAINT", reason: "disk swap" };
  const got = answerFor(maint, undefined, NO_VERDICTS, fleet({ status: "UP", weight: 10 }));
  assert.equal(got.status, "MAINT");
  assert.equal(got.weight, 10);
  // The decider of the status names itself over one that only lowered the weight.
  const both = compose({ status: "UP" }, [
    { status: "UP", weight: 20, description: "fleet /a" },
    { status: "DRAIN", description: "check web: 503 for 3 checks" },
  ]);
  assert.deepEqual(both, {
    status: "DRAIN",
    weight: 20,
    description: "check web: 503 for 3 checks",
  });
});

test("answerFor with the fleet's services: a service the fleet names gets its own word, others the fleet's instance word", () => {
  const local: State = {
    status: "UP",
    services: { api: { status: "UP" }, web: { status: "UP" }, admin: { status: "MAINT" } },
  };
  const word: FleetEntry = {
    key: "/hapgent/group/web",
    revision: 5,
    state: { status: "UP", services: { api: { status: "DRAIN", reason: "api migration" } } },
  };
  const fleet = (name: string | undefined) => fleetVerdict(word, name);
  assert.equal(
    reply(answerFor(local, "api", NO_VERDICTS, fleet)),
    "up drain 100% # fleet /hapgent/group/web: api migration\n",
  );
  assert.equal(reply(answerFor(local, "web", NO_VERDICTS, fleet)), "up ready 100%\n");
  assert.equal(reply(answerFor(local, "admin", NO_VERDICTS, fleet)), "maint 100%\n");
  // A name the local file lacks is answered as the instance, and the fleet speaks for the instance.
  assert.equal(reply(answerFor(local, "nope", NO_VERDICTS, fleet)), "up ready 100%\n");
  // The fleet taking the whole instance out takes every service out.
  const out: FleetEntry = {
    key: "/hapgent/all",
    revision: 6,
    state: { status: "DOWN", services: { api: { status: "UP" } } },
  };
  for (const name of [undefined, "api", "web"]) {
    assert.equal(
      answerFor(local, name, NO_VERDICTS, (n) => fleetVerdict(out, n)).status,
      "DOWN",
      String(name),
    );
  }
});

test("isFleetKey: what HAPGENT_ETCD_KEYS and hapgent fleet accept", () => {
  for (const key of [
    "/hapgent/all",
    "/a",
    "/hapgent/host/web-12.example.com",
    `/${"x".repeat(511)}`,
  ]) {
    assert.ok(isFleetKey(key), key);
  }
  for (const key of ["", "hapgent/all", "/with space", "/tab\t", "/é", `/${"x".repeat(512)}`]) {
    assert.ok(!isFleetKey(key), key);
  }
});

test("firstLine: a password file's first line, without its line end, is the password", () => {
  for (const [text, password] of [
    ["agent-pw\n", "agent-pw"],
    ["agent-pw", "agent-pw"],
    ["agent-pw\r\n", "agent-pw"],
    ["agent-pw\nsecond line\n", "agent-pw"],
    ["agent-pw\r\nsecond line", "agent-pw"],
    ["  spaced pw \t\n", "  spaced pw \t"],
    ["\nagent-pw\n", ""],
    ["", ""],
  ] as const) {
    assert.equal(firstLine(Buffer.from(text)), password, JSON.stringify(text));
  }
});

test("entryAfter: the word before an invalid value, as an agent watching all along keeps it", () => {
  const [host, group] = KEYS as [string, string, string];
  const before = new Map([
    [host, absent(4)],
    [group, value('{"status":"DRAIN"}', 3)],
  ]);
  const now = new Map([
    [host, value('{"status":"UP",}', 5)],
    [group, value('{"status":"DRAIN"}', 3)],
  ]);
  assert.equal(invalidSince(KEYS, now), 5);
  assert.equal(invalidSince(KEYS, before), undefined);
  assert.equal(entryAfter(KEYS, [now]).entry, undefined, "no history: no word before");
  const chosen = entryAfter(KEYS, [before, now]);
  assert.equal(chosen.entry?.key, group);
  assert.equal(chosen.entry?.revision, 3);
  assert.match(chosen.problem ?? "", /still following \/hapgent\/group\/web \(revision 3\)/);
  assert.deepEqual(
    entryAfter(KEYS, [before, now]),
    chooseEntry(KEYS, now, chooseEntry(KEYS, before, undefined).entry),
  );
});
