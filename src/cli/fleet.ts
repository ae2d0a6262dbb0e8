/**
 * `hapgent fleet`: the fleet's words in etcd, for operators. `set KEY STATUS` changes a key with
 * the state file's rules (fields not named keep the key's values; written only if nobody changed
 * the key meanwhile), `clear KEY` removes one (the next key speaks again), `status [KEY…]` shows
 * what each key holds and which one the host follows. etcd is reached as the agents reach it:
 * HAPGENT_ETCD_ENDPOINTS (or --endpoints) and the same credentials.
 */
import { invalidKeys, parseEtcdAccess, parseFleetKeys } from "../config.js";
import { applyChange, formatDuration } from "../core/change.js";
import {
  entryAfter,
  invalidSince,
  isFleetKey,
  type KeyValue,
  MAX_FLEET_VALUE_BYTES,
  readValue,
} from "../core/fleet.js";
import { formatAnswered, printable, type Status, serialiseState } from "../core/state.js";
import { createEtcd, type Etcd, EtcdError, GRPC, type Snapshot } from "../etcd/client.js";
import { etcdOptions } from "../etcd/options.js";
import type { Values } from "./args.js";
import { CLI_EXIT, CliError, usage } from "./exit.js";
import type { CliIo } from "./io.js";
import { changeOf } from "./set.js";

/** How many invalid values in a row `status` looks back through for the word before them. */
const MAX_LOOKBACK = 8;
/** A write that loses the race with another this often gives up. */
const MAX_ATTEMPTS = 5;
const REQUEST_TIMEOUT_MS = 5000;

export async function fleet(
  io: CliIo,
  values: Values,
  positionals: readonly string[],
  status: (word: string | undefined) => Status,
): Promise<number> {
  const [action, ...rest] = positionals;
  switch (action) {
    case "set": {
      const [key, word, extra] = rest;
      if (extra !== undefined) throw usage(`unexpected argument ${JSON.stringify(extra)}`);
      return set(io, values, keyOf(key), status(word));
    }
    case "clear": {
      const [key, extra] = rest;
      if (extra !== undefined) throw usage(`unexpected argument ${JSON.stringify(extra)}`);
      return clear(io, values, keyOf(key));
    }
    case "status":
      return show(io, values, rest.map(keyOf));
    default:
      throw usage(
        `fleet needs an action: set KEY STATUS, clear KEY or status [KEY…]${action === undefined ? "" : `, got ${JSON.stringify(action)}`} (see hapgent fleet --help)`,
      );
  }
}

function keyOf(key: string | undefined): string {
  if (key === undefined) throw usage("fleet set and clear need a KEY, such as /hapgent/group/web");
  if (!isFleetKey(key)) {
    throw usage(
      `a fleet key starts with / and is printable ASCII without spaces (at most 512 characters), got ${JSON.stringify(key)}`,
    );
  }
  return key;
}

/** etcd as the environment (and --endpoints) says; keys only where `status` needs them. */
async function connect(io: CliIo, values: Values): Promise<{ etcd: Etcd; keys: string[] }> {
  const env = {
    ...io.env,
    ...(values.endpoints === undefined ? {} : { HAPGENT_ETCD_ENDPOINTS: values.endpoints }),
  };
  const config = parseEtcdAccess(env, io.cwd);
  if (config === undefined) {
    throw usage(
      "fleet needs etcd's client URLs: --endpoints URLS or HAPGENT_ETCD_ENDPOINTS (such as http://10.0.0.1:2379)",
    );
  }
  if ("variable" in config) {
    throw usage(
      values.endpoints === undefined
        ? config.reason
        : config.reason.replace("HAPGENT_ETCD_ENDPOINTS=", "--endpoints "),
    );
  }
  const keysText = io.env.HAPGENT_ETCD_KEYS ?? "";
  const keys = parseFleetKeys(keysText);
  if (keys === undefined) throw usage(invalidKeys(keysText).reason);
  const options = await etcdOptions(config, io.uid, REQUEST_TIMEOUT_MS);
  if (!options.ok) throw usage(options.reason);
  return { etcd: await createEtcd(options.options, true), keys };
}

/**
 * etcd's own refusal, or no endpoint answering, as the command's last word; a command that
 * `writes` says that nothing was.
 */
function unreachable(err: unknown, writes: boolean): CliError {
  if (!(err instanceof EtcdError)) throw err;
  return new CliError(
    CLI_EXIT.ETCD,
    err.answered
      ? `etcd refused: ${printable(err.message)}`
      : `cannot reach etcd: ${printable(err.message)}${writes ? "; nothing was written" : ""}`,
  );
}

