import assert from "node:assert/strict";
import { test } from "node:test";
import {
  applyChange,
  applySignal,
  type Change,
  expire,
  formatDuration,
  MAX_FOR_MS,
  msUntilExpiry,
  type Origin,
  parseDuration,
} from "../../../src/core/change.js";
import { parseState, type State, serialiseState } from "../../../src/core/state.js";

const AT = "2026-11-25T14:02:00.000Z";
const AT_MS = Date.parse(AT);
const ORIGIN: Origin = { atMs: AT_MS, via: "cli", by: "alice" };
/** The record a change by ORIGIN leaves, for the instance or a service. */
const byAlice = (service?: string) => ({
  at: AT,
  via: "cli" as const,
  by: "alice",
  ...(service === undefined ? {} : { service }),
});

const current: State = {
  status: "UP",
  weight: 30,
  maxconn: 9,
  description: "canary",
  services: { web: { status: "DRAIN", weight: 5 } },
};

test("applyChange: the next state from the current one and the flags", () => {
  const cases: [string, State | undefined, Change, State][] = [
    [
      "a status keeps the other fields and services",
      current,
      { status: "DOWN" },
      { ...current, status: "DOWN" },
    ],
    [
      "named fields replace, null removes",
      current,
      { status: "UP", weight: 50, maxconn: null, description: null },
      { status: "UP", weight: 50, services: current.services ?? {} },
    ],
    [
      "a missing or invalid file starts afresh",
      undefined,
      { status: "DRAIN", weight: 0 },
      { status: "DRAIN", weight: 0 },
    ],
    [
      "a service keeps its own fields",
      current,
      { status: "UP", service: "web" },
      { ...current, services: { web: { status: "UP", weight: 5 } } },
    ],
    [
      "a new service starts afresh and comes last",
      current,
      { status: "MAINT", service: "api", maxconn: 3 },
      {
        ...current,
        services: { web: { status: "DRAIN", weight: 5 }, api: { status: "MAINT", maxconn: 3 } },
      },
    ],
    [
      "a service's fields never touch the instance's",
      current,
      { status: "DOWN", service: "web", description: "deploy" },
      { ...current, services: { web: { status: "DOWN", weight: 5, description: "deploy" } } },
    ],
  ];
  for (const [name, from, change, expected] of cases) {
    assert.deepEqual(
      applyChange(from, change, ORIGIN),
      { ok: true, state: { ...expected, changed: byAlice(change.service) } },
      name,
    );
  }
});

test("applyChange: what is refused, and why", () => {
  const cases: [string, State | undefined, Change, string, "invalid" | "no-instance"][] = [
    [
      "text for a number",
      current,
      { status: "UP", weight: "50%" },
      'weight must be an integer 0-255, got "50%"',
      "invalid",
    ],
    [
      "out of range",
      current,
      { status: "UP", maxconn: 70000 },
      "maxconn must be an integer 0-65535, got 70000",
      "invalid",
    ],
    [
      "a fraction",
      current,
      { status: "UP", weight: 1.5 },
      "weight must be an integer 0-255, got 1.5",
      "invalid",
    ],
    [
      "a bad description in a service",
      current,
      { status: "UP", service: "web", description: " x" },
      'services["web"]: description must be 1-200 characters',
      "invalid",
    ],
    [
      "a reason HAProxy could not show as written",
      current,
      { status: "DOWN", reason: "two\nlines" },
      "reason must be 1-200 characters of printable text on one line, as a description",
      "invalid",
    ],
    [
      "an expiry of no time",
      current,
      { status: "DOWN", forMs: 0 },
      "a change may expire after 1 ms to a year, got 0 ms",
      "invalid",
    ],
    [
      "an expiry past a year",
      current,
      { status: "DOWN", forMs: MAX_FOR_MS + 1 },
      "a change may expire after 1 ms to a year",
      "invalid",
    ],
    [
      "a service without a valid instance",
      undefined,
      { status: "UP", service: "web" },
      "the file has no valid instance state to add service web to",
      "no-instance",
    ],
  ];
  for (const [name, from, change, reason, code] of cases) {
    const result = applyChange(from, change, ORIGIN);
    assert.ok(!result.ok, name);
    assert.equal(result.code, code, name);
    assert.ok(result.reason.startsWith(reason), `${name}: ${result.reason}`);
  }
});

