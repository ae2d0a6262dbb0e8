import assert from "node:assert/strict";
import { test } from "node:test";
import { describeHistory, localTime } from "../../../src/cli/history.js";
import type { State } from "../../../src/core/state.js";

const NOW = Date.parse("2026-11-25T14:20:00.000Z");
/** UTC hours and minutes, so the table does not depend on the machine's time zone. */
const utc = (ms: number) => new Date(ms).toISOString().slice(11, 16);

test("describeHistory: the record and the pending expiry as status shows them", () => {
  const cases: [string, State, string | undefined][] = [
    ["an older file", { status: "UP" }, undefined],
    [
      "the issue's example",
      {
        status: "DRAIN",
        description: "deploy 1.4.2",
        changed: {
          at: "2026-11-25T14:02:00.000Z",
          via: "cli",
          by: "alice",
          reason: "deploy 1.4.2",
        },
        expires: { at: "2026-11-25T14:32:00.000Z", returns: { status: "UP" } },
      },
      "DRAIN since 14:02 by alice: deploy 1.4.2; returns to UP at 14:32 (in 12m)",
    ],
    [
      "a signal",
      {
        status: "DOWN",
        changed: { at: "2026-11-25T14:19:30.000Z", via: "signal", signal: "SIGUSR2" },
      },
      "DOWN since 14:19 by SIGUSR2",
    ],
    [
      "a reload and an expiry",
      { status: "UP", changed: { at: "2026-11-25T14:00:00.000Z", via: "reload" } },
      "UP since 14:00 (the file was edited and read again)",
    ],
    [
      "an expired change",
      { status: "UP", changed: { at: "2026-11-25T14:00:00.000Z", via: "expiry" } },
      "UP since 14:00 (a change expired)",
    ],
    [
      "a service, and a service that goes",
      {
        status: "UP",
        services: { web: { status: "MAINT" } },
        changed: {
          at: "2026-11-25T14:02:00.000Z",
          via: "cli",
          by: "root (sudo by bob)",
          service: "web",
        },
        expires: { at: "2026-11-25T15:02:00.000Z", service: "web", returns: null },
      },
      "service web MAINT since 14:02 by root (sudo by bob); service web goes at 15:02 (in 42m)",
    ],
    [
      "a deadline passed while no agent ran",
      {
        status: "MAINT",
        changed: { at: "2026-11-25T13:00:00.000Z", via: "cli", by: "alice" },
        expires: { at: "2026-11-25T14:00:00.000Z", returns: { status: "UP" } },
      },
      "MAINT since 13:00 by alice; returns to UP at 14:00 (due 20m ago: the agent applies it when it runs)",
    ],
    [
      "text from the file is shown escaped",
      {
        status: "DOWN",
        changed: { at: "2026-11-25T14:02:00.000Z", via: "cli", by: "eve", reason: "a\u202eb" },
      },
      "DOWN since 14:02 by eve: a\\u202eb",
    ],
  ];
  for (const [name, state, expected] of cases) {
    assert.equal(describeHistory(state, NOW, utc), expected, name);
  }
});

test("localTime: the time of day, and the date when it is not today", () => {
  const now = new Date(2026, 10, 25, 14, 20).getTime();
  assert.equal(localTime(new Date(2026, 10, 25, 9, 5).getTime(), now), "09:05");
  assert.equal(localTime(new Date(2026, 10, 26, 0, 1).getTime(), now), "2026-11-26 00:01");
});
