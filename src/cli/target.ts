/**
 * Which state file a command acts on, as which user, and which running daemon serves it.
 *
 * The command line often runs as root. It never lets another user decide a path it acts on, nor
 * acts on a path with more rights than the user who controls it:
 * - the file is the one named (flag, environment), else the file of the one daemon whose word
 *   counts (one running as the caller, as root, or as a hapgent system service, which only root
 *   can start), else the default, or the package's file when only that one exists;
 * - the path is walked: when another user could redirect it (their directory on the way), a root
 *   caller acts as that user for good before touching the file, and any other caller refuses to
 *   change it; when several users could, everyone refuses. Reading needs no more: a caller other
 *   than root reads with its own rights, which no path can raise;
 * - a file named by a daemon is only as good as the user the daemon runs as: it is used with that
 *   user's rights, never more;
 * - only daemons that could legitimately serve the file count (root, the user acted as, the
 *   file's owner); others that claim it are shown and ignored, so they cannot block a command.
 */
import { lstat } from "node:fs/promises";
import { resolve } from "node:path";
import {
  type Config,
  DEFAULTS,
  formatAddress,
  type ProcessContext,
  parseConfig,
} from "../config.js";
import { printable } from "../core/state.js";
import { controllerOf, walkPath } from "../path-control.js";
import type { Values } from "./args.js";
import { untrustedSocket } from "./control.js";
import {
  describeDaemon,
  type Found,
  findDaemons,
  probeAddress,
  type RunningDaemon,
  samePath,
} from "./daemons.js";
import { CLI_EXIT, CliError, usage } from "./exit.js";

/** What a command needs from its process to find and act on its target. */
export interface TargetIo extends ProcessContext {
  /** This process, never taken for a daemon. */
  readonly pid: number;
  readonly procRoot: string;
  /** Switches this process to `uid` for good; throws an Error saying why it cannot. */
  readonly become: (uid: number) => void;
  /** An account's name, for messages; undefined when it has none. */
  readonly userName: (uid: number) => string | undefined;
}

export interface Target {
  readonly config: Config;
  /** Daemons that serve the file, by pid. */
  readonly agents: readonly number[];
  /** The same daemons, as found: to check that a pid still names one before signalling it. */
  readonly serving: readonly RunningDaemon[];
  /** Daemons seen but not used, and why. */
  readonly notes: readonly string[];
  readonly probeHost: string;
  readonly probePort: number;
  /** The serving daemon's control socket, checked; or why there is none to use. */
  readonly socket: { readonly path: string } | { readonly path: undefined; readonly why: string };
}

const FLAGS = [
  ["state-file", "HAPGENT_STATE_FILE"],
  ["ip", "HAPGENT_IP"],
  ["port", "HAPGENT_PORT"],
] as const;

/** The flags, then the environment, name the state file and address; flags win. */
export function configure(
  io: Pick<TargetIo, "env" | "cwd" | "uid">,
  values: Values,
): {
  config: Config;
  fileNamed: boolean;
} {
  const env: Record<string, string | undefined> = { ...io.env };
  for (const [flag, variable] of FLAGS) {
    const value = values[flag];
    if (value === undefined) continue;
    if (value === "") throw usage(`--${flag} needs a value`);
    // The environment's value is not checked: the flag replaces it.
    env[variable] = value;
  }
  const parsed = parseConfig(env, io.cwd, io.uid);
  if (!parsed.ok) {
    const flag = FLAGS.find(([, variable]) => variable === parsed.variable)?.[0];
    throw usage(
      flag !== undefined && values[flag] !== undefined
        ? `--${flag} ${JSON.stringify(parsed.value)} is invalid; expected ${parsed.expected}`
        : parsed.reason,
    );
  }
  return { config: parsed.config, fileNamed: Boolean(env.HAPGENT_STATE_FILE) };
}

type Readable = Found & { readonly readable: true; readonly config: Config };

/** What a command does to the file: read it (status, check) or change it. */
export type Access = "read" | "change";

/** Finds the file, the user to act as and the daemon; switches to that user. */
export async function findTarget(io: TargetIo, values: Values, access: Access): Promise<Target> {
  let { config, fileNamed } = configure(io, values);
  const found = await findDaemons(io.procRoot, io.pid);
  const notes: string[] = [];
  const read = reader(io, notes);

  // A deploy script on a host with one hapgent need not know where its file is.
  const namedBy = fileNamed ? undefined : await fileNamer(io, found, read);
  if (namedBy !== undefined) config = { ...config, stateFile: namedBy.config.stateFile };
  else if (!fileNamed) config = { ...config, stateFile: await unnamedFile() };
  const { uid, owner } = await actingUser(io, config.stateFile, namedBy, access);
  const serving = await servers(io, found, read, notes, { uid, owner, path: config.stateFile });
  notes.push(...unaskedNotes(io, found, [uid, owner, 0], fileNamed));

  const single = serving.length === 1 ? serving[0] : undefined;
  const socket = await controlSocket(io, values, single);
  become(io, uid, config.stateFile);
  const address =
    single && values.ip === undefined && values.port === undefined ? single.config : config;
  return {
    config,
    agents: serving.map((d) => d.pid),
    serving,
    notes: notes.map(printable),
    probeHost: probeAddress(address.host),
    probePort: address.port,
    socket,
  };
}

