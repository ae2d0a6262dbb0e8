import assert from "node:assert/strict";
import { test } from "node:test";
import { answerFor, compose, RESTRICTION, type Verdict } from "../../../src/core/compose.js";
import { reply } from "../../../src/core/reply.js";
import { STATUSES, type State, type Status } from "../../../src/core/state.js";

/** The statuses from least to most restrictive, as an operator would rank them. */
const ORDER: Status[][] = [["UP", "READY"], ["DRAIN"], ["DOWN"], ["FAIL"], ["STOPPED"], ["MAINT"]];
const rank = (status: Status) => ORDER.findIndex((group) => group.includes(status));

test("compose: every pair of the operator's status and a check's verdict", () => {
  for (const operator of STATUSES) {
    for (const checked of STATUSES) {
      const verdict: Verdict = { status: checked, description: `check c: ${checked}` };
      const own = { status: operator, weight: 40, maxconn: 7, description: "canary" } as const;
      const got = compose(own, [verdict]);
      const checkWins = rank(checked) > rank(operator);
      const name = `${operator} + check ${checked}`;
      if (checkWins) {
        assert.deepEqual(
          got,
          { status: checked, weight: 40, maxconn: 7, description: `check c: ${checked}` },
          name,
        );
      } else {
        // The operator's state stands, the very same object.
        assert.equal(got, own, name);
      }
      // What matters most: an operator's DOWN, DRAIN, MAINT or STOPPED is never put back in.
      if (operator !== "UP" && operator !== "READY") {
        assert.ok(rank(got.status) >= rank(operator), `${name}: never less restrictive`);
      }
      assert.equal(RESTRICTION[checked] > RESTRICTION[operator], checkWins, name);
    }
  }
});

test("compose: the most restrictive verdict decides, the first of equals; none leaves the state", () => {
  const own: State = { status: "UP", reason: "deploy" };
  const drain: Verdict = { status: "DRAIN", description: "check a: 503 for 3 checks" };
  const down: Verdict = { status: "DOWN", description: "check b: refused for 3 checks" };
  const down2: Verdict = { status: "DOWN", description: "check c: timeout for 3 checks" };
  assert.deepEqual(compose(own, [drain, down, down2]), {
    status: "DOWN",
    description: "check b: refused for 3 checks",
  });
  assert.equal(compose(own, []), own);
  // The reply says why: the check's words replace the operator's reason.
  assert.equal(reply(compose(own, [drain])), "up drain 100% # check a: 503 for 3 checks\n");
});

test("answerFor: an instance check reaches every service but never loosens one; a service's check rules it alone", () => {
  const state: State = {
    status: "UP",
    services: {
      web: { status: "UP", weight: 50 },
      down: { status: "DOWN" },
      maint: { status: "MAINT", reason: "disk swap" },
    },
  };
  const none = { instance: [], services: new Map() };
  assert.equal(answerFor(state, "web", none), state.services?.web);
  const down: Verdict = { status: "DOWN", description: "check web: 500 for 3 checks" };
  const forWeb = { instance: [], services: new Map([["web", [down]]]) };
  assert.equal(
    reply(answerFor(state, "web", forWeb)),
    "down ready 50% # check web: 500 for 3 checks\n",
  );
  assert.equal(reply(answerFor(state, "down", forWeb)), "down ready 100%\n");
  assert.equal(reply(answerFor(state, undefined, forWeb)), "up ready 100%\n");

  const drain: Verdict = { status: "DRAIN", description: "check all: 503 for 1 check" };
  const drained = { instance: [drain], services: new Map() };
  assert.equal(
    reply(answerFor(state, undefined, drained)),
    "up drain 100% # check all: 503 for 1 check\n",
  );
  assert.equal(
    reply(answerFor(state, "web", drained)),
    "up drain 50% # check all: 503 for 1 check\n",
  );
  // The operator's DOWN and MAINT services stay as they are: an instance DRAIN loosens nothing.
  assert.equal(reply(answerFor(state, "down", drained)), "down ready 100%\n");
  assert.equal(reply(answerFor(state, "maint", drained)), "maint 100% # disk swap\n");
  const instanceDown = { instance: [down], services: new Map() };
  assert.equal(reply(answerFor(state, "maint", instanceDown)), "maint 100% # disk swap\n");
  // An instance the operator took out answers every service, whatever a service's check says.
  const out: State = { ...state, status: "DRAIN" };
  assert.equal(
    reply(answerFor(out, "web", forWeb)),
    "down ready 100% # check web: 500 for 3 checks\n",
  );
  assert.equal(reply(answerFor(out, "maint", none)), "up drain 100%\n");
  // A check of a service the file does not name has nothing to rule.
  const ghost = { instance: [], services: new Map([["ghost", [down]]]) };
  assert.equal(reply(answerFor(state, "ghost", ghost)), "up ready 100%\n");
});

test("compose: maxconn 0 is no limit, lowered by any limit and lowering none", () => {
  const cases: [own: number | undefined, verdict: number | undefined, got: number | undefined][] = [
    [undefined, 10, 10],
    [300, 10, 10],
    [10, 300, 10],
    [0, 10, 10],
    [300, 0, 300],
    [undefined, 0, undefined],
    [0, 0, 0],
  ];
  for (const [own, verdict, got] of cases) {
    const operator = { status: "UP", ...(own === undefined ? {} : { maxconn: own }) } as const;
    const composed = compose(operator, [
      { status: "UP", ...(verdict === undefined ? {} : { maxconn: verdict }), description: "f" },
    ]);
    assert.equal(composed.maxconn, got, `operator ${own}, verdict ${verdict}`);
  }
});
