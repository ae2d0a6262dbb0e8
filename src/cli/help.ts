/** What `hapgent --help` and `hapgent COMMAND --help` print, in 80 columns. */
import { REPLY_FIELDS } from "../core/fields.js";
import { STATUSES } from "../core/state.js";

/** Seconds --idle waits by default: HAProxy purges idle pooled connections well within it. */
export const DEFAULT_IDLE_TIMEOUT_S = 120;

export const DEFAULT_TIMEOUT_S = 5;

const COLUMNS = 80;
/** Where an option's text starts, after the option. */
const TEXT_COLUMN = 21;

/** An option and its text, the text's lines after the first from TEXT_COLUMN. */
function optionHelp(option: string, lines: readonly string[]): string {
  const indent = " ".repeat(TEXT_COLUMN);
  return `  ${option.padEnd(TEXT_COLUMN - 3)} ${lines.join(`\n${indent}`)}`;
}

/** `items`, each followed by a comma, filling lines of at most COLUMNS indented by two. */
function commaList(items: readonly string[]): string {
  const lines: string[] = [];
  let line = "";
  for (const item of items) {
    const longer = `${line} ${item},`;
    if (line === "" || longer.length > COLUMNS) {
      if (line !== "") lines.push(line);
      line = `  ${item},`;
    } else {
      line = longer;
    }
  }
  return [...lines, line].join("\n");
}

/** Each field's flag and its help, for hapgent set. */
const FIELDS_HELP = REPLY_FIELDS.map(({ flag, help }) => optionHelp(flag, help)).join("\n");

/** The field flags hapgent fleet set shares with hapgent set. */
const FLEET_FIELD_FLAGS = commaList([
  "--service NAME",
  ...REPLY_FIELDS.flatMap(({ name, flag }) => [flag, `--no-${name}`]),
  "--reason TEXT: as for hapgent set",
]);

const TARGET_HELP = `  --state-file PATH  the state file; default $HAPGENT_STATE_FILE, else the file
                     of the one hapgent that runs as this user, as root or as
                     the hapgent service, else /etc/hapgent/state.json, or
                     /var/lib/hapgent/state.json (the package's) when only
                     that one exists
  --ip ADDR          address to probe; default the agent's own, else $HAPGENT_IP
  --port N           port to probe; default the agent's own, else $HAPGENT_PORT
  --socket PATH      the daemon's control socket; default the one it says`;

const EXIT_HELP = `Exit codes:
  0  done: applied and confirmed; the agent agrees with the file; a valid file
  1  the state file is invalid
  2  invalid command or input; nothing was written
  3  no running hapgent serves the state file (set: the file was written and
     nothing was signalled)
  4  the agent did not confirm in time, or answers other than the file says
  5  the state file cannot be written
  6  several hapgent processes serve the state file, or none is named and
     several run; nothing was written
  7  another user could redirect the state file's path; nothing was read or
     written
  8  --wait: a load balancer did not hear the new state in time
  9  --idle: connections to the port were still open in time
 10  fleet: etcd cannot be reached, or refused the request`;

const MAIN = `Usage: hapgent [COMMAND] [OPTIONS]

Without a command, runs the agent: it answers HAProxy agent checks from the
state file. Environment: HAPGENT_IP (default 0.0.0.0), HAPGENT_PORT (9777),
HAPGENT_STATE_FILE (/etc/hapgent/state.json), HAPGENT_SEND_WAIT_MS (100: how
long a probe may take to send its agent-send line when the file has services),
HAPGENT_CONTROL_SOCKET (/run/hapgent/PORT.sock for root and the service),
HAPGENT_METRICS (ADDRESS:PORT for Prometheus), HAPGENT_CHECKS_FILE (the agent's
own checks of its service), HAPGENT_ETCD_ENDPOINTS and HAPGENT_ETCD_KEYS (the
fleet's word from etcd; see hapgent(8) for the credentials).
Signals: USR1 sets UP, USR2 sets DOWN (both saved), HUP re-reads the file (and
the checks file), TERM and INT stop.

Commands:
  status               the file's state, the agent's live answers, and whether
                       they agree
  set STATUS           validate, have the agent apply and save it, confirm its
                       answer; --wait: until every load balancer heard it
  up | down | ready | drain | maint
                       set that status, keeping the other fields
  set … --service NAME the same for one service (what HAProxy's agent-send NAME
                       gets)
  check [FILE]         validate a state file; changes nothing
  fleet set KEY STATUS | fleet clear KEY | fleet status [KEY…]
                       the fleet's words in etcd, which every agent watching
                       KEY follows (within what its own state file allows)

Options: --help, --version; hapgent COMMAND --help for a command's options.

${EXIT_HELP}
`;

