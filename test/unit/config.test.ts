import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  closestVariable,
  DEFAULTS,
  describeListenError,
  describeMetricsListenError,
  describeUnknownVariable,
  editDistance,
  FOREIGN_VARIABLES,
  parseConfig,
  unknownVariables,
} from "../../src/config.js";

describe("parseConfig", () => {
  test("defaults", () => {
    assert.deepEqual(parseConfig({}, "/", 1000), {
      ok: true,
      config: {
        host: "0.0.0.0",
        port: 9777,
        stateFile: "/etc/hapgent/state.json",
        sendWaitMs: 100,
        controlSocket: "/tmp/hapgent-1000/9777.sock",
        metrics: undefined,
        checksFile: undefined,
        fleet: undefined,
      },
    });
  });
  test("HAPGENT_CHECKS_FILE: absolute, relative to the working directory, or none", () => {
    const at = (value: string) => {
      const result = parseConfig({ HAPGENT_CHECKS_FILE: value }, "/srv", 1000);
      assert.ok(result.ok, result.ok ? "" : result.reason);
      return result.config.checksFile;
    };
    assert.equal(at("/etc/hapgent/checks.json"), "/etc/hapgent/checks.json");
    assert.equal(at("checks.json"), "/srv/checks.json");
    assert.equal(at(""), undefined);
    const bad = parseConfig({ HAPGENT_CHECKS_FILE: "a\0b" }, "/", 1000);
    assert.ok(!bad.ok);
    assert.match(bad.reason, /HAPGENT_CHECKS_FILE/);
  });
  test("HAPGENT_ETCD_*: endpoints, keys, the cache beside the state file, credentials", () => {
    const result = parseConfig(
      {
        HAPGENT_STATE_FILE: "/etc/hapgent/state.json",
        HAPGENT_ETCD_ENDPOINTS: "http://10.0.0.1:2379, https://[2001:db8::1]:2379",
        HAPGENT_ETCD_KEYS: "/hapgent/host/web-12,/hapgent/group/web,/hapgent/all",
        HAPGENT_ETCD_USERNAME: "agent",
        HAPGENT_ETCD_PASSWORD_FILE: "secret",
        HAPGENT_ETCD_CA_FILE: "/etc/hapgent/ca.pem",
      },
      "/srv",
      1000,
    );
    assert.ok(result.ok, result.ok ? "" : result.reason);
    const fleet = result.config.fleet;
    assert.deepEqual(
      fleet?.endpoints.map((u) => u.origin),
      ["http://10.0.0.1:2379", "https://[2001:db8::1]:2379"],
    );
    assert.deepEqual(fleet?.keys, ["/hapgent/host/web-12", "/hapgent/group/web", "/hapgent/all"]);
    assert.equal(fleet?.cacheFile, "/etc/hapgent/state.fleet.json");
    assert.deepEqual(fleet?.password, { file: "/srv/secret" });
    assert.equal(fleet?.caFile, "/etc/hapgent/ca.pem");
    const other = parseConfig(
      {
        HAPGENT_STATE_FILE: "/var/lib/x/agent",
        HAPGENT_ETCD_ENDPOINTS: "http://e:2379",
        HAPGENT_ETCD_KEYS: "/a",
      },
      "/",
      1000,
    );
    assert.ok(other.ok);
    assert.equal(other.config.fleet?.cacheFile, "/var/lib/x/agent.fleet.json");
  });
  const badFleet: [Record<string, string>, string, RegExp][] = [
    [{ HAPGENT_ETCD_KEYS: "/a" }, "HAPGENT_ETCD_ENDPOINTS", /since HAPGENT_ETCD_KEYS is set/],
    [{ HAPGENT_ETCD_ENDPOINTS: "http://e:2379" }, "HAPGENT_ETCD_KEYS", /1-16 distinct etcd keys/],
    [
      { HAPGENT_ETCD_ENDPOINTS: "e:2379", HAPGENT_ETCD_KEYS: "/a" },
      "HAPGENT_ETCD_ENDPOINTS",
      /http:\/\/ or https:\/\//,
    ],
    [
      { HAPGENT_ETCD_ENDPOINTS: "ftp://e:2379", HAPGENT_ETCD_KEYS: "/a" },
      "HAPGENT_ETCD_ENDPOINTS",
      /http/,
    ],
    [
      { HAPGENT_ETCD_ENDPOINTS: "http://e:2379/v3", HAPGENT_ETCD_KEYS: "/a" },
      "HAPGENT_ETCD_ENDPOINTS",
      /nothing else/,
    ],
    [
      { HAPGENT_ETCD_ENDPOINTS: "http://e:2379", HAPGENT_ETCD_KEYS: "a" },
      "HAPGENT_ETCD_KEYS",
      /starting with \//,
    ],
    [
      { HAPGENT_ETCD_ENDPOINTS: "http://e:2379", HAPGENT_ETCD_KEYS: "/a,/a" },
      "HAPGENT_ETCD_KEYS",
      /distinct/,
    ],
    [
      { HAPGENT_ETCD_ENDPOINTS: "http://e:2379", HAPGENT_ETCD_KEYS: "/a b" },
      "HAPGENT_ETCD_KEYS",
      /printable/,
    ],
    [
      {
        HAPGENT_ETCD_ENDPOINTS: "http://e:2379",
        HAPGENT_ETCD_KEYS: Array.from({ length: 17 }, (_, i) => `/k${i}`).join(","),
      },
      "HAPGENT_ETCD_KEYS",
      /1-16/,
    ],
    [
      {
        HAPGENT_ETCD_ENDPOINTS: "http://e:2379",
        HAPGENT_ETCD_KEYS: "/a",
        HAPGENT_ETCD_USERNAME: "u",
      },
      "HAPGENT_ETCD_USERNAME",
      /exactly when/,
    ],
    [
      {
        HAPGENT_ETCD_ENDPOINTS: "http://e:2379",
        HAPGENT_ETCD_KEYS: "/a",
        HAPGENT_ETCD_PASSWORD: "p",
      },
      "HAPGENT_ETCD_USERNAME",
      /exactly when/,
    ],
    [
      {
        HAPGENT_ETCD_ENDPOINTS: "http://e:2379",
        HAPGENT_ETCD_KEYS: "/a",
        HAPGENT_ETCD_USERNAME: "u",
        HAPGENT_ETCD_PASSWORD: "p",
        HAPGENT_ETCD_PASSWORD_FILE: "/f",
      },
      "HAPGENT_ETCD_PASSWORD_FILE",
      /only one/,
    ],
    [
      {
        HAPGENT_ETCD_ENDPOINTS: "https://e:2379",
        HAPGENT_ETCD_KEYS: "/a",
        HAPGENT_ETCD_CERT_FILE: "/c",
      },
      "HAPGENT_ETCD_CERT_FILE",
      /together with its key/,
    ],
  ];
  for (const [env, variable, reason] of badFleet) {
    test(`${JSON.stringify(env)} is refused by ${variable}`, () => {
      const result = parseConfig(env, "/", 1000);
      assert.ok(!result.ok);
      assert.equal(result.variable, variable);
      assert.match(result.reason, reason);
    });
  }
  test("a password written into an endpoint's URL is refused and never repeated", () => {
    const result = parseConfig(
      { HAPGENT_ETCD_ENDPOINTS: "http://root:hunter2@e:2379", HAPGENT_ETCD_KEYS: "/a" },
      "/",
      1000,
    );
    assert.ok(!result.ok);
    assert.match(result.reason, /HAPGENT_ETCD_ENDPOINTS="http:\/\/…@e:2379" is invalid/);
    assert.doesNotMatch(result.reason, /hunter2/);
    assert.doesNotMatch(result.value, /hunter2/);
  });
  const metricsAddresses: [string, { host: string; port: number }][] = [
    ["127.0.0.1:9778", { host: "127.0.0.1", port: 9778 }],
    ["0.0.0.0:1", { host: "0.0.0.0", port: 1 }],
    ["[::1]:65535", { host: "::1", port: 65535 }],
    ["[::]:9100", { host: "::", port: 9100 }],
    ["[2001:db8::7]:9778", { host: "2001:db8::7", port: 9778 }],
  ];
  for (const [text, address] of metricsAddresses) {
    test(`HAPGENT_METRICS=${text}`, () => {
      const result = parseConfig({ HAPGENT_METRICS: text }, "/", 1000);
      assert.ok(result.ok, result.ok ? "" : result.reason);
      assert.deepEqual(result.config.metrics, address);
    });
  }
  const badMetrics = [
    "9778",
    ":9778",
    "127.0.0.1",
    "127.0.0.1:",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:09778",
    "::1:9778",
    "[127.0.0.1]:9778",
    "[::1]",
    "localhost:9778",
    "http://127.0.0.1:9778",
    "127.0.0.1:9778/metrics",
    " 127.0.0.1:9778",
    "127.0.0.1:9777",
  ];
  for (const text of badMetrics) {
    test(`HAPGENT_METRICS=${JSON.stringify(text)} is refused, saying what is expected`, () => {
      const result = parseConfig({ HAPGENT_METRICS: text }, "/", 1000);
      assert.ok(!result.ok);
      assert.equal(result.variable, "HAPGENT_METRICS");
      assert.equal(
        result.reason,
        `HAPGENT_METRICS=${JSON.stringify(text)} is invalid; expected ADDRESS:PORT to serve metrics on, such as 127.0.0.1:9778, 0.0.0.0:9778 or [::1]:9778, with a port 1-65535 other than HAPGENT_PORT's (9777); or empty for none`,
      );
    });
  }
  test("the control socket: named, or where the process keeps run-time files", () => {
    const socket = (env: Record<string, string>, uid: number) => {
      const result = parseConfig(env, "/srv", uid);
      return result.ok ? result.config.controlSocket : result.reason;
    };
    assert.equal(socket({ HAPGENT_CONTROL_SOCKET: "c.sock" }, 1000), "/srv/c.sock");
    assert.equal(
      socket({ RUNTIME_DIRECTORY: "/run/hapgent", HAPGENT_PORT: "81" }, 998),
      "/run/hapgent/81.sock",
    );
    assert.equal(socket({}, 0), "/run/hapgent/9777.sock");
    assert.equal(
      socket({ XDG_RUNTIME_DIR: "/run/user/1000" }, 1000),
      "/run/user/1000/hapgent/9777.sock",
    );
    assert.equal(socket({}, 1000), "/tmp/hapgent-1000/9777.sock");
    assert.equal(
      socket({ HAPGENT_CONTROL_SOCKET: `/${"x".repeat(107)}` }, 1000),
      `HAPGENT_CONTROL_SOCKET="/${"x".repeat(107)}" is invalid; expected a path of at most 107 bytes, without NUL bytes`,
    );
  });
  for (const wait of ["1", "100", "5000"]) {
    test(`HAPGENT_SEND_WAIT_MS=${wait}`, () => {
      const result = parseConfig({ HAPGENT_SEND_WAIT_MS: wait }, "/", 1000);
      assert.ok(result.ok);
      assert.equal(result.config.sendWaitMs, Number(wait));
    });
  }
  test("empty variables take the defaults", () => {
    const result = parseConfig(
      { HAPGENT_IP: "", HAPGENT_PORT: "", HAPGENT_STATE_FILE: "" },
      "/",
      1000,
    );
    assert.deepEqual(result, parseConfig({}, "/", 1000));
  });
  const hosts = ["127.0.0.1", "0.0.0.0", "::", "::1", "fe80::1", "2001:db8::7", "10.1.2.3"];
  for (const host of hosts) {
    test(`HAPGENT_IP=${host}`, () => {
      const result = parseConfig({ HAPGENT_IP: host }, "/", 1000);
      assert.ok(result.ok);
      assert.equal(result.config.host, host);
    });
  }
  for (const port of ["1", "80", "9777", "65535"]) {
    test(`HAPGENT_PORT=${port}`, () => {
      const result = parseConfig({ HAPGENT_PORT: port }, "/", 1000);
      assert.ok(result.ok);
      assert.equal(result.config.port, Number(port));
    });
  }
  test("a relative state file is made absolute", () => {
    const result = parseConfig({ HAPGENT_STATE_FILE: "run/state.json" }, "/srv/app", 1000);
    assert.ok(result.ok);
    assert.equal(result.config.stateFile, "/srv/app/run/state.json");
  });

  const bad: [Record<string, string>, string][] = [
    [{ HAPGENT_PORT: "abc" }, 'HAPGENT_PORT="abc" is invalid; expected an integer 1-65535'],
    [{ HAPGENT_PORT: "70000" }, 'HAPGENT_PORT="70000" is invalid; expected an integer 1-65535'],
    [{ HAPGENT_PORT: "65536" }, 'HAPGENT_PORT="65536" is invalid'],
    [{ HAPGENT_PORT: "-1" }, 'HAPGENT_PORT="-1" is invalid'],
    [{ HAPGENT_PORT: "0" }, 'HAPGENT_PORT="0" is invalid'],
    [{ HAPGENT_PORT: "1.5" }, 'HAPGENT_PORT="1.5" is invalid'],
    [{ HAPGENT_PORT: " 80" }, 'HAPGENT_PORT=" 80" is invalid'],
    [{ HAPGENT_PORT: "0x50" }, 'HAPGENT_PORT="0x50" is invalid'],
    [{ HAPGENT_PORT: "080" }, 'HAPGENT_PORT="080" is invalid'],
    [
      { HAPGENT_SEND_WAIT_MS: "0" },
      'HAPGENT_SEND_WAIT_MS="0" is invalid; expected an integer number of milliseconds 1-5000',
    ],
    [{ HAPGENT_SEND_WAIT_MS: "5001" }, 'HAPGENT_SEND_WAIT_MS="5001" is invalid'],
    [{ HAPGENT_SEND_WAIT_MS: "10000" }, 'HAPGENT_SEND_WAIT_MS="10000" is invalid'],
    [{ HAPGENT_SEND_WAIT_MS: "0.5" }, 'HAPGENT_SEND_WAIT_MS="0.5" is invalid'],
    [{ HAPGENT_SEND_WAIT_MS: "100ms" }, 'HAPGENT_SEND_WAIT_MS="100ms" is invalid'],
    [
      { HAPGENT_IP: "999.1.1.1" },
      'HAPGENT_IP="999.1.1.1" is invalid; expected an IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1, :: or ::1',
    ],
    [{ HAPGENT_IP: "localhost" }, 'HAPGENT_IP="localhost" is invalid'],
    [{ HAPGENT_IP: "[::1]" }, 'HAPGENT_IP="[::1]" is invalid'],
    [{ HAPGENT_IP: "1.2.3" }, 'HAPGENT_IP="1.2.3" is invalid'],
    [{ HAPGENT_STATE_FILE: "a\0b" }, 'HAPGENT_STATE_FILE="a\\u0000b" is invalid'],
  ];
  for (const [env, reason] of bad) {
    test(JSON.stringify(env), () => {
      const result = parseConfig(env, "/", 1000);
      assert.equal(result.ok, false);
      assert.ok(!result.ok && result.reason.startsWith(reason), !result.ok ? result.reason : "");
    });
  }
});

