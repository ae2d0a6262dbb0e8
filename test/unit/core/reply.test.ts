import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { maxconnWord, reply } from "../../../src/core/reply.js";
import { STATUSES, type State } from "../../../src/core/state.js";
import { INTENDED as EXPECTED, readAgentReply } from "../../haproxy-reply.js";

describe("reply", () => {
  const exact: [State, string][] = [
    [{ status: "UP" }, "up ready 100%\n"],
    [{ status: "READY", weight: 100 }, "up ready 100%\n"],
    [{ status: "DOWN", maxconn: 10 }, "down ready 100% maxconn:10\n"],
    [{ status: "UP", maxconn: 300, weight: 77 }, "up ready 77% maxconn:300\n"],
    [{ status: "DRAIN", weight: 0 }, "up drain 0%\n"],
    [{ status: "MAINT" }, "maint 100%\n"],
    [{ status: "FAIL", weight: 255, maxconn: 0 }, "fail ready 255% maxconn:0\n"],
    [{ status: "STOPPED" }, "stopped ready 100%\n"],
    [{ status: "DOWN", description: "deploy 1.4.2" }, "down ready 100% # deploy 1.4.2\n"],
    [
      { status: "UP", weight: 5, maxconn: 6, description: "# a, b" },
      "up ready 5% maxconn:6 # # a, b\n",
    ],
  ];
  for (const [state, line] of exact) {
    test(`${JSON.stringify(state)} -> ${JSON.stringify(line)}`, () => {
      assert.equal(reply(state), line);
    });
  }

  for (const status of STATUSES) {
    for (const weight of [undefined, 0, 1, 50, 255]) {
      for (const maxconn of [undefined, 0, 300, 65535]) {
        const description = maxconn === 300 ? "maint, down 50% maxconn:1 # x" : undefined;
        const state: State = {
          status,
          ...(weight === undefined ? {} : { weight }),
          ...(maxconn === undefined ? {} : { maxconn }),
          ...(description === undefined ? {} : { description }),
        };
        test(`HAProxy reads ${JSON.stringify(state)} as meant`, () => {
          const text = reply(state);
          assert.match(text, /^[^\r\n]+\n$/, "exactly one line ending in \\n");
          const read = readAgentReply(text);
          assert.notEqual(read, "incomplete");
          if (read === "incomplete") return;
          assert.deepEqual(read.unknown, [], "no word HAProxy reports as an error");
          assert.equal(read.health, EXPECTED[status].health);
          assert.equal(read.admin, EXPECTED[status].admin);
          assert.equal(read.weightPercent, weight ?? 100, "no weight restores the configured one");
          assert.equal(read.maxconn, maxconn, "maxconn only when the state has one");
          assert.equal(read.description, description, "words in a description are not commands");
        });
      }
    }
  }
});

test("maxconnWord reads the maxconn a reply says, none in a description", () => {
  const cases: [State, number | undefined][] = [
    [{ status: "UP" }, undefined],
    [{ status: "UP", maxconn: 0 }, 0],
    [{ status: "DOWN", maxconn: 10, weight: 5 }, 10],
    [{ status: "MAINT", maxconn: 65535, description: "x" }, 65535],
    [{ status: "UP", description: "maxconn:10" }, undefined],
    [{ status: "DRAIN", reason: "a # maxconn:3" }, undefined],
  ];
  for (const [state, word] of cases) {
    assert.equal(maxconnWord(reply(state)), word, JSON.stringify(state));
  }
});
