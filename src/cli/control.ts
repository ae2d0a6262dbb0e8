/**
 * The command line's side of the control socket: checked before it is trusted (a socket another
 * user controls could tell root's command anything), then one request, one reply.
 */
import { lstat } from "node:fs/promises";
import { connect } from "node:net";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type ControlRequest, isBusy } from "../control-protocol.js";
import { controllerOf, walkPath } from "../path-control.js";

/** Why a daemon's socket must not be used, or undefined when it may. */
export async function untrustedSocket(
  path: string,
  daemonUid: number,
): Promise<string | undefined> {
  const stats = await lstat(path).catch((err: NodeJS.ErrnoException) => err.code ?? "error");
  if (typeof stats === "string") return `${path}: ${stats}`;
  if (!stats.isSocket()) return `${path} is not a socket`;
  if (stats.uid !== 0 && stats.uid !== daemonUid) {
    return `${path} belongs to uid ${stats.uid}, not to the daemon's user`;
  }
  const controller = controllerOf(await walkPath(dirname(path)).catch(() => []));
  if (controller.kind === "several") return `${dirname(path)}: ${controller.why}`;
  if (controller.kind === "user" && controller.uid !== daemonUid) {
    return `${dirname(path)}: ${controller.why}, not the daemon's user`;
  }
  return undefined;
}

/** A control request that could not be made or answered; `code` is Node's, when it has one. */
export class ControlError extends Error {
  readonly code: string | undefined;
  /**
   * The daemon took the connection and closed or reset it before any byte of a reply: the
   * request may have been read and acted on, or not.
   */
  readonly unanswered: boolean;
  constructor(message: string, code?: string, unanswered = false) {
    super(message);
    this.name = "ControlError";
    this.code = code;
    this.unanswered = unanswered;
  }
}

/** Between tries of a request the daemon was too busy to read: short, as its clients are. */
const BUSY_RETRY_MS = 50;

/**
 * Sends one request and resolves with the reply object. A daemon busy with other clients'
 * changes reads nothing of it, so it is sent again until `timeoutMs` has passed; then the busy
 * reply is the answer. A status, which changes nothing, is also sent again when the connection
 * closed before any reply; a change is not, as it may have been made, unless the daemon had
 * closed it before the request could be written (EPIPE: as it closes the client idle longest to
 * make room, told busy), and so read none of it.
 */
export async function request(
  path: string,
  body: ControlRequest | object,
  timeoutMs: number,
): Promise<unknown> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reply = await ask(path, body, Math.max(1, deadline - Date.now())).catch(
      (err: ControlError) => {
        const unread = err.unanswered && (readOnly(body) || err.code === "EPIPE");
        if (unread && Date.now() + BUSY_RETRY_MS < deadline) return err;
        throw err;
      },
    );
    if (!(reply instanceof ControlError)) {
      if (!isBusy(reply) || Date.now() + BUSY_RETRY_MS >= deadline) return reply;
    }
    await sleep(BUSY_RETRY_MS);
  }
}

function ask(path: string, body: ControlRequest | object, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let received = "";
    let connected = false;
    const fail = (err: ControlError) => {
      socket.destroy();
      reject(err);
    };
    socket.setEncoding("utf8");
    socket.setTimeout(timeoutMs, () => fail(new ControlError(`no reply within ${timeoutMs} ms`)));
    socket.on("connect", () => {
      connected = true;
      socket.write(`${JSON.stringify(flatten(body))}\n`);
    });
    socket.on("data", (chunk: string) => {
      received += chunk;
      const end = received.indexOf("\n");
      if (end < 0) return;
      socket.end();
      try {
        resolve(JSON.parse(received.slice(0, end)));
      } catch {
        reject(new ControlError("the reply is not JSON"));
      }
    });
    socket.on("error", (err: NodeJS.ErrnoException) =>
      fail(new ControlError(err.code ?? err.message, err.code, connected && received === "")),
    );
    socket.on("end", () => {
      if (!received.includes("\n")) {
        fail(new ControlError("closed without a reply", undefined, received === ""));
      }
    });
  });
}

function readOnly(body: ControlRequest | object): boolean {
  return "op" in body && body.op === "status";
}

/** The wire form: a change's fields beside its op. */
function flatten(body: ControlRequest | object): object {
  if ("op" in body && body.op === "change" && "change" in body) {
    const by = "by" in body && body.by !== undefined ? { by: body.by } : {};
    return { op: "change", ...(body.change as object), ...by };
  }
  return body;
}