const STATUS = `Usage: hapgent status [--json] [OPTIONS]

Shows the state in the file, what the live agent answers now (one probe of its
port, and one per service with the service's name as agent-send), and whether
they agree.
  --json             one JSON object, for scripts
${TARGET_HELP}

${EXIT_HELP}
`;

const SET = `Usage: hapgent set STATUS [OPTIONS]
       hapgent up | down | ready | drain | maint [OPTIONS]

STATUS is one of ${STATUSES.join(", ")}.
Fields not named keep their value from the current file; a reason lasts only
until the next change. Validates first
(nothing is written on bad input); the running agent applies and saves the
change (through its control socket; else the command saves the file and sends
SIGHUP); then the command probes it until it answers the new state.
  --service NAME     set the state of service NAME (added if the file has none
                     of that name), not the instance's; NAME is what HAProxy
                     sends with agent-send, without the line end
${FIELDS_HELP}
  --reason TEXT      why (1-200 characters): recorded with the change, with who
                     made it and when, and shown by HAProxy in place of the
                     description until the next change
  --for DURATION     the change expires: after 90s, 30m, 2h, 1d or 1h30m the
                     state from before it returns, even across restarts of
                     the agent; a later change cancels it
  --timeout SECONDS  how long to wait for the agent's answer: above 0, at most
                     3600 (default ${DEFAULT_TIMEOUT_S})
  --no-confirm       do not probe the agent for its answer (--no-wait: the same)
  --wait             then wait until every load balancer that polls the agent
                     has heard the new state (needs the daemon's control socket)
  --wait-timeout S   how long --wait may take (default: three of the slowest
                     load balancer's intervals, at least 10 s)
  --idle PORT        then wait until no connection to PORT is open (repeatable;
                     implies --wait)
  --idle-timeout S   how long --idle may take (default ${DEFAULT_IDLE_TIMEOUT_S})
${TARGET_HELP}

${EXIT_HELP}
`;

const CHECK = `Usage: hapgent check [FILE] [--state-file PATH]

Validates a state file with the agent's own rules and changes nothing. Prints
the state when it is valid, else the precise reason.

${EXIT_HELP}
`;

const FLEET = `Usage: hapgent fleet set KEY STATUS [OPTIONS]
       hapgent fleet clear KEY [--endpoints URLS]
       hapgent fleet status [KEY…] [--json] [--endpoints URLS]

The fleet's words, kept in etcd: each agent watches the keys of its
HAPGENT_ETCD_KEYS (most specific first, e.g. /hapgent/host/web-12,
/hapgent/group/web,/hapgent/all) and follows the first that exists. A word can
take a server out, drain it or lower its weight, never put back one its
operator took out. A value is a state in the state file's format.
  set KEY STATUS     write KEY: STATUS is one of ${STATUSES.join(", ")}; fields not
                     named keep KEY's values; written only if nobody changed KEY
                     meanwhile
  clear KEY          remove KEY: the next key of each agent speaks again
  status [KEY…]      what each key holds (default $HAPGENT_ETCD_KEYS), and
                     which one a host with these keys follows
${FLEET_FIELD_FLAGS}
                     but --no-maxconn removes the key's maxconn (a word only
                     lowers one; its maxconn 0 lowers nothing)
  --for DURATION     the key is removed after 90s, 30m, 2h, 1d … (an etcd lease)
  --endpoints URLS   etcd's client URLs, comma-separated; default
                     $HAPGENT_ETCD_ENDPOINTS. Credentials as the agent's:
                     HAPGENT_ETCD_USERNAME, HAPGENT_ETCD_PASSWORD_FILE,
                     HAPGENT_ETCD_CA_FILE, HAPGENT_ETCD_CERT_FILE/_KEY_FILE
  --json             status as one JSON object

${EXIT_HELP}
`;

export const HELP: Readonly<Record<"main" | "status" | "set" | "check" | "fleet", string>> = {
  main: MAIN,
  status: STATUS,
  set: SET,
  check: CHECK,
  fleet: FLEET,
};