test("applyChange: the whole file is checked as the agent will read it", () => {
  const names = Array.from({ length: 1000 }, (_, i) => `s${i}`);
  const full: State = {
    status: "UP",
    services: Object.fromEntries(names.map((name) => [name, { status: "UP" as const }])),
  };
  const more = applyChange(full, { status: "UP", service: "one-too-many" }, ORIGIN);
  assert.deepEqual(more, {
    ok: false,
    code: "invalid",
    reason: "the state file would be invalid: services has 1001 entries; expected at most 1000",
  });
  const long = "d".repeat(190);
  const big: State = {
    status: "UP",
    services: Object.fromEntries(
      names.slice(0, 600).map((name) => [name, { status: "UP" as const, description: long }]),
    ),
  };
  const larger = applyChange(big, { status: "DOWN" }, ORIGIN);
  assert.deepEqual(larger, {
    ok: false,
    code: "invalid",
    reason: "the state file would be larger than 65536 bytes",
  });
});

test("applyChange: a user's name the file cannot keep is refused", () => {
  const result = applyChange(current, { status: "DOWN" }, { ...ORIGIN, by: "eve\u202e" });
  assert.ok(!result.ok);
  assert.match(
    result.reason,
    /^the state file would be invalid: changed: by must be a user's name/,
  );
});

test("a reason is shown in place of the description until the next change; a description stays", () => {
  const drained = applyChange(current, { status: "DRAIN", reason: "deploy 1.4.2" }, ORIGIN);
  assert.ok(drained.ok);
  assert.equal(drained.state.reason, "deploy 1.4.2");
  assert.equal(drained.state.description, "canary", "the standing description is kept");
  assert.deepEqual(drained.state.changed, { ...byAlice(), reason: "deploy 1.4.2" });

  // Whatever comes between: another service's change, a signal, an expiry, a reload.
  const web = applyChange(drained.state, { status: "DRAIN", service: "web" }, ORIGIN);
  assert.ok(web.ok);
  assert.equal(web.state.reason, "deploy 1.4.2", "another target's change leaves it");
  const up = applyChange(web.state, { status: "UP" }, ORIGIN);
  assert.ok(up.ok);
  assert.equal(up.state.reason, undefined, "the instance's next change removes it");
  assert.equal(up.state.description, "canary");
  const signalled = applySignal(drained.state, "UP", {
    atMs: AT_MS,
    via: "signal",
    signal: "SIGUSR1",
  });
  assert.equal(signalled.reason, undefined);
  assert.equal(signalled.description, "canary");

  // A service's reason is its own.
  const webDown = applyChange(current, { status: "DOWN", service: "web", reason: "disk" }, ORIGIN);
  assert.ok(webDown.ok);
  assert.equal(webDown.state.services?.web?.reason, "disk");
  assert.equal(webDown.state.reason, undefined);
  const instance = applyChange(webDown.state, { status: "DOWN" }, ORIGIN);
  assert.ok(instance.ok);
  assert.equal(instance.state.services?.web?.reason, "disk");
  const webUp = applyChange(webDown.state, { status: "UP", service: "web" }, ORIGIN);
  assert.ok(webUp.ok);
  assert.equal(webUp.state.services?.web?.reason, undefined);
  // A reason and a description together: HAProxy shows the reason.
  const both = applyChange(current, { status: "DOWN", reason: "why", description: "what" }, ORIGIN);
  assert.ok(both.ok);
  assert.deepEqual([both.state.reason, both.state.description], ["why", "what"]);
});

test("a change made after an expiry was due starts from the state that returned", () => {
  const hour = 3_600_000;
  const drained = applyChange(
    { status: "UP", weight: 100 },
    { status: "DRAIN", weight: 0, forMs: hour },
    ORIGIN,
  );
  assert.ok(drained.ok);
  // An hour and more later, with no agent to apply the expiry: `hapgent up` on the file.
  const later: Origin = { ...ORIGIN, atMs: AT_MS + 2 * hour };
  const up = applyChange(drained.state, { status: "UP" }, later);
  assert.ok(up.ok);
  assert.equal(up.state.weight, 100, "the weight of the expired drain does not carry over");
  assert.equal(up.cancelled, undefined, "an expiry that was due is not cancelled, it happened");
  // Before the deadline, the change replaces the pending expiry and says so.
  const early = applyChange(drained.state, { status: "UP" }, ORIGIN);
  assert.ok(early.ok);
  assert.equal(early.state.weight, 0);
  assert.deepEqual(early.cancelled, drained.state.expires);
  // What returns is `before` when the agent answers something the file does not hold.
  const answered: State = { status: "DOWN", weight: 5 };
  const fromAgent = applyChange(undefined, { status: "DRAIN", forMs: hour }, ORIGIN, answered);
  assert.ok(fromAgent.ok);
  assert.deepEqual(fromAgent.state.expires?.returns, { status: "DOWN", weight: 5 });
});

