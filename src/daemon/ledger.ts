/**
 * The probe ledger: every load balancer that polls the agent, keyed by its source address and the
 * service it asks for, with when it was first and last seen, how often it polls (learnt from the
 * gaps between its probes), what it was last given, and what it last *heard*: a reply counts as
 * heard only once the peer has closed the connection, with a FIN or a reset, after the whole line
 * went out (HAProxy closes once it has read it), never when it is merely written.
 *
 * A load balancer that stops polling is forgotten after a few of its intervals, so nothing waits on
 * it forever. Memory is bounded, and a scan from many addresses cannot push out the load balancers
 * that really poll: an address seen once waits on a small probation list, and only one that comes
 * back joins the ledger proper.
 *
 * HAProxy keeps the last maxconn an agent said until it says another, so each load balancer's last
 * maxconn word heard is kept too (one number): a reply that says none leaves that limit in place.
 *
 * Pure but for the clock, which is passed in; the server tells it of each probe once, when the
 * connection closes.
 */
import { maxconnWord } from "../core/reply.js";

/** One load balancer polling for one service ("" for the instance). */
export interface Poller {
  readonly address: string;
  readonly service: string;
  readonly firstSeenMs: number;
  readonly lastSeenMs: number;
  /** The median of the last gaps between its probes; undefined after a single probe. */
  readonly intervalMs: number | undefined;
  readonly probes: number;
  /** The reply it was last given (written), and the one it last heard, with when. */
  readonly lastGiven: Uint8Array | undefined;
  readonly lastHeard: Uint8Array | undefined;
  readonly lastHeardMs: number | undefined;
  /** The last maxconn word it heard, which HAProxy holds until it hears another; none yet. */
  readonly heldMaxconn: number | undefined;
  /** Seen more than once: a load balancer, not (yet) a one-off client. */
  readonly established: boolean;
}

export interface Ledger {
  /**
   * A probe from `address` for `service`, accepted at `atMs`, was given `reply`, and `heard` it
   * when the peer closed (FIN or reset) after the whole reply went out. Told once it is closed.
   */
  record(address: string, service: string, reply: Uint8Array, atMs: number, heard: boolean): void;
  /** Load balancers polling now (forgetting those that stopped), established ones first. */
  pollers(): Poller[];
  readonly size: number;
}

export interface LedgerOptions {
  readonly now: () => number;
  /** Load balancers kept at most (those seen more than once). */
  readonly maxPollers?: number;
  /** Addresses seen once, kept at most, on probation. */
  readonly maxProbation?: number;
  /** A poller is forgotten after this many of its intervals without a probe. */
  readonly forgetAfterIntervals?: number;
  /** ... and never sooner than this, nor later than `maxForgetMs`. */
  readonly minForgetMs?: number;
  readonly maxForgetMs?: number;
}

/** Far more load balancers than any fleet points at one server. */
export const MAX_POLLERS = 1024;
export const MAX_PROBATION = 256;
export const FORGET_AFTER_INTERVALS = 3;
export const MIN_FORGET_MS = 10_000;
export const MAX_FORGET_MS = 10 * 60_000;
/** Gaps remembered to learn an interval: enough to see through HAProxy's spread-checks jitter. */
const GAPS = 5;

interface Entry {
  address: string;
  service: string;
  firstSeenMs: number;
  lastSeenMs: number;
  gaps: number[];
  probes: number;
  lastGiven: Uint8Array | undefined;
  lastHeard: Uint8Array | undefined;
  lastHeardMs: number | undefined;
  heldMaxconn: number | undefined;
}

/** What the ledger keeps, and the bounds it keeps it within. */
interface LedgerState {
  // Load balancers, and addresses seen once (in the order they came).
  readonly pollers: Map<string, Entry>;
  readonly probation: Map<string, Entry>;
  readonly maxPollers: number;
  readonly maxProbation: number;
  readonly forgetAfterIntervals: number;
  readonly minForgetMs: number;
  readonly maxForgetMs: number;
}

/** The two maps, kept by the functions below. */
export function createLedger({
  now,
  maxPollers = MAX_POLLERS,
  maxProbation = MAX_PROBATION,
  forgetAfterIntervals = FORGET_AFTER_INTERVALS,
  minForgetMs = MIN_FORGET_MS,
  maxForgetMs = MAX_FORGET_MS,
}: LedgerOptions): Ledger {
  const ledger: LedgerState = {
    pollers: new Map(),
    probation: new Map(),
    maxPollers,
    maxProbation,
    forgetAfterIntervals,
    minForgetMs,
    maxForgetMs,
  };
  return {
    record(address, service, reply, at, heard) {
      record(ledger, address, service, reply, at, heard);
    },
    pollers: () => pollersAt(ledger, now()),
    get size() {
      return ledger.pollers.size + ledger.probation.size;
    },
  };
}

