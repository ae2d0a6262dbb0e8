import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  FALLBACK_STATE,
  formatState,
  hasService,
  MAX_SERVICES,
  MAX_STATE_FILE_BYTES,
  parseState,
  STATUSES,
  type State,
  serialiseState,
  serviceState,
  validateState,
  withService,
  withStatus,
} from "../../../src/core/state.js";

const STATUS_REASON = "status must be one of UP, DOWN, READY, DRAIN, FAIL, MAINT, STOPPED,";
const bytes = (text: string) => new TextEncoder().encode(text);

describe("parseState accepts", () => {
  for (const status of STATUSES) {
    test(`status ${status}`, () => {
      assert.deepEqual(parseState(bytes(`{"status":"${status}"}`)), {
        ok: true,
        state: { status },
      });
    });
  }
  const good: [string, object][] = [
    ['{"status":"UP","weight":0}', { status: "UP", weight: 0 }],
    ['{"status":"UP","weight":255}', { status: "UP", weight: 255 }],
    ['{"status":"DOWN","maxconn":0}', { status: "DOWN", maxconn: 0 }],
    ['{"status":"DOWN","maxconn":65535}', { status: "DOWN", maxconn: 65535 }],
    ['{"maxconn":300,"weight":77,"status":"UP"}', { status: "UP", weight: 77, maxconn: 300 }],
    ['  {"status" : "READY", "weight": 100}\n\n', { status: "READY", weight: 100 }],
    ['{"status":"UP","weight":50.0}', { status: "UP", weight: 50 }],
    ['{"status":"UP","weight":1e2}', { status: "UP", weight: 100 }],
    ['\uFEFF{"status":"UP"}', { status: "UP" }],
    [
      '{"status":"DOWN","description":"deploy 1.4.2"}',
      { status: "DOWN", description: "deploy 1.4.2" },
    ],
    [
      '{"status":"UP","description":"# ünïcode, 100% ok"}',
      { status: "UP", description: "# ünïcode, 100% ok" },
    ],
    [
      `{"status":"UP","description":"${"é".repeat(200)}"}`,
      { status: "UP", description: "é".repeat(200) },
    ],
  ];
  for (const [text, state] of good) {
    test(JSON.stringify(text), () => {
      assert.deepEqual(parseState(bytes(text)), { ok: true, state });
    });
  }
  test("-0 as 0", () => {
    const result = parseState(bytes('{"status":"UP","weight":-0}'));
    assert.ok(result.ok);
    assert.ok(Object.is(result.state.weight, 0));
  });
});