test("--for: what returns, and when", () => {
  const hour = 3_600_000;
  const at = new Date(AT_MS + hour).toISOString();
  const instance = applyChange(current, { status: "DRAIN", forMs: hour, reason: "deploy" }, ORIGIN);
  assert.ok(instance.ok);
  assert.deepEqual(instance.state.expires, {
    at,
    returns: { status: "UP", weight: 30, maxconn: 9, description: "canary" },
  });
  assert.equal(instance.state.reason, "deploy");
  const web = applyChange(current, { status: "MAINT", service: "web", forMs: hour }, ORIGIN);
  assert.ok(web.ok);
  assert.deepEqual(web.state.expires, {
    at,
    service: "web",
    returns: { status: "DRAIN", weight: 5 },
  });
  const added = applyChange(current, { status: "UP", service: "api", forMs: hour }, ORIGIN);
  assert.ok(added.ok);
  assert.deepEqual(
    added.state.expires,
    { at, service: "api", returns: null },
    "a new service goes",
  );
  const fresh = applyChange(undefined, { status: "UP", forMs: hour }, ORIGIN);
  assert.ok(fresh.ok);
  assert.deepEqual(fresh.state.expires, { at, returns: { status: "MAINT" } }, "what it answered");
  // A later change replaces the pending expiry: with none, or with its own.
  const later = applyChange(instance.state, { status: "DOWN" }, ORIGIN);
  assert.ok(later.ok);
  assert.equal(later.state.expires, undefined);
  const nested = applyChange(instance.state, { status: "MAINT", forMs: 60_000 }, ORIGIN);
  assert.ok(nested.ok);
  assert.deepEqual(nested.state.expires?.returns, {
    status: "DRAIN",
    weight: 30,
    maxconn: 9,
    description: "canary",
    reason: "deploy",
  });
  // Every state made here is a valid file, and reads back the same.
  for (const made of [instance, web, added, fresh, nested]) {
    assert.ok(made.ok);
    const text = serialiseState(made.state);
    assert.deepEqual(parseState(new TextEncoder().encode(text)), { ok: true, state: made.state });
  }

  assert.equal(msUntilExpiry(instance.state, AT_MS), hour);
  assert.equal(msUntilExpiry(instance.state, AT_MS + 2 * hour), 0);
  assert.equal(msUntilExpiry(current, AT_MS), undefined);
  assert.equal(expire(instance.state, AT_MS + hour - 1), undefined, "not yet due");
  const record = { at, via: "expiry" };
  assert.deepEqual(expire(instance.state, AT_MS + hour), {
    status: "UP",
    weight: 30,
    maxconn: 9,
    description: "canary",
    changed: record,
    services: current.services,
  });
  assert.deepEqual(expire(web.state, AT_MS + hour), {
    ...current,
    changed: { ...record, service: "web" },
  });
  assert.deepEqual(expire(added.state, AT_MS + hour), {
    ...current,
    changed: { ...record, service: "api" },
  });
  // Due long ago (the agent was stopped, the clock jumped): applied with the time it is now.
  const late = expire(instance.state, AT_MS + 50 * hour);
  assert.equal(late?.changed?.at, new Date(AT_MS + 50 * hour).toISOString());
  assert.equal(late?.status, "UP");
});

test("signals keep the fields but the last reason, and end a pending expiry", () => {
  const drained = applyChange(
    current,
    { status: "DRAIN", reason: "deploy", forMs: 60_000 },
    ORIGIN,
  );
  assert.ok(drained.ok);
  const origin: Origin = { atMs: AT_MS + 1000, via: "signal", signal: "SIGUSR1" };
  assert.deepEqual(applySignal(drained.state, "UP", origin), {
    status: "UP",
    weight: 30,
    maxconn: 9,
    description: "canary",
    changed: { at: "2026-11-25T14:02:01.000Z", via: "signal", signal: "SIGUSR1" },
    services: current.services,
  });
  assert.deepEqual(applySignal(current, "DOWN", origin), {
    ...current,
    status: "DOWN",
    changed: { at: "2026-11-25T14:02:01.000Z", via: "signal", signal: "SIGUSR1" },
  });
});

test("durations", () => {
  const good: [string, number][] = [
    ["90s", 90_000],
    ["30m", 1_800_000],
    ["2h", 7_200_000],
    ["1d", 86_400_000],
    ["1h30m", 5_400_000],
    ["1d2h3m4s", 93_784_000],
    ["366d", MAX_FOR_MS],
  ];
  for (const [text, ms] of good) {
    assert.equal(parseDuration(text), ms, text);
    assert.equal(parseDuration(formatDuration(ms)), ms, `${text} round trip`);
  }
  for (const bad of [
    "",
    "0s",
    "0m0s",
    "90",
    "s",
    "1.5h",
    "-5m",
    "30m1h",
    "1h 30m",
    "1H",
    "367d",
    "2 h",
    "1w",
  ]) {
    assert.equal(parseDuration(bad), undefined, JSON.stringify(bad));
  }
  assert.equal(formatDuration(720_000), "12m");
  assert.equal(formatDuration(499), "0s");
  assert.equal(formatDuration(3_661_000), "1h1m1s");
});