function record(
  ledger: LedgerState,
  address: string,
  service: string,
  reply: Uint8Array,
  at: number,
  heard: boolean,
): void {
  const entry = entryFor(ledger, `${address} ${service}`, address, service, at);
  // Connections close in any order: a probe older than the last one seen changes no gap.
  if (entry.probes > 0 && at >= entry.lastSeenMs) {
    entry.gaps.push(at - entry.lastSeenMs);
    if (entry.gaps.length > GAPS) entry.gaps.shift();
  }
  entry.probes++;
  if (at >= entry.lastSeenMs) {
    entry.lastSeenMs = at;
    entry.lastGiven = reply;
  }
  if (heard && (entry.lastHeardMs === undefined || at >= entry.lastHeardMs)) {
    // Replies are built once per state: the same bytes again hold nothing new.
    if (reply !== entry.lastHeard) entry.heldMaxconn = heldMaxconn(entry.heldMaxconn, reply);
    entry.lastHeard = reply;
    entry.lastHeardMs = at;
  }
}

/** Load balancers polling at `at` (forgetting those that stopped), established ones first. */
function pollersAt(ledger: LedgerState, at: number): Poller[] {
  sweep(ledger, at);
  const recent = [...ledger.probation.values()].filter(
    (e) => at - e.lastSeenMs <= forgetAfter(ledger, e),
  );
  return [
    ...[...ledger.pollers.values()].map((entry) => view(entry, true)),
    ...recent.map((entry) => view(entry, false)),
  ];
}

function forgetAfter(ledger: LedgerState, entry: Entry): number {
  const interval = median(entry.gaps);
  const wait = interval === undefined ? ledger.minForgetMs : interval * ledger.forgetAfterIntervals;
  return Math.min(ledger.maxForgetMs, Math.max(ledger.minForgetMs, wait));
}

// A poller goes after a few of its intervals. An address seen once stays on probation for as
// long as any poller may be waited for (or until newer ones push it out), so a load balancer
// that polls less often than every 10 s still joins the ledger at its second probe; it is
// reported only while it would be kept if it were a poller.
function sweep(ledger: LedgerState, at: number): void {
  for (const [key, entry] of ledger.pollers) {
    if (at - entry.lastSeenMs > forgetAfter(ledger, entry)) ledger.pollers.delete(key);
  }
  for (const [key, entry] of ledger.probation) {
    if (at - entry.lastSeenMs > ledger.maxForgetMs) ledger.probation.delete(key);
  }
}

function view(entry: Entry, established: boolean): Poller {
  return {
    address: entry.address,
    service: entry.service,
    firstSeenMs: entry.firstSeenMs,
    lastSeenMs: entry.lastSeenMs,
    intervalMs: median(entry.gaps),
    probes: entry.probes,
    lastGiven: entry.lastGiven,
    lastHeard: entry.lastHeard,
    lastHeardMs: entry.lastHeardMs,
    heldMaxconn: entry.heldMaxconn,
    established,
  };
}

/** The entry for `key`; a new one starts on probation, and one seen again joins the pollers. */
function entryFor(
  ledger: LedgerState,
  key: string,
  address: string,
  service: string,
  at: number,
): Entry {
  const { pollers, probation } = ledger;
  const known = pollers.get(key);
  if (known !== undefined) return known;
  const waiting = probation.get(key);
  if (waiting !== undefined) {
    // Seen again: a load balancer, not a one-off. When full, the stalest gives way: one that
    // really polls is seen again within its interval. Rare, so a scan is fine.
    probation.delete(key);
    if (pollers.size >= ledger.maxPollers) pollers.delete(stalest(pollers));
    pollers.set(key, waiting);
    return waiting;
  }
  const fresh: Entry = {
    address,
    service,
    firstSeenMs: at,
    lastSeenMs: at,
    gaps: [],
    probes: 0,
    lastGiven: undefined,
    lastHeard: undefined,
    lastHeardMs: undefined,
    heldMaxconn: undefined,
  };
  // Entries on probation are never seen again there: insertion order is age order.
  if (probation.size >= ledger.maxProbation) {
    const oldest = probation.keys().next().value;
    if (oldest !== undefined) probation.delete(oldest);
  }
  probation.set(key, fresh);
  return fresh;
}

const decoder = new TextDecoder();

/** The maxconn HAProxy holds after hearing `reply` while it held `held`: the reply's, else `held`. */
export function heldMaxconn(held: number | undefined, reply: Uint8Array): number | undefined {
  return maxconnWord(decoder.decode(reply)) ?? held;
}

/**
 * The limit HAProxy keeps against the agent's word: the one it holds when the `current` reply says
 * no maxconn (meaning haproxy.cfg's), which only a maxconn word undoes; else undefined.
 */
export function keptMaxconn(held: number | undefined, current: Uint8Array): number | undefined {
  return maxconnWord(decoder.decode(current)) === undefined ? held : undefined;
}

/** The key of the entry seen longest ago. */
function stalest(map: ReadonlyMap<string, Entry>): string {
  let key = "";
  let oldest = Number.POSITIVE_INFINITY;
  for (const [k, entry] of map) {
    if (entry.lastSeenMs < oldest) {
      oldest = entry.lastSeenMs;
      key = k;
    }
  }
  return key;
}

function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}
