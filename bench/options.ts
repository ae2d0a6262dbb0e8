/** The benchmark's options, from its arguments. Pure: no exit, no output. */
import { parseArgs } from "node:util";

export interface Params {
  /** Probes in the long run. */
  readonly probes: number;
  /** Length of each throughput and latency measurement. */
  readonly seconds: number;
  readonly rounds: number;
  /** Open-loop probes per second. */
  readonly rate: number;
  /** Closed-loop probes in flight. */
  readonly concurrency: number;
  readonly starts: number;
  readonly signals: number;
}

export interface Options {
  readonly params: Params;
  readonly binary: string | undefined;
  readonly node24: string | undefined;
  /** Other builds of hapgent measured beside the rest, each judged by the C floor only. */
  readonly compare: readonly { readonly name: string; readonly path: string }[];
  readonly json: string;
  readonly smoke: boolean;
  /** Only the scrape flood against a large state (scrapes.ts). */
  readonly scrapes: boolean;
}

export type Parsed =
  | { readonly kind: "help"; readonly text: string }
  | { readonly kind: "error"; readonly message: string }
  | { readonly kind: "run"; readonly options: Options };

export const HELP = `Usage: npm run bench -- [OPTIONS]
  --probes N        probes in the long run (default 1000000)
  --seconds S       length of each throughput and latency measurement (default 3)
  --rounds R        rounds of throughput and latency measurements (default 5)
  --rate R          open-loop probes per second (default 2000)
  --concurrency C   closed-loop probes in flight (default 32)
  --starts N        start-ups timed per target (default 10)
  --signals N       signals timed (default 20)
  --binary PATH     also measure this standalone binary (default build/hapgent if built)
  --node24 PATH     the Node 24 that runs the binary's baseline (default: the one
                    build:binary uses, from ~/.cache/hapgent-ci/node24)
  --compare NAME=PATH
                    also measure this build of hapgent (another runtime, other flags) as
                    a column named NAME, set against the C floor; may be repeated
  --json PATH       where to write the figures (default bench-results.json)
  --smoke           a few seconds in all, to check that the benchmark works
  --scrapes         only this: probe latency of an agent with 1,000 services and a full
                    probe ledger, without and during a flood of metrics scrapes, for
                    hapgent with metrics on and each --compare build, side by side
`;

export function parseOptions(args: readonly string[]): Parsed {
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    values = parseArgs({
      args: [...args],
      options: {
        probes: { type: "string", default: "1000000" },
        seconds: { type: "string", default: "3" },
        rounds: { type: "string", default: "5" },
        rate: { type: "string", default: "2000" },
        concurrency: { type: "string", default: "32" },
        starts: { type: "string", default: "10" },
        signals: { type: "string", default: "20" },
        binary: { type: "string" },
        node24: { type: "string" },
        compare: { type: "string", multiple: true, default: [] },
        json: { type: "string", default: "bench-results.json" },
        smoke: { type: "boolean", default: false },
        scrapes: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (err) {
    return { kind: "error", message: (err as Error).message };
  }
  if (values.help) return { kind: "help", text: HELP };
  const bad: string[] = [];
  const positive = (name: string): number => {
    const text = values[name];
    const value = Number(text);
    if (!(Number.isFinite(value) && value > 0)) {
      bad.push(`--${name} must be a positive number, got ${JSON.stringify(text)}`);
    }
    return value;
  };
  const smoke = values.smoke === true;
  const params: Params = {
    probes: smoke ? 4000 : Math.round(positive("probes")),
    seconds: smoke ? 0.3 : positive("seconds"),
    rounds: smoke ? 1 : Math.round(positive("rounds")),
    rate: positive("rate"),
    concurrency: Math.round(positive("concurrency")),
    starts: smoke ? 2 : Math.round(positive("starts")),
    signals: smoke ? 4 : Math.round(positive("signals")),
  };
  const compare = (values.compare as string[]).map((text) => {
    const at = text.indexOf("=");
    const name = text.slice(0, at).trim();
    const path = text.slice(at + 1);
    if (at < 1 || name === "" || path === "") {
      bad.push(`--compare must be NAME=PATH, got ${JSON.stringify(text)}`);
    } else if (name.includes("|")) {
      bad.push(`--compare ${JSON.stringify(name)}: a name cannot hold "|" (the table's separator)`);
    }
    return { name, path };
  });
  if (bad.length > 0) return { kind: "error", message: bad.join("; ") };
  return {
    kind: "run",
    options: {
      params,
      binary: values.binary as string | undefined,
      node24: values.node24 as string | undefined,
      compare,
      json: values.json as string,
      smoke,
      scrapes: values.scrapes === true,
    },
  };
}