describe("parseState rejects with a precise reason", () => {
  const bad: [string, string][] = [
    ["", "file is empty"],
    [" \n\t", "file is empty"],
    ["{", "file is not valid JSON ("],
    ["UP", "file is not valid JSON ("],
    ["[]", "state must be a JSON object, got an array"],
    ['"UP"', 'state must be a JSON object, got "UP"'],
    ["null", "state must be a JSON object, got null"],
    ["42", "state must be a JSON object, got 42"],
    ["{}", "status is required"],
    ['{"weight":5}', "status is required"],
    [
      '{"status":null}',
      "status must be one of UP, DOWN, READY, DRAIN, FAIL, MAINT, STOPPED, got null",
    ],
    [
      '{"status":"up"}',
      'status must be one of UP, DOWN, READY, DRAIN, FAIL, MAINT, STOPPED, got "up"',
    ],
    ['{"status":"FAILED"}', `${STATUS_REASON} got "FAILED"`],
    ['{"status":" UP"}', `${STATUS_REASON} got " UP"`],
    ['{"status":1}', `${STATUS_REASON} got 1`],
    ['{"status":["UP"]}', `${STATUS_REASON} got an array`],
    ['{"status":"UP","weight":1.5}', "weight must be an integer 0-255, got 1.5"],
    ['{"status":"UP","weight":256}', "weight must be an integer 0-255, got 256"],
    ['{"status":"UP","weight":-1}', "weight must be an integer 0-255, got -1"],
    ['{"status":"UP","weight":"50"}', 'weight must be an integer 0-255, got "50"'],
    ['{"status":"UP","weight":null}', "weight must be an integer 0-255, got null"],
    ['{"status":"UP","weight":true}', "weight must be an integer 0-255, got true"],
    ['{"status":"UP","weight":{}}', "weight must be an integer 0-255, got an object"],
    ['{"status":"UP","maxconn":65536}', "maxconn must be an integer 0-65535, got 65536"],
    ['{"status":"UP","maxconn":-1}', "maxconn must be an integer 0-65535, got -1"],
    ['{"status":"UP","maxconn":0.5}', "maxconn must be an integer 0-65535, got 0.5"],
    ['{"status":"UP","maxconn":"10"}', 'maxconn must be an integer 0-65535, got "10"'],
    [
      '{"status":"UP","wieght":50}',
      'unknown field "wieght"; expected only status, weight, maxconn',
    ],
    ['{"status":"UP","Status":"UP"}', 'unknown field "Status"'],
    ['{"status":"UP","__proto__":{}}', 'unknown field "__proto__"'],
    ['{"status":"UP"} {"status":"DOWN"}', "file is not valid JSON ("],
    [
      '{"status":"UP","description":""}',
      'description must be 1-200 characters of printable text on one line (no control characters, no invisible format characters such as bidirectional overrides), not beginning or ending with a space, got ""',
    ],
    [
      '{"status":"UP","description":"a\\nb"}',
      'description must be 1-200 characters of printable text on one line (no control characters, no invisible format characters such as bidirectional overrides), not beginning or ending with a space, got "a\\nb"',
    ],
    ['{"status":"UP","description":"a\\rb"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"a\\u0000b"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"a\\u2028b"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"tab\\there"}', "description must be 1-200 characters"],
    [
      '{"status":"UP","description":" leading"}',
      `description must be 1-200 characters of printable text on one line (no control characters, no invisible format characters such as bidirectional overrides), not beginning or ending with a space, got " leading"`,
    ],
    [
      '{"status":"UP","description":"trailing "}',
      `description must be 1-200 characters of printable text on one line (no control characters, no invisible format characters such as bidirectional overrides), not beginning or ending with a space, got "trailing "`,
    ],
    [
      '{"status":"UP","description":"\\u00a0nbsp"}',
      `description must be 1-200 characters of printable text on one line (no control characters, no invisible format characters such as bidirectional overrides), not beginning or ending with a space, got "\u00a0nbsp"`,
    ],
    // HAProxy must receive exactly what the file says, and show nothing deceptive.
    ['{"status":"UP","description":"x\\ud800"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"\\udc00x"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"abc\\u202edef"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"a\\u200bb"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"a\\u00adb"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"a\\ufeffb"}', "description must be 1-200 characters"],
    ['{"status":"UP","description":"\\u2066x\\u2069"}', "description must be 1-200 characters"],
    // The same key twice: refused, not last-wins.
    ['{"status":"UP","status":"DOWN"}', '"status" appears more than once; expected each key once'],
    [
      '{"status":"UP","weight":1,"weight":2}',
      '"weight" appears more than once; expected each key once',
    ],
    [
      '{"status":"UP","services":{"a":{"status":"UP"},"a":{"status":"DOWN"}}}',
      'services: "a" appears more than once',
    ],
    [
      '{"status":"UP","services":{"a":{"status":"UP","status":"DOWN"}}}',
      'services["a"]: "status" appears more than once',
    ],
    ['{"status":"UP","s\\u0074atus":"DOWN"}', '"status" appears more than once'],
    // What the file quotes reaches logs and terminals with its control characters escaped.
    ['{"status":"UP","\\u001b[2J":1}', 'unknown field "\\u001b[2J"'],
    ['{"status":"UP","x\u007f":1}', 'unknown field "x\\u007f"'],
    ["{\n\u0000", "file is not valid JSON ("],
    [
      '{"status":"UP","description":5}',
      "description must be 1-200 characters of printable text on one line (no control characters, no invisible format characters such as bidirectional overrides), not beginning or ending with a space, got 5",
    ],
    [
      `{"status":"UP","description":"${"x".repeat(201)}"}`,
      `description must be 1-200 characters of printable text on one line (no control characters, no invisible format characters such as bidirectional overrides), not beginning or ending with a space, got "${"x".repeat(40)}"... (201 characters)`,
    ],
  ];
  for (const [text, reason] of bad) {
    test(JSON.stringify(text), () => {
      const result = parseState(bytes(text));
      assert.equal(result.ok, false);
      assert.ok(
        !result.ok && result.reason.startsWith(reason),
        `reason: ${!result.ok && result.reason}`,
      );
    });
  }
  test("a reason stays short however much of the file it quotes", () => {
    const key = "k".repeat(60_000);
    for (const text of [
      `{"status":"UP","${key}":1}`,
      `{"status":"UP","services":{"${"s".repeat(60_000)}":{"status":"UP"}}}`,
      `{"${key}":1,"${key}":2}`,
    ]) {
      const result = parseState(bytes(text));
      assert.ok(!result.ok && result.reason.length <= 300, !result.ok ? result.reason : "");
    }
  });
  test("descriptions in any script, with combining marks and emoji, are shown exactly", () => {
    for (const description of [
      "déploiement 1.4",
      "配備 1.4",
      "e\u0301",
      "deploy 🚀",
      "עברית",
      "deploy 👩\u200d💻 ok",
      "\u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}",
      "क्\u200dष",
    ]) {
      const result = parseState(bytes(JSON.stringify({ status: "UP", description })));
      assert.deepEqual(result, { ok: true, state: { status: "UP", description } });
    }
  });
  test("invalid UTF-8", () => {
    assert.deepEqual(parseState(Uint8Array.from([0x7b, 0xff, 0x7d])), {
      ok: false,
      reason: "file is not valid UTF-8",
    });
  });
  test("a file over the cap, even when valid JSON", () => {
    const padded = `{"status":"UP"}${" ".repeat(MAX_STATE_FILE_BYTES)}`;
    assert.deepEqual(parseState(bytes(padded)), {
      ok: false,
      reason: `file is larger than ${MAX_STATE_FILE_BYTES} bytes`,
    });
  });
  test("a file at the cap is read", () => {
    const text = `{"status":"UP"}`;
    const padded = text + " ".repeat(MAX_STATE_FILE_BYTES - text.length);
    assert.equal(parseState(bytes(padded)).ok, true);
  });
});