async function set(io: CliIo, values: Values, key: string, status: Status): Promise<number> {
  // A fleet's word never lifts a limit: --no-maxconn leaves it without one.
  const { forMs, ...change } = changeOf(values, status, "fleet");
  const { etcd } = await connect(io, values);
  try {
    // One lease, however many attempts the write takes.
    const lease = forMs === undefined ? undefined : await etcd.grantLease(Math.ceil(forMs / 1000));
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      const read = await etcd.read([key], MAX_FLEET_VALUE_BYTES);
      const record = read.values.get(key);
      const now = record === undefined ? undefined : readValue(record, read.revision);
      if (now?.kind === "invalid") {
        io.err(`hapgent: ${key} held an invalid value (${now.reason}); replaced\n`);
      }
      const next = applyChange(now?.kind === "state" ? now.state : undefined, change, {
        atMs: Date.now(),
        via: "cli",
        by: io.by,
      });
      if (!next.ok) {
        io.err(
          next.code === "no-instance"
            ? `hapgent: ${key} holds no valid state to add service ${change.service} to; set the key first (hapgent fleet set ${key} up); nothing was written\n`
            : `hapgent: ${next.reason}; nothing was written\n`,
        );
        return next.code === "no-instance" ? CLI_EXIT.INVALID_FILE : CLI_EXIT.USAGE;
      }
      const text = serialiseState(next.state);
      const revision = await etcd.putIfUnchanged(key, text, record?.modRevision ?? 0, lease);
      if (revision === undefined) continue;
      io.out(`wrote ${key} at revision ${revision}: ${formatAnswered(next.state)}\n`);
      if (record?.lease !== undefined && lease === undefined) {
        io.err(
          `hapgent: note: ${key} was to be removed with its lease (an earlier --for); this write has none, so it stays until changed or cleared\n`,
        );
      }
      if (forMs !== undefined) {
        io.out(
          `etcd removes ${key} in ${formatDuration(forMs)} (at ${new Date(Date.now() + forMs).toISOString()}); the next key then speaks\n`,
        );
      }
      return CLI_EXIT.OK;
    }
    io.err(`hapgent: ${key} kept changing under ${MAX_ATTEMPTS} attempts; nothing was written\n`);
    return CLI_EXIT.ETCD;
  } catch (err) {
    throw unreachable(err, true);
  } finally {
    etcd.close();
  }
}

async function clear(io: CliIo, values: Values, key: string): Promise<number> {
  const { etcd } = await connect(io, values);
  try {
    const { deleted, revision } = await etcd.remove(key);
    io.out(deleted === 0 ? `${key} did not exist\n` : `removed ${key} at revision ${revision}\n`);
    return CLI_EXIT.OK;
  } catch (err) {
    throw unreachable(err, true);
  } finally {
    etcd.close();
  }
}

function valuesOf(keys: readonly string[], read: Snapshot): Map<string, KeyValue> {
  const values = new Map<string, KeyValue>();
  for (const key of keys) values.set(key, readValue(read.values.get(key), read.revision));
  return values;
}

/**
 * The keys' values at each revision that decides the word now, oldest first: while the key that
 * speaks holds an invalid value, the agents keep the word they followed just before it came, so
 * the keys are read as they were then. `compacted`: the revision etcd no longer had.
 */
async function lookBack(
  etcd: Etcd,
  keys: readonly string[],
  now: Map<string, KeyValue>,
): Promise<{ history: Map<string, KeyValue>[]; compacted?: number }> {
  const history = [now];
  for (let since = invalidSince(keys, now); since !== undefined && since > 1; ) {
    if (history.length > MAX_LOOKBACK) return { history, compacted: since - 1 };
    let read: Snapshot;
    try {
      read = await etcd.read(keys, MAX_FLEET_VALUE_BYTES, since - 1);
    } catch (err) {
      if (err instanceof EtcdError && err.code === GRPC.OUT_OF_RANGE) {
        return { history, compacted: since - 1 };
      }
      throw err;
    }
    const values = valuesOf(keys, read);
    history.unshift(values);
    since = invalidSince(keys, values);
  }
  return { history };
}

async function show(io: CliIo, values: Values, given: readonly string[]): Promise<number> {
  const { etcd, keys: configured } = await connect(io, values);
  const keys = given.length > 0 ? given : configured;
  if (keys.length === 0) {
    etcd.close();
    throw usage("fleet status needs KEYs, or HAPGENT_ETCD_KEYS");
  }
  try {
    const read = await etcd.read(keys, MAX_FLEET_VALUE_BYTES);
    const parsed = valuesOf(keys, read);
    const { history, compacted } = await lookBack(etcd, keys, parsed);
    // What the agents decide, with the word they followed before an invalid value came.
    const chosen = entryAfter(keys, history);
    if (values.json) {
      io.out(
        `${JSON.stringify({
          endpoint: etcd.endpoint,
          revision: read.revision,
          keys: keys.map((key) => ({
            key,
            ...parsed.get(key),
            lease: read.values.get(key)?.lease ?? null,
          })),
          follows: chosen.entry?.key ?? null,
          followsRevision: chosen.entry?.revision ?? null,
          problem: chosen.problem ?? null,
          historyCompacted: compacted ?? null,
        })}\n`,
      );
    } else {
      const lines = keys.map((key) => {
        const value = parsed.get(key) as KeyValue;
        const text =
          value.kind === "absent"
            ? "absent"
            : value.kind === "state"
              ? `${formatAnswered(value.state)} (revision ${value.revision}${read.values.get(key)?.lease === undefined ? "" : ", expires with its lease"})`
              : `INVALID (revision ${value.revision}): ${value.reason}`;
        const mark = chosen.entry?.key === key ? "  <- followed" : "";
        return `${key.padEnd(24)} ${printable(text)}${mark}`;
      });
      lines.push(
        chosen.entry === undefined
          ? `a host with these keys follows no fleet word: its operator's state alone decides`
          : `a host with these keys follows ${chosen.entry.key} (revision ${chosen.entry.revision})`,
      );
      if (chosen.problem !== undefined) lines.push(`problem: ${printable(chosen.problem)}`);
      if (compacted !== undefined) {
        lines.push(
          `note: etcd compacted its history before revision ${compacted}: an agent that followed a word then still does`,
        );
      }
      io.out(`${lines.join("\n")}\n`);
    }
    return [...parsed.values()].some((value) => value.kind === "invalid")
      ? CLI_EXIT.INVALID_FILE
      : CLI_EXIT.OK;
  } catch (err) {
    throw unreachable(err, false);
  } finally {
    etcd.close();
  }
}
