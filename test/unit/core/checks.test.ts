import assert from "node:assert/strict";
import { test } from "node:test";
import { duration, parseChecks, statusFor, target } from "../../../src/core/checks.js";

const bytes = (value: unknown) =>
  new TextEncoder().encode(typeof value === "string" ? value : JSON.stringify(value));

test("parseChecks: each kind with its defaults", () => {
  const result = parseChecks(
    bytes({
      checks: [
        { name: "web", http: "http://127.0.0.1:8080/health" },
        { name: "db", tcp: "[::1]:5432", interval: "5s", timeout: "500ms", rise: 1, fall: 5 },
        {
          name: "disk",
          exec: ["/usr/local/bin/check-disk", "--min", "10%"],
          results: { "1": "DRAIN" },
        },
        { name: "ready.file", shell: "test -f /run/app.ready", service: "be_web/srv1" },
      ],
    }),
  );
  assert.ok(result.ok, result.ok ? "" : result.reason);
  const [web, db, disk, shell] = result.checks;
  assert.deepEqual(
    { ...web, results: Object.fromEntries(web?.results ?? []) },
    {
      name: "web",
      service: undefined,
      action: { kind: "http", url: "http://127.0.0.1:8080/health" },
      intervalMs: 2000,
      timeoutMs: 1000,
      rise: 2,
      fall: 3,
      results: { "2xx": "UP", "503": "DRAIN", default: "DOWN" },
    },
  );
  assert.deepEqual(db?.action, { kind: "tcp", host: "::1", port: 5432 });
  assert.deepEqual([db?.intervalMs, db?.timeoutMs, db?.rise, db?.fall], [5000, 500, 1, 5]);
  assert.deepEqual(Object.fromEntries(disk?.results ?? []), {
    "0": "UP",
    "1": "DRAIN",
    default: "DOWN",
  });
  assert.equal(shell?.service, "be_web/srv1");
  assert.equal(
    target(shell?.action ?? { kind: "shell", command: "" }),
    'sh -c "test -f /run/app.ready"',
  );
  assert.deepEqual(parseChecks(bytes({ checks: [] })), { ok: true, checks: [] });
});