describe("describeListenError", () => {
  const config = {
    controlSocket: "/run/hapgent/80.sock",
    host: "10.9.9.9",
    port: 80,
    stateFile: "/x",
    sendWaitMs: 100,
  };
  const cases: [string | undefined, string][] = [
    ["EADDRINUSE", 'HAPGENT_PORT="80" is already in use on 10.9.9.9; expected a free port'],
    [
      "EADDRNOTAVAIL",
      'HAPGENT_IP="10.9.9.9" is not an address of this host; expected a local address',
    ],
    ["EACCES", 'HAPGENT_PORT="80" needs privileges to bind; expected a port above 1023'],
    ["EAFNOSUPPORT", 'HAPGENT_IP="10.9.9.9" is of an address family this host does not support'],
    ["EWHAT", 'cannot listen on HAPGENT_IP="10.9.9.9" HAPGENT_PORT="80": EWHAT'],
    [undefined, "cannot listen on"],
  ];
  for (const [code, message] of cases) {
    test(String(code), () => {
      assert.ok(describeListenError(config, code).startsWith(message));
    });
  }
});

describe("describeMetricsListenError", () => {
  test("names the variable as the operator writes it, and what is expected", () => {
    assert.equal(
      describeMetricsListenError({ host: "127.0.0.1", port: 9778 }, "EADDRINUSE"),
      'HAPGENT_METRICS="127.0.0.1:9778": the port is already in use; expected a free port for metrics',
    );
    assert.equal(
      describeMetricsListenError({ host: "2001:db8::7", port: 9778 }, "EADDRNOTAVAIL"),
      'HAPGENT_METRICS="[2001:db8::7]:9778": not an address of this host; expected a local address, or 0.0.0.0 or [::] for all',
    );
    assert.equal(
      describeMetricsListenError({ host: "0.0.0.0", port: 80 }, "EACCES"),
      'HAPGENT_METRICS="0.0.0.0:80": the port needs privileges to bind; expected a port above 1023',
    );
    assert.match(
      describeMetricsListenError({ host: "0.0.0.0", port: 9778 }, "ERR_MODULE_NOT_FOUND"),
      /^HAPGENT_METRICS="0\.0\.0\.0:9778": prom-client, which serves the metrics, is not installed; expected/,
    );
  });
});

