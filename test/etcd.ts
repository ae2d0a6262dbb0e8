/**
 * Real etcd for the fleet tests: Debian's etcd-server started on loopback as one member or a
 * cluster of three, written with Debian's etcdctl (not with hapgent's own client), and a TCP
 * relay in front of it that a test can cut and restore, as a network partition would.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, waitFor } from "./helpers.js";

const ETCD = ["etcd", "/usr/bin/etcd"].find((c) => runs(c, "--version"));
const ETCDCTL = ["etcdctl", "/usr/bin/etcdctl"].find((c) => runs(c, "version"));

function runs(command: string, version: string): boolean {
  try {
    execFileSync(command, [version], {
      stdio: "ignore",
      env: { ...process.env, ETCDCTL_API: "3" },
    });
    return true;
  } catch {
    return false;
  }
}

/** Outside CI a missing etcd skips, loudly; in CI it fails. */
export const SKIP_ETCD = (() => {
  if (ETCD !== undefined && ETCDCTL !== undefined) return false;
  const which = "etcd (etcd-server) or etcdctl (etcd-client) is not installed";
  if (process.env.CI === "true") {
    throw new Error(
      `${which}, and CI must run the fleet suite: apt-get install etcd-server etcd-client`,
    );
  }
  process.stderr.write(`\n*** ${which}: the fleet suite is SKIPPED ***\n\n`);
  return which;
})();

export interface Member {
  readonly name: string;
  readonly clientUrl: string;
  /** Starts it (again, on the same data and ports). */
  start(): Promise<void>;
  /** Ends it: SIGKILL by default, a crash. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Ends it and removes its data: the next start makes a new store. */
  wipe(): Promise<void>;
  readonly running: boolean;
}

export interface Cluster {
  readonly members: readonly Member[];
  /** Every member's client URL, comma-separated. */
  readonly endpoints: string;
  /** etcdctl against the members that run. */
  ctl(...args: string[]): Promise<string>;
  put(key: string, value: string): Promise<void>;
  /**
   * The same through etcd's JSON gateway with fetch, resolving when etcd has committed it: no
   * process to start, for measuring how fast a write reaches the agents.
   */
  putNow(key: string, value: string): Promise<void>;
  /** The store's revision now. */
  revision(): Promise<number>;
  /** The member that leads now. */
  leader(): Promise<Member>;
}

type After = { after: (fn: () => Promise<void> | void) => void };