test("parseChecks: every mistake is a reason", () => {
  const bad: [unknown, string][] = [
    ["", "file is empty"],
    ["{", "file is not valid JSON"],
    ["[]", 'the file must be a JSON object such as {"checks":[…]}'],
    [{ check: [] }, 'unknown field "check"; expected checks'],
    [{ checks: {} }, "checks must be a JSON array of checks"],
    ['{"checks":[],"checks":[]}', '"checks" appears more than once'],
    [{ checks: [{ http: "http://x/" }] }, "checks[0]: name must be 1-64 letters"],
    [{ checks: [{ name: "a b", http: "http://x/" }] }, "checks[0]: name must be"],
    [
      { checks: [{ name: "a" }] },
      "checks[0]: a: give exactly one of http, tcp, exec, shell; got 0",
    ],
    [
      { checks: [{ name: "a", http: "http://x/", tcp: "x:1" }] },
      "checks[0]: a: give exactly one of http, tcp, exec, shell; got 2",
    ],
    [
      { checks: [{ name: "a", http: "ftp://x/" }] },
      'checks[0]: a: http must be an http:// or https:// URL, got "ftp://x/"',
    ],
    [
      { checks: [{ name: "a", http: "not a url" }] },
      "checks[0]: a: http must be an http:// or https:// URL",
    ],
    [
      { checks: [{ name: "a", http: "http://u:p@x/" }] },
      "checks[0]: a: http must not hold a user or password",
    ],
    [
      { checks: [{ name: "a", tcp: "127.0.0.1" }] },
      'checks[0]: a: tcp must be HOST:PORT such as "127.0.0.1:5432"',
    ],
    [{ checks: [{ name: "a", tcp: "127.0.0.1:70000" }] }, "checks[0]: a: tcp must be HOST:PORT"],
    [
      { checks: [{ name: "a", exec: "/bin/true" }] },
      "checks[0]: a: exec must be a command as a JSON array of strings",
    ],
    [{ checks: [{ name: "a", exec: [] }] }, "checks[0]: a: exec must be a command as a JSON array"],
    [
      { checks: [{ name: "a", exec: ["true"] }] },
      "checks[0]: a: exec: the program must be an absolute path (no shell, no PATH lookup)",
    ],
    [
      { checks: [{ name: "a", shell: " " }] },
      "checks[0]: a: shell must be a command line for /bin/sh -c",
    ],
    [
      { checks: [{ name: "a", tcp: "x:1", interval: "2" }] },
      "checks[0]: a: interval must be a duration from 100ms to 1h",
    ],
    [
      { checks: [{ name: "a", exec: ["/bin/true"], interval: "500ms" }] },
      "checks[0]: a: interval must be at least 1s for a command",
    ],
    [
      { checks: [{ name: "a", tcp: "x:1", interval: "50ms" }] },
      "checks[0]: a: interval must be a duration",
    ],
    [
      { checks: [{ name: "a", tcp: "x:1", interval: "1s", timeout: "2s" }] },
      "checks[0]: a: timeout must be a duration from 10ms to the interval",
    ],
    [
      { checks: [{ name: "a", tcp: "x:1", rise: 0 }] },
      "checks[0]: a: rise must be an integer 1-100, got 0",
    ],
    [
      { checks: [{ name: "a", tcp: "x:1", fall: 1.5 }] },
      "checks[0]: a: fall must be an integer 1-100, got 1.5",
    ],
    [
      { checks: [{ name: "a", tcp: "x:1", service: "a b" }] },
      "checks[0]: a: service must be a service name",
    ],
    [
      { checks: [{ name: "a", http: "http://x/", results: { "600": "UP" } }] },
      'checks[0]: a: results: "600" is not a result; expected HTTP status codes',
    ],
    [
      { checks: [{ name: "a", http: "http://x/", results: { "503": "drain" } }] },
      "checks[0]: a: results: 503 must map to one of UP, DOWN",
    ],
    [
      { checks: [{ name: "a", tcp: "x:1", results: { "0": "UP" } }] },
      'checks[0]: a: results: "0" is not a result; expected "default"',
    ],
    [{ checks: [{ name: "a", tcp: "x:1", retries: 3 }] }, 'checks[0]: unknown field "retries"'],
    [
      {
        checks: [
          { name: "a", tcp: "x:1" },
          { name: "a", tcp: "x:2" },
        ],
      },
      'checks[1]: name "a" is used twice',
    ],
    [
      { checks: Array.from({ length: 33 }, (_, i) => ({ name: `c${i}`, tcp: "x:1" })) },
      "checks has 33 entries; expected at most 32",
    ],
  ];
  for (const [value, reason] of bad) {
    const result = parseChecks(bytes(value));
    assert.ok(!result.ok, JSON.stringify(value));
    assert.ok(result.reason.startsWith(reason), `${JSON.stringify(value)}: ${result.reason}`);
  }
});

test("what a result means: the exact code, then its class, then the default", () => {
  const parsed = parseChecks(
    bytes({ checks: [{ name: "a", http: "http://x/", results: { "404": "UP", "5xx": "FAIL" } }] }),
  );
  assert.ok(parsed.ok);
  const [check] = parsed.checks;
  assert.ok(check);
  const cases: [number | undefined, string][] = [
    [200, "UP"],
    [204, "UP"],
    [404, "UP"],
    [503, "DRAIN"],
    [500, "FAIL"],
    [302, "DOWN"],
    [undefined, "DOWN"],
  ];
  for (const [code, status] of cases) assert.equal(statusFor(check, code), status, String(code));
  assert.deepEqual(
    ["2s", "500ms", "1m", "1h", "2", "1.5s", "-1s"].map((text) => duration(text, 7)),
    [2000, 500, 60_000, 3_600_000, undefined, undefined, undefined],
  );
  assert.equal(duration(undefined, 7), 7);
});