describe("validateState", () => {
  test("undefined", () => {
    assert.deepEqual(validateState(undefined), {
      ok: false,
      reason: "state must be a JSON object, got nothing",
    });
  });
});

describe("serialiseState", () => {
  const cases: [object, string][] = [
    [{ status: "UP" }, '{"status":"UP"}\n'],
    [{ maxconn: 3, weight: 2, status: "DOWN" }, '{"status":"DOWN","weight":2,"maxconn":3}\n'],
    [{ status: "MAINT", maxconn: 0 }, '{"status":"MAINT","maxconn":0}\n'],
    [
      { description: "d", maxconn: 3, status: "UP", weight: 1 },
      '{"status":"UP","weight":1,"maxconn":3,"description":"d"}\n',
    ],
  ];
  for (const [state, text] of cases) {
    test(text.trim(), () => {
      assert.equal(serialiseState(validOrThrow(state)), text);
    });
  }
  test("round trip: what it writes, it reads back", () => {
    for (const status of STATUSES) {
      for (const weight of [undefined, 0, 1, 255]) {
        for (const maxconn of [undefined, 0, 65535]) {
          for (const description of [undefined, "x", 'quote " and \\ and # ok']) {
            const state = validOrThrow({ status, weight, maxconn, description });
            assert.deepEqual(parseState(bytes(serialiseState(state))), { ok: true, state });
          }
        }
      }
    }
  });
});