/** The file the Debian package's service is given (its unit and init script set it). */
export const PACKAGE_STATE_FILE = "/var/lib/hapgent/state.json";

/**
 * The file a command uses when none is named and no daemon names one: the program's default,
 * else the package's when only that one exists, so that root finds it with the service stopped.
 * The default when neither exists: that is where an agent started without settings looks.
 */
export function unnamedStateFile(exists: { default: boolean; package: boolean }): string {
  return exists.package && !exists.default ? PACKAGE_STATE_FILE : DEFAULTS.HAPGENT_STATE_FILE;
}

async function unnamedFile(): Promise<string> {
  const [inDefault, inPackage] = await Promise.all([
    present(DEFAULTS.HAPGENT_STATE_FILE),
    present(PACKAGE_STATE_FILE),
  ]);
  return unnamedStateFile({ default: inDefault, package: inPackage });
}

/** Whether a name is there (a link too: whoever acts on it is decided as for any path). */
async function present(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

type Read = (daemon: Found) => Promise<Readable | undefined>;

/** Reads a daemon's environment once, noting why when it says nothing usable. */
function reader(io: TargetIo, notes: string[]): Read {
  const described = new Map<Found, Readable | undefined>();
  return async (daemon) => {
    if (described.has(daemon)) return described.get(daemon);
    const said = await describeDaemon(io.procRoot, daemon);
    if (!said.readable) {
      notes.push(`hapgent pid ${daemon.pid} (${who(io, daemon.uid)}): ${said.reason}`);
    }
    const readable = said.readable ? { ...daemon, ...said } : undefined;
    described.set(daemon, readable);
    return readable;
  };
}

/**
 * The one daemon whose word names the file: one running as the caller, as root, or as a hapgent
 * system service; none when there is none. Throws when several could.
 */
async function fileNamer(
  io: TargetIo,
  found: readonly Found[],
  read: Read,
): Promise<Readable | undefined> {
  const trusted: Readable[] = [];
  for (const daemon of found.filter((d) => d.uid === io.uid || d.uid === 0 || isService(d))) {
    const readable = await read(daemon);
    if (readable) trusted.push(readable);
  }
  // Any one of them would be a guess, and the default file none of theirs.
  if (trusted.length > 1) throw severalNamers(io, trusted);
  return trusted[0];
}

function severalNamers(io: TargetIo, daemons: readonly Readable[]): CliError {
  const listed = daemons
    .slice(0, MAX_NOTED)
    .map(
      (d) =>
        `pid ${d.pid} (${who(io, d.uid)}) serves ${d.config.stateFile} on ${formatAddress(d.config.host, d.config.port)}`,
    );
  const more = daemons.length - listed.length;
  if (more > 0) listed.push(`and ${more} more`);
  return new CliError(
    CLI_EXIT.SEVERAL_AGENTS,
    printable(
      `${daemons.length} hapgent daemons run here and no state file is named: ${listed.join("; ")}. Name the file of the one meant with --state-file (or HAPGENT_STATE_FILE)`,
    ),
  );
}

/**
 * The daemons serving `path` that may: root's and the acting user's first, the file's owner's
 * only when there is none. Others are never asked (see unaskedNotes).
 */
async function servers(
  io: TargetIo,
  found: readonly Found[],
  read: Read,
  notes: string[],
  { uid, owner, path }: { uid: number; owner: number | undefined; path: string },
): Promise<Readable[]> {
  const primary: Readable[] = [];
  const owners: Readable[] = [];
  for (const daemon of found) {
    const rank =
      daemon.uid === 0 || daemon.uid === uid ? primary : daemon.uid === owner ? owners : undefined;
    if (rank === undefined) continue;
    const readable = await read(daemon);
    if (readable && (await samePath(readable.config.stateFile, path))) rank.push(readable);
  }
  if (primary.length === 0) return owners;
  for (const d of owners) {
    notes.push(
      `ignored hapgent pid ${d.pid} (${who(io, d.uid)}): it serves this file too, but one of root or ${who(io, uid)} does`,
    );
  }
  return primary;
}

/** The serving daemon's control socket (or the one named), if it is safe to use. */
async function controlSocket(
  io: TargetIo,
  values: Values,
  daemon: Readable | undefined,
): Promise<Target["socket"]> {
  if (daemon === undefined) return { path: undefined, why: "no daemon serves the file" };
  const path =
    values.socket === undefined ? daemon.config.controlSocket : resolve(io.cwd, values.socket);
  const why = await untrustedSocket(path, daemon.uid);
  return why === undefined ? { path } : { path: undefined, why };
}

/** Daemons of other users, never asked which file they serve: said, never silently passed over. */
function unaskedNotes(
  io: TargetIo,
  found: readonly Found[],
  asked: readonly (number | undefined)[],
  fileNamed: boolean,
): string[] {
  const unasked = found.filter((d) => !asked.includes(d.uid));
  const shown = unasked
    .slice(0, MAX_NOTED)
    .map(
      (d) =>
        `hapgent pid ${d.pid} (${who(io, d.uid)}) was not asked which file it serves: it runs as a user who cannot change this one${fileNamed ? "" : " and not as a hapgent system service; name its file with --state-file to use it"}`,
    );
  const more = unasked.length - shown.length;
  return more > 0 ? [...shown, `and ${more} more hapgent processes of other users`] : shown;
}

/** Daemons named one by one in notes; past this, a count. */
const MAX_NOTED = 5;

/**
 * Acts on a file that no daemon is asked about (`hapgent check FILE`): switches to the user
 * who controls its path, as findTarget does.
 */
export async function actOn(io: TargetIo, path: string, access: Access): Promise<void> {
  const { uid } = await actingUser(io, path, undefined, access);
  become(io, uid, path);
}

/** Switches to `uid` for good, unless the command already runs as it. */
function become(io: TargetIo, uid: number, path: string): void {
  if (uid === io.uid) return;
  try {
    io.become(uid);
  } catch (err) {
    throw new CliError(
      CLI_EXIT.UNSAFE_PATH,
      `cannot act on ${path} as ${who(io, uid)}, who controls it: ${(err as Error).message}; nothing was read or written`,
    );
  }
}

/**
 * The user whose rights the command uses on `path`, and the owner of the file it reaches (when
 * it exists). Throws a CliError when no user's rights are safe to use.
 */
async function actingUser(
  io: TargetIo,
  path: string,
  namedBy: Readable | undefined,
  access: Access,
): Promise<{ uid: number; owner: number | undefined }> {
  const unsafe = (why: string) =>
    new CliError(
      CLI_EXIT.UNSAFE_PATH,
      `refusing to use ${path} as ${who(io, io.uid)}: ${why}. Nothing was ${access === "read" ? "read" : "read or written"}.`,
    );
  let lookups: Awaited<ReturnType<typeof walkPath>>;
  try {
    lookups = await walkPath(path);
  } catch (err) {
    // A caller who cannot even look at the path cannot act on it either: the kernel will say so.
    if (io.uid !== 0) return { uid: io.uid, owner: undefined };
    throw unsafe(`its directories cannot be examined (${(err as NodeJS.ErrnoException).code})`);
  }
  const last = lookups.at(-1);
  const owner = last?.entry?.uid;
  // Whoever decides what the path reaches, such a caller can only read what it may read anyway.
  if (access === "read" && io.uid !== 0) return { uid: io.uid, owner };
  const controller = controllerOf(lookups);
  if (controller.kind === "several") {
    throw unsafe(`${controller.why}, so any of them could point it at another file`);
  }
  let uid = controller.kind === "user" ? controller.uid : 0;
  const why = controller.kind === "user" ? named(io, controller.why) : "";
  if (namedBy !== undefined && namedBy.uid !== 0) {
    // The daemon's environment is its user's word: worth that user's rights and no more.
    if (uid !== 0 && uid !== namedBy.uid) {
      throw unsafe(
        `hapgent pid ${namedBy.pid} (${who(io, namedBy.uid)}) names it, but ${why}; name the file with --state-file`,
      );
    }
    uid = namedBy.uid;
  }
  if (io.uid !== 0 && uid !== 0 && uid !== io.uid) {
    throw unsafe(
      `${why || `hapgent pid ${namedBy?.pid} names it`}, and only that user or root may act on it; run the command as either`,
    );
  }
  return { uid: io.uid === 0 ? uid : io.uid, owner };
}

function isService(daemon: Found): boolean {
  return daemon.unit?.startsWith("hapgent") ?? false;
}

/** `uid 999 (hapgent)`, or `root`. */
function who(io: Pick<TargetIo, "userName">, uid: number): string {
  if (uid === 0) return "root";
  const name = io.userName(uid);
  return name === undefined ? `uid ${uid}` : `uid ${uid} (${name})`;
}

/** A controller's reason with the account's name after its uid. */
function named(io: Pick<TargetIo, "userName">, why: string): string {
  return why.replace(/uid ([0-9]+)/g, (_, uid: string) => who(io, Number(uid)));
}
