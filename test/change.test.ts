import assert from "node:assert/strict";
import { test } from "node:test";
import { applyChange, type Change } from "../src/core/change.js";
import type { State } from "../src/core/state.js";

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
    assert.deepEqual(applyChange(from, change), { ok: true, state: expected }, name);
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
      "a service without a valid instance",
      undefined,
      { status: "UP", service: "web" },
      "the file has no valid instance state to add service web to",
      "no-instance",
    ],
  ];
  for (const [name, from, change, reason, code] of cases) {
    const result = applyChange(from, change);
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
  const more = applyChange(full, { status: "UP", service: "one-too-many" });
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
  const larger = applyChange(big, { status: "DOWN" });
  assert.deepEqual(larger, {
    ok: false,
    code: "invalid",
    reason: "the state file would be larger than 65536 bytes",
  });
});