describe("withStatus", () => {
  test("keeps weight, maxconn and description", () => {
    const state = validOrThrow({ status: "DOWN", weight: 5, maxconn: 9, description: "d" });
    assert.deepEqual(withStatus(state, "UP"), {
      status: "UP",
      weight: 5,
      maxconn: 9,
      description: "d",
    });
  });
  test("from the fallback gives exactly UP", () => {
    assert.deepEqual(withStatus(FALLBACK_STATE, "UP"), { status: "UP" });
    assert.equal(serialiseState(withStatus(FALLBACK_STATE, "UP")), '{"status":"UP"}\n');
  });
});

function validOrThrow(value: object) {
  const clean = Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined));
  const result = validateState(clean);
  if (!result.ok) throw new Error(result.reason);
  return result.state;
}

describe("services", () => {
  const NAME_RULE =
    "is invalid; expected 1-100 printable ASCII characters without spaces, as HAProxy sends it with agent-send (without the line end)";
  const good: [string, object][] = [
    ['{"status":"UP","services":{}}', { status: "UP", services: {} }],
    [
      '{"status":"UP","services":{"be_web/srv1":{"status":"DRAIN"},"be_api/srv1":{"status":"UP","weight":50}}}',
      {
        status: "UP",
        services: {
          "be_web/srv1": { status: "DRAIN" },
          "be_api/srv1": { status: "UP", weight: 50 },
        },
      },
    ],
    [
      '{"services":{"a":{"description":"d","maxconn":3,"status":"MAINT"}},"status":"DOWN"}',
      { status: "DOWN", services: { a: { status: "MAINT", maxconn: 3, description: "d" } } },
    ],
    [`{"status":"UP","services":{"${"x".repeat(100)}":{"status":"UP"}}}`, {}],
    ['{"status":"UP","services":{"~!#%&*()[]{}<>?=+\\"":{"status":"UP"}}}', {}],
  ];
  for (const [text, state] of good) {
    test(`accepts ${text.slice(0, 90)}`, () => {
      const result = parseState(bytes(text));
      assert.ok(result.ok, !result.ok ? result.reason : "");
      if (Object.keys(state).length > 0) assert.deepEqual(result.state, state);
    });
  }

  const bad: [string, string][] = [
    [
      '{"status":"UP","services":[]}',
      "services must be a JSON object of service name to state, got an array",
    ],
    [
      '{"status":"UP","services":null}',
      "services must be a JSON object of service name to state, got null",
    ],
    [
      '{"status":"UP","services":"be_web"}',
      'services must be a JSON object of service name to state, got "be_web"',
    ],
    ['{"status":"UP","services":{"":{"status":"UP"}}}', `service name "" ${NAME_RULE}`],
    ['{"status":"UP","services":{"a b":{"status":"UP"}}}', `service name "a b" ${NAME_RULE}`],
    ['{"status":"UP","services":{"a\\tb":{"status":"UP"}}}', 'service name "a\\tb"'],
    ['{"status":"UP","services":{"a\\nb":{"status":"UP"}}}', 'service name "a\\nb"'],
    ['{"status":"UP","services":{"srv\u00e9":{"status":"UP"}}}', 'service name "srvé"'],
    ['{"status":"UP","services":{"a\u007f":{"status":"UP"}}}', 'service name "a\\u007f"'],
    [
      `{"status":"UP","services":{"${"x".repeat(101)}":{"status":"UP"}}}`,
      `service name "${"x".repeat(40)}"... (101 characters) ${NAME_RULE}`,
    ],
    ['{"status":"UP","services":{"a":"UP"}}', 'services["a"] must be a JSON object, got "UP"'],
    ['{"status":"UP","services":{"a":{}}}', 'services["a"]: status is required'],
    [
      '{"status":"UP","services":{"a":{"status":"up"}}}',
      `services["a"]: ${STATUS_REASON} got "up"`,
    ],
    [
      '{"status":"UP","services":{"a":{"status":"UP","weight":256}}}',
      'services["a"]: weight must be an integer 0-255, got 256',
    ],
    [
      '{"status":"UP","services":{"a":{"status":"UP","maxconn":-1}}}',
      'services["a"]: maxconn must be an integer 0-65535, got -1',
    ],
    [
      '{"status":"UP","services":{"a":{"status":"UP","description":" x"}}}',
      'services["a"]: description must be 1-200 characters',
    ],
    [
      '{"status":"UP","services":{"a":{"status":"UP","services":{}}}}',
      'services["a"]: unknown field "services"; expected only status, weight, maxconn, description',
    ],
    [
      '{"status":"UP","services":{"ok":{"status":"UP"},"a":{"status":"UP","wieght":1}}}',
      'services["a"]: unknown field "wieght"',
    ],
    // A bad service fails the whole file, whatever the instance's own state.
    ['{"status":"bad","services":{"a":{"status":"UP"}}}', `${STATUS_REASON} got "bad"`],
    ['{"services":{"a":{"status":"UP"}}}', "status is required"],
  ];
  for (const [text, reason] of bad) {
    test(`rejects ${text.slice(0, 90)}`, () => {
      const result = parseState(bytes(text));
      assert.ok(
        !result.ok && result.reason.startsWith(reason),
        `reason: ${!result.ok && result.reason}`,
      );
    });
  }

  test(`at most ${MAX_SERVICES} services`, () => {
    const many = (n: number) =>
      JSON.stringify({
        status: "UP",
        services: Object.fromEntries(
          Array.from({ length: n }, (_, i) => [`s${i}`, { status: "UP" }]),
        ),
      });
    assert.equal(parseState(bytes(many(MAX_SERVICES))).ok, true);
    assert.deepEqual(parseState(bytes(many(MAX_SERVICES + 1))), {
      ok: false,
      reason: `services has ${MAX_SERVICES + 1} entries; expected at most ${MAX_SERVICES}`,
    });
  });

  test("names that are Object's own (__proto__, toString) are entries like any other", () => {
    const result = parseState(
      bytes(
        '{"status":"UP","services":{"__proto__":{"status":"DOWN"},"toString":{"status":"FAIL"}}}',
      ),
    );
    assert.ok(result.ok);
    assert.deepEqual(Object.keys(result.state.services ?? {}), ["__proto__", "toString"]);
    assert.equal(serviceState(result.state, "__proto__").status, "DOWN");
    assert.equal(serviceState(result.state, "toString").status, "FAIL");
    assert.equal(
      serialiseState(result.state),
      '{"status":"UP","services":{"__proto__":{"status":"DOWN"},"toString":{"status":"FAIL"}}}\n',
    );
    const plain = validOrThrow({ status: "UP", services: {} });
    assert.equal(hasService(plain, "toString"), false);
    assert.equal(hasService(plain, "constructor"), false);
    assert.equal(serviceState(plain, "toString"), plain);
  });

  test("serialise: the instance's fields, then the services in the file's order", () => {
    const state = validOrThrow({
      services: { z: { weight: 1, status: "UP" }, a: { status: "DRAIN", description: "d" } },
      weight: 7,
      status: "UP",
    });
    const text =
      '{"status":"UP","weight":7,"services":{"z":{"status":"UP","weight":1},"a":{"status":"DRAIN","description":"d"}}}\n';
    assert.equal(serialiseState(state), text);
    assert.deepEqual(parseState(bytes(text)), { ok: true, state });
  });

  test("withStatus and withService keep the rest; states and services are frozen", () => {
    const state = validOrThrow({
      status: "UP",
      services: { a: { status: "DRAIN" }, b: { status: "UP", weight: 50 } },
    });
    const down = withStatus(state, "DOWN");
    assert.deepEqual(down, { ...state, status: "DOWN" });
    const changed = withService(down, "a", validOrThrow({ status: "UP", weight: 3 }));
    assert.deepEqual(Object.keys(changed.services ?? {}), ["a", "b"]);
    assert.deepEqual(changed.services?.a, { status: "UP", weight: 3 });
    const added = withService(changed, "c", validOrThrow({ status: "MAINT" }));
    assert.deepEqual(Object.keys(added.services ?? {}), ["a", "b", "c"]);
    assert.deepEqual(state.services?.a, { status: "DRAIN" }, "the original is unchanged");
    assert.ok(Object.isFrozen(added) && Object.isFrozen(added.services));
  });

  describe("serviceState: the instance's status is the switch", () => {
    const services = {
      drain: { status: "DRAIN" },
      half: { status: "UP", weight: 50, maxconn: 9, description: "half" },
    };
    for (const status of STATUSES) {
      const inService = status === "UP" || status === "READY";
      test(`instance ${status}: services answer ${inService ? "their own state" : status}`, () => {
        const state = validOrThrow({ status, weight: 20, services });
        const instance = { status, weight: 20 };
        assert.deepEqual(serviceState(state, "drain"), inService ? services.drain : state);
        assert.deepEqual(serviceState(state, "half"), inService ? services.half : state);
        for (const name of [undefined, "", "unknown", "toString"]) {
          const answered = serviceState(state, name);
          assert.equal(answered, state);
          assert.deepEqual({ status: answered.status, weight: answered.weight }, instance);
        }
      });
    }
  });

  test("formatState sums up a long list of services", () => {
    const services = Object.fromEntries(
      Array.from({ length: 100 }, (_, i) => [`be_web/srv${i}`, { status: "UP" }]),
    );
    const state: State = validOrThrow({ status: "DOWN", weight: 5, services });
    assert.equal(formatState(state), '{"status":"DOWN","weight":5} with 100 services');
    const short = validOrThrow({ status: "UP", services: { a: { status: "UP" } } });
    assert.equal(formatState(short), '{"status":"UP","services":{"a":{"status":"UP"}}}');
  });
});

