/**
 * Properties of the state codec and the reply over generated inputs (fast-check): whatever bytes
 * a state file holds, the agent ends with a valid state or MAINT and a reason, never an
 * exception; whatever valid state it holds, HAProxy reads exactly that state from the reply.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { MAX_DESCRIPTION_CHARS } from "../../../src/core/fields.js";
import { reply } from "../../../src/core/reply.js";
import {
  FALLBACK_STATE,
  MAX_SERVICE_NAME_CHARS,
  parseState,
  type ServiceState,
  STATUSES,
  type State,
  type StateResult,
  serialiseState,
  serviceState,
  validateState,
  withStatus,
} from "../../../src/core/state.js";
import { createOperator } from "../../../src/daemon/operator.js";
import { createLogger } from "../../../src/log.js";
import { intendedCommands, readAgentReply } from "../../haproxy-reply.js";

/** Enough runs to find edge cases in well under a second per property. */
const RUNS = 2000;
const encoder = new TextEncoder();

/** One line of printable text, as the state file allows it: no control or line separators. */
const descriptionChar = fc
  .string({ unit: "grapheme", minLength: 1, maxLength: 1 })
  .filter((c) => /^[^\p{Cc}\p{Zl}\p{Zp}]+$/u.test(c));
const description = fc
  .array(descriptionChar, { minLength: 1, maxLength: MAX_DESCRIPTION_CHARS })
  .map((chars) => chars.join(""))
  .filter(
    (text) => text.trim() === text && text !== "" && [...text].length <= MAX_DESCRIPTION_CHARS,
  );

/** Every valid state of one service, or of the instance without services. */
const validServiceState: fc.Arbitrary<ServiceState> = fc
  .record(
    {
      status: fc.constantFrom(...STATUSES),
      weight: fc.integer({ min: 0, max: 255 }),
      maxconn: fc.integer({ min: 0, max: 65535 }),
      description,
    },
    { requiredKeys: ["status"] },
  )
  .map((state) => ({ ...state }));

/** Service names: printable ASCII without spaces, including names that are Object's own. */
const serviceName = fc.oneof(
  fc.string({
    unit: fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)),
    minLength: 1,
    maxLength: MAX_SERVICE_NAME_CHARS,
  }),
  fc.constantFrom("__proto__", "toString", "constructor", "be_web/srv1", "0", "10"),
);

/** A plain object whose own entries are exactly these (a "__proto__" entry included). */
function record<T>(entries: readonly (readonly [string, T])[]): Record<string, T> {
  const result: Record<string, T> = {};
  for (const [name, value] of entries) {
    Object.defineProperty(result, name, { value, enumerable: true, writable: true });
  }
  return result;
}

/** Every valid state, with or without services. */
export const validState: fc.Arbitrary<State> = fc
  .tuple(
    validServiceState,
    fc.option(
      fc.uniqueArray(fc.tuple(serviceName, validServiceState), {
        maxLength: 5,
        selector: ([name]) => name,
      }),
    ),
  )
  .map(([state, services]) => {
    if (services === null) return state;
    // The order a JavaScript object keeps: integer-like names first, as JSON.parse makes them.
    return { ...state, services: record(Object.entries(record(services))) };
  });

/** A state file that is valid except for some bytes changed, dropped or added. */
const mutatedFile = fc
  .tuple(
    validState,
    fc.array(
      fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom("set", "drop", "add")),
      {
        minLength: 1,
        maxLength: 4,
      },
    ),
  )
  .map(([state, edits]) => {
    const bytes = [...encoder.encode(serialiseState(state))];
    for (const [at, value, kind] of edits) {
      const i = at % (bytes.length + 1);
      if (kind === "set") bytes[i] = value;
      else if (kind === "drop") bytes.splice(i, 1);
      else bytes.splice(i, 0, value);
    }
    return Uint8Array.from(bytes);
  });

/** Anything a file could hold: raw bytes, any JSON, JSON objects near the schema, damaged files. */
const anyFile = fc.oneof(
  fc.uint8Array({ maxLength: 512 }),
  fc.jsonValue().map((value) => encoder.encode(JSON.stringify(value))),
  fc
    .dictionary(
      fc.constantFrom(
        "status",
        "weight",
        "maxconn",
        "description",
        "wieght",
        "__proto__",
        "services",
      ),
      fc.oneof(fc.constantFrom(...STATUSES, "up", "FAILED"), fc.jsonValue()),
    )
    .map((value) => encoder.encode(JSON.stringify(value))),
  mutatedFile,
);

/** The result is a valid state, or a reason on one line: nothing else. */
function assertWellFormed(result: StateResult): void {
  if (result.ok) {
    assert.deepEqual(validateState(result.state), result);
    assert.deepEqual(parseState(encoder.encode(serialiseState(result.state))), result);
  } else {
    assert.equal(typeof result.reason, "string");
    assert.ok(result.reason.length > 0);
    assert.doesNotMatch(result.reason, /[\p{Cc}\p{Zl}\p{Zp}]/u, "no control character");
  }
}

