/**
 * One session on one endpoint: the keys read, then watched from the revisions applied, with a
 * health read every period that must answer and agree with what the watches delivered.
 */
import { MAX_FLEET_VALUE_BYTES } from "../../core/fleet.js";
import { type Etcd, EtcdError, type Watch } from "../../etcd/client.js";
import {
  ahead,
  applyEvents,
  applyRead,
  DATA_REPLACED,
  differs,
  type Fleet,
  heard,
  reconnected,
} from "./follow.js";

/** How a session on one endpoint ended. */
export interface Outcome {
  readonly error?: EtcdError;
  /** Why the keys must be read afresh (a compaction, etcd's data replaced). */
  readonly reread?: string;
  /** It had every watch and passed a health read: etcd was there. */
  readonly stable: boolean;
}

/** A session past its first read: its watches, and the health reads that check them. */
interface Session {
  readonly client: Etcd;
  readonly resolve: (outcome: Outcome) => void;
  readonly watches: Watch[];
  /**
   * Per key, a revision a health read saw that the watch had not delivered yet, and when the
   * read that first saw it started.
   */
  readonly owed: Map<string, { readonly revision: number; readonly since: number }>;
  done: boolean;
  created: number;
  stable: boolean;
  health: ReturnType<typeof setTimeout> | undefined;
}

/** One session on the current endpoint; resolves with how it ended. */
export async function session(fleet: Fleet, client: Etcd): Promise<Outcome> {
  const early = await startRead(fleet, client);
  if (early !== undefined) return early;
  return new Promise((resolve) => {
    const s: Session = {
      client,
      resolve,
      watches: [],
      owed: new Map(),
      done: false,
      created: 0,
      stable: false,
      health: undefined,
    };
    fleet.endSession = () => finish(fleet, s, {});
    for (const key of fleet.keys) s.watches.push(watchKey(fleet, s, key));
    schedule(fleet, s);
  });
}

/**
 * Session start: the keys read alone with their values. Applied if the watches cannot be trusted
 * (first, after a compaction or a stall); else only checked against what they delivered, as
 * resumed watches bring every change since, in order.
 */
async function startRead(fleet: Fleet, client: Etcd): Promise<Outcome | undefined> {
  const snapshot = await client.read(fleet.keys, MAX_FLEET_VALUE_BYTES);
  if (fleet.stopped) return { stable: false };
  if (!fleet.needRead && !fleet.stalled) {
    if (!differs(fleet, { revision: snapshot.revision, records: snapshot.values }, true)) return;
    fleet.needRead = true;
    return { reread: DATA_REPLACED, stable: false };
  }
  applyRead(fleet, snapshot);
  fleet.needRead = false;
  fleet.firstRead?.();
  return undefined;
}

function finish(fleet: Fleet, s: Session, outcome: Omit<Outcome, "stable">): void {
  if (s.done) return;
  s.done = true;
  clearTimeout(s.health);
  for (const watch of s.watches) watch.close();
  fleet.connected = false;
  fleet.endSession = undefined;
  s.resolve({ ...outcome, stable: s.stable });
}

function reread(fleet: Fleet, s: Session, why: string): void {
  fleet.needRead = true;
  finish(fleet, s, { reread: why });
}

function watchKey(fleet: Fleet, s: Session, key: string): Watch {
  const after = fleet.applied.get(key) ?? 0;
  return s.client.watch(key, after + 1, {
    created(revision) {
      if (revision < after) {
        return reread(
          fleet,
          s,
          `etcd's revision ${revision} is below the ${after} already seen (its data was made anew)`,
        );
      }
      heard(fleet);
      if (++s.created === fleet.keys.length) {
        fleet.connected = true;
        fleet.stalled = false;
      }
    },
    events(events) {
      heard(fleet);
      applyEvents(fleet, key, events);
    },
    compacted(revision) {
      reread(
        fleet,
        s,
        revision === 0
          ? "a watch message was too large to read"
          : `etcd compacted its history past the revisions last seen (to ${revision})`,
      );
    },
    ended(error) {
      finish(fleet, s, { error });
    },
  });
}

/** One health read at a time, the next a period after the last ended, however slow etcd answers. */
function schedule(fleet: Fleet, s: Session): void {
  s.health = setTimeout(() => {
    checkHealth(fleet, s).then(
      () => {
        if (!s.done) schedule(fleet, s);
      },
      (error: EtcdError) => finish(fleet, s, { error }),
    );
  }, fleet.timing.healthMs);
}

/**
 * The endpoint must keep answering, and agree with what the watches delivered. One listing, no
 * values: what etcd holds is told by each key's mod_revision.
 */
async function checkHealth(fleet: Fleet, s: Session): Promise<void> {
  const { client, owed } = s;
  const { applied, timing } = fleet;
  const started = fleet.now();
  const listed = await client.list(fleet.keys);
  if (s.done) return;
  if (differs(fleet, { revision: listed.revision, records: listed.found }, false)) {
    return reread(fleet, s, DATA_REPLACED);
  }
  // A change a read saw, still not brought by a read that started a health period later:
  // the watch is stalled and etcd's values are what counts. Until watches work again, each
  // session reads before it watches, so changes are followed even while every watch is
  // swallowed.
  const missed = [...owed].find(
    ([key, { revision, since }]) =>
      (applied.get(key) ?? 0) < revision && started - since >= timing.healthMs,
  );
  if (missed !== undefined) {
    const [key, { revision }] = missed;
    const snapshot = await client.read(fleet.keys, MAX_FLEET_VALUE_BYTES);
    if (s.done) return;
    applyRead(fleet, snapshot);
    fleet.stalled = true;
    return finish(fleet, s, { error: stalledWatch(client, [key, revision], timing.healthMs) });
  }
  for (const [key, revision] of ahead(fleet, {
    revision: listed.revision,
    records: listed.found,
  })) {
    const before = owed.get(key);
    if (before === undefined || (applied.get(key) ?? 0) >= before.revision) {
      owed.set(key, { revision, since: started });
    }
  }
  for (const [key, { revision }] of owed) {
    if ((applied.get(key) ?? 0) >= revision) owed.delete(key);
  }
  // The read confirms the word only where it agrees with what is followed.
  if (owed.size > 0) return;
  heard(fleet);
  if (fleet.connected && !s.stable) {
    s.stable = true;
    reconnected(fleet);
  }
}

/** The error that ends a session whose watch of `key` did not bring `revision` in time. */
function stalledWatch(client: Etcd, [key, revision]: [string, number], ms: number): EtcdError {
  return new EtcdError(
    `${client.endpoint}: the watch of ${key} did not bring a change a read saw ${ms / 1000} s before (revision ${revision}; a stalled stream)`,
    undefined,
    client.endpoint,
  );
}