describe("the audit record and the pending expiry", () => {
  const full =
    '{"status":"DRAIN","description":"deploy 1.4.2","changed":{"at":"2026-11-25T14:02:00.000Z","via":"cli","by":"alice","reason":"deploy 1.4.2"},"expires":{"at":"2026-11-25T14:32:00.000Z","returns":{"status":"UP"}},"services":{"web":{"status":"UP"}}}\n';
  test("a file with both reads back as written, in the agent's order", () => {
    const result = parseState(bytes(full));
    assert.ok(result.ok);
    assert.equal(serialiseState(result.state), full);
    // Any order in, the fixed order out.
    const shuffled = JSON.stringify({
      expires: { returns: { status: "UP" }, at: "2026-11-25T14:32:00.000Z" },
      services: { web: { status: "UP" } },
      changed: { reason: "deploy 1.4.2", by: "alice", via: "cli", at: "2026-11-25T14:02:00.000Z" },
      description: "deploy 1.4.2",
      status: "DRAIN",
    });
    const again = parseState(bytes(shuffled));
    assert.ok(again.ok);
    assert.equal(serialiseState(again.state), full);
  });
  test("records survive the changes that keep them", () => {
    const result = parseState(bytes(full));
    assert.ok(result.ok);
    const web = withService(result.state, "web", { status: "DOWN" });
    assert.deepEqual(web.changed, result.state.changed);
    assert.deepEqual(web.expires, result.state.expires);
    assert.deepEqual(withStatus(result.state, "UP").changed, result.state.changed);
  });
  const good = [
    '{"status":"UP","changed":{"at":"2026-11-25T14:02:00Z","via":"signal","signal":"SIGUSR1"}}',
    '{"status":"UP","changed":{"at":"2026-11-25T14:02:00.5Z","via":"reload"}}',
    '{"status":"UP","changed":{"at":"2026-11-25T14:02:00.000Z","via":"expiry","service":"web"}}',
    '{"status":"UP","expires":{"at":"2026-11-25T14:02:00.000Z","service":"web","returns":null}}',
    '{"status":"UP","expires":{"at":"2030-01-01T00:00:00.000Z","returns":{"status":"MAINT","weight":3,"maxconn":2,"description":"x"}}}',
  ];
  for (const text of good) {
    test(`accepts ${text}`, () => assert.ok(parseState(bytes(text)).ok));
  }
  const bad: [string, string][] = [
    [
      '{"status":"UP","changed":{"at":"2026-11-25 14:02","via":"cli"}}',
      'changed: at must be a UTC time such as "2026-11-25T14:02:00.000Z", got "2026-11-25 14:02"',
    ],
    [
      '{"status":"UP","changed":{"at":"2026-02-30T14:02:00Z","via":"cli"}}',
      "changed: at must be a UTC time",
    ],
    [
      '{"status":"UP","changed":{"at":"2026-11-25T14:02:00+01:00","via":"cli"}}',
      "changed: at must be a UTC time",
    ],
    [
      '{"status":"UP","changed":{"at":"2026-11-25T14:02:00Z","via":"ssh"}}',
      'changed: via must be one of signal, reload, cli, expiry, got "ssh"',
    ],
    ['{"status":"UP","changed":{"via":"cli"}}', "changed: at must be a UTC time"],
    ['{"status":"UP","changed":"yesterday"}', "changed: must be a JSON object"],
    [
      '{"status":"UP","changed":{"at":"2026-11-25T14:02:00Z","via":"cli","who":"x"}}',
      'changed: unknown field "who"; expected only at, via, signal, by, service, reason',
    ],
    [
      '{"status":"UP","changed":{"at":"2026-11-25T14:02:00Z","via":"cli","reason":" x"}}',
      "changed: reason must be a description",
    ],
    [
      '{"status":"UP","changed":{"at":"2026-11-25T14:02:00Z","via":"signal","signal":"USR1"}}',
      "changed: signal must be a signal's name",
    ],
    [
      '{"status":"UP","expires":{"at":"in 30 minutes","returns":{"status":"UP"}}}',
      'expires: at must be a UTC time such as "2026-11-25T14:32:00.000Z", got "in 30 minutes"',
    ],
    [
      '{"status":"UP","expires":{"at":1764079920000,"returns":{"status":"UP"}}}',
      "expires: at must be a UTC time",
    ],
    [
      '{"status":"UP","expires":{"at":"2026-11-25T14:02:00Z"}}',
      "expires: returns (the state that comes back) is required",
    ],
    [
      '{"status":"UP","expires":{"at":"2026-11-25T14:02:00Z","returns":null}}',
      "expires: returns may be null (the service goes) only with a service",
    ],
    [
      '{"status":"UP","expires":{"at":"2026-11-25T14:02:00Z","returns":{"status":"up"}}}',
      "expires: returns: status must be one of",
    ],
    [
      '{"status":"UP","expires":{"at":"2026-11-25T14:02:00Z","returns":{"status":"UP","services":{}}}}',
      'expires: returns: unknown field "services"',
    ],
  ];
  for (const [text, reason] of bad) {
    test(`refuses ${text}`, () => {
      const result = parseState(bytes(text));
      assert.ok(!result.ok);
      assert.ok(result.reason.startsWith(reason), result.reason);
    });
  }
});