describe("properties of the state codec", () => {
  test("any bytes as a state file give a valid state or a reason, never an exception", () => {
    fc.assert(
      fc.property(anyFile, (bytes) => assertWellFormed(parseState(bytes))),
      { numRuns: RUNS },
    );
  });

  test("any bytes as a state file leave the agent with that state or exactly MAINT", async () => {
    const lines: string[] = [];
    const log = createLogger({ write: (line) => lines.push(line), journal: true });
    await fc.assert(
      fc.asyncProperty(anyFile, async (bytes) => {
        const parsed = parseState(bytes);
        const agent = createOperator({
          store: { path: "/fake/state.json", load: async () => parsed, save: async () => {} },
          log,
          initial: { status: "UP", weight: 7 },
        });
        lines.length = 0;
        await agent.command("reload", "SIGHUP");
        assert.deepEqual(agent.state, parsed.ok ? parsed.state : FALLBACK_STATE);
        if (!parsed.ok) assert.ok(lines.some((line) => line.includes(parsed.reason)));
      }),
      { numRuns: RUNS / 4 },
    );
  });

  test("parse after serialise is the identity, whatever the key order and spacing", () => {
    fc.assert(
      fc.property(validState, fc.boolean(), (state, pretty) => {
        assert.deepEqual(parseState(encoder.encode(serialiseState(state))), { ok: true, state });
        // An operator's own file: keys in another order, indented, with a byte-order mark.
        const reversed = Object.fromEntries(Object.entries(state).reverse());
        const text = `\ufeff${JSON.stringify(reversed, null, pretty ? 2 : 0)}\n`;
        assert.deepEqual(parseState(encoder.encode(text)), { ok: true, state });
      }),
      { numRuns: RUNS },
    );
  });

  test("serialise is one line of JSON with the fields in a fixed order", () => {
    fc.assert(
      fc.property(validState, (state) => {
        const text = serialiseState(state);
        assert.match(
          text,
          /^\{"status":"[A-Z]+"(,"weight":\d+)?(,"maxconn":\d+)?(,"description":.*)?(,"services":\{.*\})?\}\n$/,
        );
        assert.equal(text.indexOf("\n"), text.length - 1);
      }),
      { numRuns: RUNS },
    );
  });
});

describe("properties of the reply", () => {
  test("any valid state gives one line that HAProxy reads as exactly that state", () => {
    fc.assert(
      fc.property(validState, (state) => {
        const line = reply(state);
        assert.match(line, /^[^\r\n]+\n$/, "one line ending in \\n");
        assert.deepEqual(readAgentReply(line), intendedCommands(state));
      }),
      { numRuns: RUNS },
    );
  });

  test("any valid state is said in words every supported HAProxy reads (2.6's), never 3.1's weight:N", () => {
    // HAProxy 2.6 and 3.0 report any other word as an error; 3.1 adds weight:N and weight:N%.
    const word =
      /^(up|down|fail|stopped|ready|drain|maint|(25[0-6]|2[0-4][0-9]|1?[0-9]?[0-9])%|maxconn:[0-9]+)$/;
    fc.assert(
      fc.property(validState, (state) => {
        const line = reply(state);
        const commands = line.slice(0, line.search(/#|\n/)).trim().split(" ");
        for (const command of commands) assert.match(command, word, line);
      }),
      { numRuns: RUNS },
    );
  });

  test("each service is answered its own state while the instance is UP or READY, else the instance's", () => {
    fc.assert(
      fc.property(validState, fc.constantFrom(...STATUSES), (state, status) => {
        const instance = withStatus(state, status);
        const inService = status === "UP" || status === "READY";
        for (const [name, service] of Object.entries(state.services ?? {})) {
          const line = reply(serviceState(instance, name));
          assert.match(line, /^[^\r\n]+\n$/, "one line ending in \\n");
          assert.deepEqual(readAgentReply(line), intendedCommands(inService ? service : instance));
        }
        // No name, or a name the file does not have, gets the instance's own state.
        for (const name of [undefined, "", "no such service", "toString"]) {
          if (name !== undefined && Object.hasOwn(state.services ?? {}, name)) continue;
          assert.equal(reply(serviceState(instance, name)), reply(instance));
        }
      }),
      { numRuns: RUNS },
    );
  });

  test("the reply depends on the state only: equal states, equal replies", () => {
    fc.assert(
      fc.property(validState, (state) => {
        const copy = parseState(encoder.encode(serialiseState(state)));
        assert.ok(copy.ok);
        assert.equal(reply(copy.state), reply(state));
      }),
      { numRuns: RUNS },
    );
  });
});
