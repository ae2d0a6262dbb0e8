import assert from "node:assert/strict";
import { test } from "node:test";
import { parseOptions } from "../../../bench/options.js";
import { checks, emptyFigures, type Figures, ratio, table } from "../../../bench/report.js";
import { repeatedName, targetSpecs } from "../../../bench/targets.js";

/** Made-up figures: a baseline and a hapgent that does 95% of its throughput. */
function figures(scale: number, judged: Partial<Figures> = {}): Figures {
  const f = emptyFigures();
  for (const kind of ["plain", "payload", "service"] as const) {
    f.throughput[kind] = {
      perSecond: [20_000 * scale, 21_000 * scale, 19_000 * scale],
      targetCpu: [1, 1, 1],
      generatorCpu: [0.8, 0.8, 0.8],
    };
    f.latency[kind] = [
      {
        probes: 1,
        errors: 0,
        seconds: 1,
        perSecond: 1,
        cpuSeconds: 0,
        p50: 0.1,
        p99: 0.5,
        p999: 2,
        firstError: "",
      },
    ];
  }
  f.startupMs = [60, 70, 65];
  f.idle = { rssMiB: 45, anonMiB: 8 };
  f.long = { probes: 1000, perSecond: 20_000, rssHalfMiB: 60, rssEndMiB: 60.5 };
  f.peak = { rssMiB: 61, anonMiB: 19, fileMiB: 40 };
  return { ...f, ...judged };
}

const columns = [
  { name: "baseline", judged: false, baseline: "baseline" },
  { name: "hapgent", judged: true, baseline: "baseline" },
];
const params = { concurrency: 32, rate: 2000, probes: 1000 };

test("the report compares each target with its baseline, round by round", () => {
  const results = new Map([
    ["baseline", figures(1)],
    ["hapgent", figures(0.95, { signalMs: [1.5, 3] })],
  ]);
  assert.equal(ratio(results, columns[1] as (typeof columns)[1], "plain").toFixed(2), "0.95");
  const text = table(columns, results, params);
  assert.match(
    text,
    /\| throughput, 32 in flight \(× its baseline\) +\| 20,000\/s \(1\.00×\) +\| 19,000\/s \(0\.95×\) +\|/,
  );
  assert.match(text, /\| signal to reply, median \(max\) +\| - +\| 3\.00 ms \(3\.00 ms\) +\|/);
  assert.equal(text.split("\n").length, 15, "a header, a rule and 13 rows");
  const judged = checks(columns, results, params);
  assert.deepEqual(
    judged.map((c) => [c.ok, c.value]),
    [
      [true, "0.95×, with payload 0.95×, naming a service 0.95×"],
      [true, "0.50 ms"],
      [true, "61.0 MiB"],
      [true, "+0.5 MiB"],
      [true, "65 ms"],
      [true, "3.00 ms"],
    ],
  );
});

test("with the C floor in the run, every column is also set against it", () => {
  const withFloor = [
    { name: "floor: C, epoll", judged: false, baseline: "floor: C, epoll" },
    ...columns,
  ];
  const results = new Map([
    ["floor: C, epoll", figures(1.25)],
    ["baseline", figures(1)],
    ["hapgent", figures(0.95)],
  ]);
  const text = table(withFloor, results, params);
  assert.match(
    text,
    /\| {3}× the C floor \(plain \/ with payload\) +\| 1\.00× \/ 1\.00× +\| 0\.80× \/ 0\.80× +\| 0\.76× \/ 0\.76× +\|/,
  );
  assert.equal(text.split("\n").length, 16, "one row more than without the floor");
});

test("a missed target is reported as missed", () => {
  const results = new Map([
    ["baseline", figures(1)],
    ["hapgent", figures(0.5, { peak: { rssMiB: 90, anonMiB: 40, fileMiB: 50 } })],
  ]);
  const failed = checks(columns, results, params)
    .filter((c) => !c.ok)
    .map((c) => c.target);
  assert.deepEqual(failed, [
    "throughput ≥ 0.9× the bare server on the same Node and V8 flags",
    "RSS peak ≤ 64 MiB",
    "signal to reply ≤ 10 ms",
  ]);
});

test("bench options", () => {
  assert.equal(parseOptions(["--help"]).kind, "help");
  const smoke = parseOptions(["--smoke"]);
  assert.ok(smoke.kind === "run" && smoke.options.params.probes === 4000);
  assert.deepEqual(parseOptions(["--rate", "0", "--rounds", "x"]), {
    kind: "error",
    message:
      '--rounds must be a positive number, got "x"; --rate must be a positive number, got "0"',
  });
  assert.equal(parseOptions(["--frobnicate"]).kind, "error");
  const compared = parseOptions(["--compare", "on Bun=/tmp/a=b", "--compare", "jitless=/x"]);
  assert.ok(compared.kind === "run");
  assert.deepEqual(compared.options.compare, [
    { name: "on Bun", path: "/tmp/a=b" },
    { name: "jitless", path: "/x" },
  ]);
  assert.deepEqual(parseOptions(["--compare", "/no/name"]), {
    kind: "error",
    message: '--compare must be NAME=PATH, got "/no/name"',
  });
  assert.deepEqual(parseOptions(["--compare", "a|b=/x"]), {
    kind: "error",
    message: '--compare "a|b": a name cannot hold "|" (the table\'s separator)',
  });
});

test("a --compare named twice, or like one of the bench's own columns, is found", () => {
  const programs = {
    floor: "/f",
    node: "/n",
    nodeFlags: [],
    main: "/m",
    baseline: "/b",
    binary: undefined,
    node24: undefined,
    etcd: true,
  };
  const named = (...names: string[]) =>
    repeatedName(
      targetSpecs({ ...programs, compare: names.map((name) => ({ name, path: "/x" })) }),
    );
  assert.equal(named("on Bun", "jitless"), undefined);
  assert.equal(named("c", "c"), "c");
  assert.equal(named("hapgent"), "hapgent");
  assert.equal(named("floor: C, epoll"), "floor: C, epoll");
});
