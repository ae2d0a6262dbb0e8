/** Shared test helpers: temp dirs, probes, free ports, unprivileged runs. */
import { execFile, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const DIST_SRC = fileURLToPath(new URL("../src/", import.meta.url));
export const MAIN = join(DIST_SRC, "main.js");
export const IS_ROOT = process.getuid?.() === 0;
export const NOBODY = 65534;

/** A fresh directory, removed when the test ends. */
export async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "hapgent-test-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Connects, optionally sends a payload, and returns everything received until the agent closes. */
export function probe(
  port: number,
  { host = "127.0.0.1", payload }: { host?: string; payload?: string } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let received = "";
    socket.setEncoding("utf8");
    socket.on("connect", () => {
      if (payload !== undefined) socket.write(payload);
    });
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.on("end", () => socket.end());
    socket.on("close", () => resolve(received));
    socket.on("error", reject);
    socket.setTimeout(5000, () => socket.destroy(new Error("probe timed out")));
  });
}

/** A port free right now on 127.0.0.1 (the daemon takes no port 0). */
export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, host, () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/** Polls until `check` returns a value other than undefined, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 5000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Runs a Node script as the unprivileged user `nobody` (or as ourselves when not root). */
export function runUnprivileged(
  script: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      ...(IS_ROOT ? { uid: NOBODY, gid: NOBODY } : {}),
      stdio: ["ignore", "pipe", "pipe"],
      cwd: "/",
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

export function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}