/** PEM files for a TLS etcd that asks its clients for a certificate signed by `ca`. */
export interface EtcdTlsFiles {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

/**
 * A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in `dir`.
 * With --client-cert-auth, etcd's JSON gateway calls etcd itself with the server's certificate,
 * which must then be good for client authentication too (as etcd's own TLS guide says).
 */
export async function makeCertificates(dir: string): Promise<EtcdTlsFiles> {
  const f = (name: string) => join(dir, name);
  const openssl = (...args: string[]) =>
    new Promise<void>((resolve, reject) =>
      execFile("openssl", args, (err, _out, stderr) =>
        err ? reject(new Error(`openssl ${args[0]}: ${stderr}`)) : resolve(),
      ),
    );
  await openssl(
    "req",
    "-x509",
    ...NEW_KEY,
    "-keyout",
    f("ca.key"),
    "-out",
    f("ca.pem"),
    "-days",
    "2",
    "-subj",
    "/CN=hapgent test CA",
  );
  for (const [name, extra] of [
    ["server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"],
    ["client", "extendedKeyUsage=clientAuth"],
  ] as const) {
    await openssl(
      "req",
      ...NEW_KEY,
      "-keyout",
      f(`${name}.key`),
      "-out",
      f(`${name}.csr`),
      "-subj",
      `/CN=hapgent test ${name}`,
    );
    await writeFile(f(`${name}.ext`), `${extra.replace("\\n", "\n")}\n`);
    await openssl(
      "x509",
      "-req",
      "-in",
      f(`${name}.csr`),
      "-CA",
      f("ca.pem"),
      "-CAkey",
      f("ca.key"),
      "-CAcreateserial",
      "-out",
      f(`${name}.pem`),
      "-days",
      "2",
      "-extfile",
      f(`${name}.ext`),
    );
  }
  return {
    ca: f("ca.pem"),
    serverCert: f("server.pem"),
    serverKey: f("server.key"),
    clientCert: f("client.pem"),
    clientKey: f("client.key"),
  };
}

/** openssl req: a new P-256 key, unencrypted. */
const NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/** Starts `size` members on loopback and waits until the cluster answers. */
export async function startEtcd(t: After, size = 1, tls?: EtcdTlsFiles): Promise<Cluster> {
  const dir = await mkdtemp(join(tmpdir(), "hapgent-etcd-"));
  const ports: { client: number; peer: number }[] = [];
  for (let i = 0; i < size; i++) ports.push({ client: await freePort(), peer: await freePort() });
  const names = ports.map((_, i) => `m${i}`);
  const initial = ports.map((p, i) => `${names[i]}=http://127.0.0.1:${p.peer}`).join(",");
  const members: (Member & { child?: ChildProcess })[] = ports.map((p, i) => {
    const name = names[i] as string;
    const clientUrl = `${tls === undefined ? "http" : "https"}://127.0.0.1:${p.client}`;
    let child: ChildProcess | undefined;
    let exited: Promise<void> = Promise.resolve();
    let output = "";
    const member = {
      name,
      clientUrl,
      get running() {
        return child !== undefined && child.exitCode === null && child.signalCode === null;
      },
      async start() {
        const c = spawn(
          ETCD as string,
          [
            `--name=${name}`,
            `--data-dir=${join(dir, name)}`,
            `--listen-client-urls=${clientUrl}`,
            `--advertise-client-urls=${clientUrl}`,
            `--listen-peer-urls=http://127.0.0.1:${p.peer}`,
            `--initial-advertise-peer-urls=http://127.0.0.1:${p.peer}`,
            `--initial-cluster=${initial}`,
            "--initial-cluster-state=new",
            `--initial-cluster-token=hapgent-test-${ports[0]?.peer}`,
            // Elections within a second on a loaded machine, not etcd's production defaults.
            "--heartbeat-interval=100",
            "--election-timeout=1000",
            "--logger=zap",
            "--log-level=error",
            ...(tls === undefined
              ? []
              : [
                  `--cert-file=${tls.serverCert}`,
                  `--key-file=${tls.serverKey}`,
                  `--trusted-ca-file=${tls.ca}`,
                  "--client-cert-auth",
                ]),
          ],
          { stdio: ["ignore", "ignore", "pipe"] },
        );
        child = c;
        c.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
          output = (output + chunk).slice(-4000);
        });
        exited = new Promise((resolve) => c.on("close", () => resolve()));
      },
      async stop(signal: NodeJS.Signals = "SIGKILL") {
        if (!member.running) return;
        child?.kill(signal);
        await exited;
      },
      async wipe() {
        await member.stop();
        await rm(join(dir, name), { recursive: true, force: true });
      },
      output: () => output,
    };
    return member;
  });
  t.after(async () => {
    await Promise.all(members.map((m) => m.stop()));
    await rm(dir, { recursive: true, force: true });
  });
  await Promise.all(members.map((m) => m.start()));
  const endpoints = members.map((m) => m.clientUrl).join(",");
  const ctl = (...args: string[]) =>
    new Promise<string>((resolve, reject) => {
      const live = members.filter((m) => m.running).map((m) => m.clientUrl);
      execFile(
        ETCDCTL as string,
        [
          `--endpoints=${live.join(",")}`,
          "--dial-timeout=2s",
          "--command-timeout=5s",
          ...(tls === undefined
            ? []
            : [`--cacert=${tls.ca}`, `--cert=${tls.clientCert}`, `--key=${tls.clientKey}`]),
          ...args,
        ],
        { env: { ETCDCTL_API: "3", PATH: process.env.PATH ?? "/usr/bin:/bin" } },
        (err, stdout, stderr) =>
          err
            ? reject(new Error(`etcdctl ${args.join(" ")}: ${stderr || err.message}`))
            : resolve(stdout),
      );
    });
  const cluster: Cluster = {
    members,
    endpoints,
    ctl,
    async put(key, value) {
      // "--" so a value never reads as an option.
      await ctl("put", "--", key, value);
    },
    async putNow(key, value) {
      const b64 = (text: string) => Buffer.from(text).toString("base64");
      const response = await fetch(`${members.find((m) => m.running)?.clientUrl}/v3/kv/put`, {
        method: "POST",
        body: JSON.stringify({ key: b64(key), value: b64(value) }),
      });
      if (!response.ok) throw new Error(`put ${key}: HTTP ${response.status}`);
      await response.arrayBuffer();
    },
    async revision() {
      const out = JSON.parse(
        await ctl("get", "/", "--prefix", "--keys-only", "--limit=1", "-w", "json"),
      );
      return Number(out.header.revision);
    },
    async leader() {
      const status = JSON.parse(await ctl("endpoint", "status", "-w", "json")) as {
        Endpoint: string;
        Status: { header: { member_id: number }; leader: number };
      }[];
      const lead = status.find((s) => s.Status.header.member_id === s.Status.leader);
      const member = members.find((m) => m.clientUrl === lead?.Endpoint);
      if (member === undefined) throw new Error(`no leader in ${JSON.stringify(status)}`);
      return member;
    },
  };
  await waitFor(
    "etcd answering",
    async () =>
      await ctl("endpoint", "health").then(
        () => true,
        () => undefined,
      ),
    20_000,
  ).catch((err: Error) => {
    throw new Error(
      `${err.message}: ${members.map((m) => (m as { output?: () => string }).output?.()).join("\n")}`,
    );
  });
  return cluster;
}