test("records never push a file the agent writes over what it reads back", () => {
  // A state of just under 64 KiB, then the largest records a change can add.
  const long = "d".repeat(190);
  const services: Record<string, { status: "UP"; description: string }> = {};
  let state: State = { status: "UP" };
  for (let i = 0; serialiseState(state).length < MAX_STATE_FILE_BYTES - 300; i++) {
    services[`s${i}`] = { status: "UP", description: long };
    state = { status: "UP", services: { ...services } };
  }
  const reason = "\u00e9".repeat(200);
  const recorded: State = {
    ...state,
    changed: {
      at: "2026-11-25T14:02:00.000Z",
      via: "cli",
      by: "x".repeat(100),
      service: "s1",
      reason,
    },
    expires: {
      at: "2026-11-25T14:32:00.000Z",
      service: "s1",
      returns: { status: "MAINT", weight: 255, maxconn: 65535, description: long, reason },
    },
  };
  const text = serialiseState(recorded);
  assert.ok(text.length > MAX_STATE_FILE_BYTES, `${text.length} bytes`);
  const read = parseState(bytes(text));
  assert.ok(read.ok, read.ok ? "" : read.reason);
  // The state itself over the cap is still refused, records or not.
  const over = serialiseState({
    ...recorded,
    description: long,
    services: { ...services, extra: { status: "UP", description: long } },
  });
  assert.equal(parseState(bytes(over)).ok, false);
});