describe("unknown HAPGENT_ variables", () => {
  const cases: [string, string | undefined][] = [
    ["HAPGENT_STATEFILE", "HAPGENT_STATE_FILE"],
    ["HAPGENT_STATE_FIEL", "HAPGENT_STATE_FILE"],
    ["HAPGENT_ADRESS", "HAPGENT_IP"],
    ["HAPGENT_ADDRESS", "HAPGENT_IP"],
    ["HAPGENT_HOST", "HAPGENT_IP"],
    ["HAPGENT_IPP", "HAPGENT_IP"],
    ["HAPGENT_PROT", "HAPGENT_PORT"],
    ["HAPGENT_POTR", "HAPGENT_PORT"],
    ["HAPGENT_PORTS", "HAPGENT_PORT"],
    ["hapgent_port", "HAPGENT_PORT"],
    ["Hapgent_Metrics", "HAPGENT_METRICS"],
    ["HAPGENT_METRIC", "HAPGENT_METRICS"],
    ["HAPGENT_CHECKS", "HAPGENT_CHECKS_FILE"],
    ["HAPGENT_CHECK_FILE", "HAPGENT_CHECKS_FILE"],
    ["HAPGENT_SEND_WAIT", "HAPGENT_SEND_WAIT_MS"],
    ["HAPGENT_CONTROLSOCKET", "HAPGENT_CONTROL_SOCKET"],
    ["HAPGENT_ETCD_ENDPOINT", "HAPGENT_ETCD_ENDPOINTS"],
    ["HAPGENT_ETCD_KEY", "HAPGENT_ETCD_KEYS"],
    ["HAPGENT_ETCD_PASSWORDFILE", "HAPGENT_ETCD_PASSWORD_FILE"],
    ["HAPGENT_ETCD_USER_NAME", "HAPGENT_ETCD_USERNAME"],
    // Nothing close: no guess.
    ["HAPGENT_TIMEOUT", undefined],
    ["HAPGENT_XY", undefined],
    ["HAPGENT_", undefined],
    ["HAPGENT_LOG_LEVEL", undefined],
    [`HAPGENT_${"P".repeat(100)}`, undefined],
  ];
  for (const [name, expected] of cases) {
    test(`${name.slice(0, 40)}: ${expected ?? "no suggestion"}`, () => {
      assert.deepEqual(unknownVariables({ [name]: "x" }), [{ name, suggestion: expected }]);
      assert.equal(closestVariable(name), expected);
    });
  }

  test("the agent's own names, foreign ones, HAPGENT_TEST_* and others are not warned of", () => {
    const env: Record<string, string> = { PATH: "/bin", HOME: "/root", XHAPGENT_PORT: "1" };
    for (const name of [...Object.keys(DEFAULTS), ...FOREIGN_VARIABLES]) env[name] = "";
    env.HAPGENT_TEST_BINARY = "build/hapgent";
    env.HAPGENT_TEST_HAPROXY = "/usr/sbin/haproxy";
    assert.deepEqual(unknownVariables(env), []);
    // Each name the suite, CI and scripts set is one of these.
    for (const name of [
      "HAPGENT_CI_UNPRIVILEGED",
      "HAPGENT_CACHE_DIR",
      "HAPGENT_NODE24_PREFIX",
      "HAPGENT_DEBIAN_MIRROR",
      "HAPGENT_CHECK",
    ]) {
      assert.ok(FOREIGN_VARIABLES.includes(name), name);
    }
  });

  test("every unknown name, sorted, one each, whatever its value", () => {
    assert.deepEqual(
      unknownVariables({ HAPGENT_STATEFILE: "", HAPGENT_ADRESS: undefined, HAPGENT_PORT: "1" }),
      [
        { name: "HAPGENT_ADRESS", suggestion: "HAPGENT_IP" },
        { name: "HAPGENT_STATEFILE", suggestion: "HAPGENT_STATE_FILE" },
      ],
    );
  });

  test("the warning's words; a name with control characters is shown escaped", () => {
    assert.equal(
      describeUnknownVariable({ name: "HAPGENT_STATEFILE", suggestion: "HAPGENT_STATE_FILE" }),
      "unknown variable HAPGENT_STATEFILE ignored; did you mean HAPGENT_STATE_FILE?",
    );
    assert.equal(
      describeUnknownVariable({ name: "HAPGENT_\x1b[2J", suggestion: undefined }),
      "unknown variable HAPGENT_\\u001b[2J ignored; expected one of the variables hapgent --help lists",
    );
  });

  test("editDistance: added, left out, changed, swapped", () => {
    const table: [string, string, number][] = [
      ["", "", 0],
      ["", "ab", 2],
      ["abc", "abc", 0],
      ["abc", "abd", 1],
      ["abc", "ab", 1],
      ["ab", "abc", 1],
      ["abcd", "abdc", 1],
      ["STATEFILE", "STATE_FILE", 1],
      ["kitten", "sitting", 3],
      ["ca", "abc", 3],
    ];
    for (const [a, b, distance] of table) {
      assert.equal(editDistance(a, b), distance, `${a} ${b}`);
      assert.equal(editDistance(b, a), distance, `${b} ${a}`);
    }
  });
});