export interface Relay {
  /** The relay's URL, to give the agent instead of etcd's. */
  readonly url: string;
  /** Drops every connection and refuses new ones, as a partition would. */
  cut(): void;
  restore(): void;
  /**
   * While on, what etcd sends on a watch's connection (one that has carried a POST to
   * /v3/watch) is dropped, while reads pass: a proxy that swallows a stream, or a NAT that forgot
   * an idle flow.
   */
  swallowWatches(on: boolean): void;
  /** Requests relayed so far, per path (`/v3/kv/txn` …): what the agent asked etcd. */
  requests(): ReadonlyMap<string, number>;
  /** What etcd sends is passed on `ms` later (0: at once), in order: a slow etcd or link. */
  delay(ms: number): void;
}

/** A TCP relay to `target` (etcd's client URL) on a loopback port of its own. */
export async function startRelay(t: After, target: string): Promise<Relay> {
  const { hostname, port: targetPort } = new URL(target);
  const sockets = new Set<Socket>();
  let open = true;
  let swallow = false;
  let delayMs = 0;
  const counts = new Map<string, number>();
  const server: Server = createServer((client) => {
    if (!open) return client.destroy();
    const upstream = connect(Number(targetPort), hostname);
    sockets.add(client);
    sockets.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    let watch = false;
    client.on("data", (chunk: Buffer) => {
      if (chunk.includes("POST /v3/watch")) watch = true;
      // A request's first line starts a chunk (each request is written whole, one at a time).
      for (const [, path] of chunk.toString("latin1").matchAll(/^POST (\S+) HTTP\/1\.1\r$/gm)) {
        counts.set(path as string, (counts.get(path as string) ?? 0) + 1);
      }
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (swallow && watch) return;
      if (delayMs === 0) client.write(chunk);
      // Timers of one length fire in the order they were set: the bytes keep theirs.
      else setTimeout(() => client.destroyed || client.write(chunk), delayMs);
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  );
  return {
    url: `http://127.0.0.1:${port}`,
    cut() {
      open = false;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    },
    restore() {
      open = true;
    },
    swallowWatches(on) {
      swallow = on;
    },
    requests: () => new Map(counts),
    delay(ms) {
      delayMs = ms;
    },
  };
}
