/**
 * The credentials to reach etcd with (HAPGENT_ETCD_PASSWORD_FILE, _CA_FILE, _CERT_FILE,
 * _KEY_FILE), read with the rule every file of the agent follows: a file only this user or root
 * could have changed (root alone for root), so that another user can neither point root at a
 * file of root's (a symlink to /etc/shadow sent to their etcd as a password) nor swap the CA.
 * What the files hold never appears in a message.
 */
import type { EtcdAccess } from "../config.js";
import { whyUntrusted } from "../path-control.js";
import { readCapped } from "../store.js";
import type { EtcdOptions } from "./client.js";

/** Certificates and keys are a few KiB; a password far less. */
const MAX_SECRET_FILE_BYTES = 256 * 1024;

export type OptionsResult =
  | { readonly ok: true; readonly options: EtcdOptions }
  | { readonly ok: false; readonly reason: string };

/**
 * The password in a password file: its first line, without its line end (as editors and `echo`
 * leave one), as docs/fleets.md says; what follows (a note, a second secret) is never sent.
 */
export function firstLine(bytes: Buffer): string {
  return bytes.toString("utf8").split(/\r?\n/, 1)[0] ?? "";
}

export async function etcdOptions(
  config: EtcdAccess,
  uid: number,
  timeoutMs: number,
): Promise<OptionsResult> {
  const files: [string, string | undefined][] = [
    [
      "HAPGENT_ETCD_PASSWORD_FILE",
      config.password !== undefined && "file" in config.password ? config.password.file : undefined,
    ],
    ["HAPGENT_ETCD_CA_FILE", config.caFile],
    ["HAPGENT_ETCD_CERT_FILE", config.certFile],
    ["HAPGENT_ETCD_KEY_FILE", config.keyFile],
  ];
  const read = new Map<string, Buffer>();
  for (const [variable, path] of files) {
    if (path === undefined) continue;
    const untrusted = await whyUntrusted(path, uid);
    if (untrusted !== undefined) {
      return { ok: false, reason: `${variable}=${JSON.stringify(path)}: ${untrusted}` };
    }
    const bytes = await readCapped(path, MAX_SECRET_FILE_BYTES);
    if (!bytes.ok)
      return { ok: false, reason: `${variable}=${JSON.stringify(path)} ${bytes.reason}` };
    if (bytes.bytes.length > MAX_SECRET_FILE_BYTES) {
      return {
        ok: false,
        reason: `${variable}=${JSON.stringify(path)} is larger than ${MAX_SECRET_FILE_BYTES} bytes; expected a password, a PEM certificate or key`,
      };
    }
    read.set(variable, Buffer.from(bytes.bytes));
  }
  const passwordFile = read.get("HAPGENT_ETCD_PASSWORD_FILE");
  const password =
    config.password === undefined
      ? undefined
      : "text" in config.password
        ? config.password.text
        : firstLine(passwordFile ?? Buffer.alloc(0));
  if (password === "") {
    return { ok: false, reason: "HAPGENT_ETCD_PASSWORD_FILE holds an empty password" };
  }
  const ca = read.get("HAPGENT_ETCD_CA_FILE");
  const cert = read.get("HAPGENT_ETCD_CERT_FILE");
  const key = read.get("HAPGENT_ETCD_KEY_FILE");
  const tls =
    ca === undefined && cert === undefined
      ? undefined
      : {
          ...(ca === undefined ? {} : { ca }),
          ...(cert === undefined || key === undefined ? {} : { cert, key }),
        };
  return {
    ok: true,
    options: {
      endpoints: config.endpoints,
      username: config.username,
      password,
      tls,
      timeoutMs,
    },
  };
}
