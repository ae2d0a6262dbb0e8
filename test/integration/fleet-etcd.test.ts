/**
 * The fleet's word from real etcd (Debian's etcd-server, started here on loopback), followed by
 * real agents: one key changing, a bad value, etcd gone and back, a partition with compaction
 * behind it, the leader of three killed, and one write reaching twenty agents and HAProxy.
 */
import assert from "node:assert/strict";
import { chown, mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { createServer, type RequestListener, type ServerResponse } from "node:http";
import { join } from "node:path";
import { describe, test } from "node:test";
import { makeCertificates, SKIP_ETCD, startEtcd, startRelay } from "../etcd.js";
import { SKIP_HAPROXY, startHaproxy, type View } from "../haproxy.js";
import {
  cliFor,
  type Daemon,
  freePort,
  httpModulesLoaded,
  IS_ROOT,
  NOBODY,
  runHapgent,
  startDaemon,
  tempDir,
  waitFor,
} from "../helpers.js";

const KEYS = "/hapgent/host/a,/hapgent/group/web,/hapgent/all";

type T = Parameters<typeof startDaemon>[0] & { after: (fn: () => Promise<void> | void) => void };

function fleetEnv(endpoints: string, extra: Record<string, string> = {}) {
  return { HAPGENT_ETCD_ENDPOINTS: endpoints, HAPGENT_ETCD_KEYS: KEYS, ...extra };
}

/** An HTTP server on loopback that plays etcd (badly); its port. Closed after the test. */
async function fakeEtcd(t: T, handler: RequestListener): Promise<number> {
  const fake = createServer(handler);
  const port = await freePort();
  await new Promise<void>((resolve) => fake.listen(port, "127.0.0.1", resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        fake.closeAllConnections();
        fake.close(() => resolve());
      }),
  );
  return port;
}

/** Lines of the daemon's log matching `pattern`. */
const lines = (d: Daemon, pattern: RegExp) =>
  d
    .stderr()
    .split("\n")
    .filter((l) => pattern.test(l));

describe("the fleet's word from etcd", { skip: SKIP_ETCD, concurrency: false }, () => {
  test("the first key that exists speaks; the more restrictive of it and the file wins; the file is never written", async (t) => {
    const etcd = await startEtcd(t);
    await etcd.put("/hapgent/all", '{"status":"DRAIN","description":"zone b"}');
    const d = await startDaemon(t, {
      state: '{"status":"UP","weight":80}',
      env: fleetEnv(etcd.endpoints),
    });
    const raw = await d.readRawState();
    // Read before the first probe: a start without a cached word waits for etcd a moment.
    assert.equal(await d.probe(), "up drain 80% # fleet /hapgent/all: zone b\n");
    await etcd.put("/hapgent/group/web", '{"status":"UP","weight":50,"maxconn":20}');
    await d.waitForReply("up ready 50% maxconn:20 # fleet /hapgent/group/web\n");
    await etcd.put("/hapgent/host/a", '{"status":"UP"}');
    await d.waitForReply("up ready 80%\n");
    // The operator's word is the ceiling: a fleet UP never puts back a server taken out.
    await cliFor(d, "maint", "--reason", "disk swap");
    await d.waitForReply("maint 80% # disk swap\n");
    await etcd.ctl("del", "/hapgent/host/a");
    await etcd.put("/hapgent/group/web", '{"status":"DOWN","reason":"web tier off"}');
    await d.waitForReply("maint 80% # disk swap\n");
    const status = await cliFor(d, "status");
    assert.match(
      status.stdout,
      /^fleet {7}\{"status":"DOWN","reason":"web tier off"\} from \/hapgent\/group\/web \(revision \d+\); etcd http:\/\/127\.0\.0\.1:\d+ watched, heard [\d.]+ s ago$/m,
    );
    // The command confirms against what the agent really answers: the fleet's DOWN.
    const up = await cliFor(d, "up");
    assert.equal(up.code, 0, up.stderr);
    assert.equal(await d.probe(), "down ready 80% # fleet /hapgent/group/web: web tier off\n");
    const shown = await cliFor(d, "status");
    assert.match(
      shown.stdout,
      /^note {8}the fleet decides: the file alone would answer up ready 80%$/m,
    );
    // The probes above heard the fleet's maxconn:20, which no reply since lifted: HAProxy would
    // still hold it, so the reply alone is no agreement.
    assert.match(
      shown.stdout,
      /^note {8}127\.0\.0\.1 HOLDS maxconn:20 from an earlier reply: .*; hapgent set UP --maxconn 0 \(or --no-maxconn\) lifts it$/m,
    );
    assert.match(shown.stdout, /^agreement {3}NO$/m);
    // Only the operator's changes reached the file.
    assert.doesNotMatch(await d.readRawState(), /fleet|DOWN|DRAIN/);
    assert.notEqual(raw, await d.readRawState());
    await etcd.ctl("del", "/hapgent/group/web");
    await etcd.ctl("del", "/hapgent/all");
    await d.waitForReply("up ready 80%\n");
    assert.equal(lines(d, /no key holds a word/).length, 1, d.stderr());
  });

  test("a malformed value: the last good word stands, the reason is logged and shown, never MAINT", async (t) => {
    const etcd = await startEtcd(t);
    // A typo before any good word: the operator's state alone.
    await etcd.put("/hapgent/group/web", '{"status":"DRAIN",}');
    await etcd.put("/hapgent/all", '{"status":"DOWN"}');
    const d = await startDaemon(t, { env: fleetEnv(etcd.endpoints) });
    assert.equal(await d.probe(), "up ready 100%\n", "neither MAINT nor the less specific key");
    await d.waitForLog(
      /fleet: \/hapgent\/group\/web \(revision \d+\) is not a valid state: value is not valid JSON.*the operator's state alone decides/,
    );
    await etcd.put("/hapgent/group/web", '{"status":"DRAIN","reason":"rolling"}');
    await d.waitForReply("up drain 100% # fleet /hapgent/group/web: rolling\n");
    await etcd.put("/hapgent/group/web", '{"status":"UP","weight":"50%"}');
    await d.waitForLog(
      /is not a valid state: .*weight.*; still following \/hapgent\/group\/web \(revision \d+\)/,
    );
    assert.equal(await d.probe(), "up drain 100% # fleet /hapgent/group/web: rolling\n");
    const status = await cliFor(d, "status");
    assert.match(status.stdout, /^fleet {7}NOT FOLLOWED: \/hapgent\/group\/web .*weight/m);
    // hapgent fleet refuses to write what the agents would refuse, and says why.
    const bad = await runHapgent(["fleet", "set", "/hapgent/group/web", "up", "--weight", "300"], {
      HAPGENT_ETCD_ENDPOINTS: etcd.endpoints,
    });
    assert.equal(bad.code, 2);
    assert.equal(bad.stderr, "hapgent: --weight must be an integer 0-255, got 300\n");
    const shown = await runHapgent(["fleet", "status"], fleetEnv(etcd.endpoints));
    assert.equal(shown.code, 1, "an invalid value is exit 1, as an invalid file");
    assert.match(shown.stdout, /^\/hapgent\/group\/web +INVALID \(revision \d+\): .*weight/m);
    // Fixed with the command line: it replaces the bad value.
    const fixed = await runHapgent(
      ["fleet", "set", "/hapgent/group/web", "drain", "--weight", "40"],
      {
        HAPGENT_ETCD_ENDPOINTS: etcd.endpoints,
      },
    );
    assert.equal(fixed.code, 0, fixed.stderr);
    assert.match(fixed.stderr, /held an invalid value .*; replaced/);
    await d.waitForReply("up drain 40% # fleet /hapgent/group/web\n");
  });

  test("hapgent fleet status says what the agent follows: the group's word when the host's key is invalid, read from etcd's history", async (t) => {
    const etcd = await startEtcd(t);
    await etcd.put("/hapgent/group/web", '{"status":"DRAIN","reason":"group"}');
    const d = await startDaemon(t, { env: fleetEnv(etcd.endpoints) });
    assert.equal(await d.probe(), "up drain 100% # fleet /hapgent/group/web: group\n");
    await etcd.put("/hapgent/host/a", '{"status":"UP",}');
    await etcd.put("/hapgent/host/a", '{"status":"UP","weight":"x"}');
    await d.waitForLog(/\/hapgent\/host\/a .*weight.*still following \/hapgent\/group\/web/);
    assert.equal(await d.probe(), "up drain 100% # fleet /hapgent/group/web: group\n");
    const agent = await cliFor(d, "status");
    const followed = /^fleet {7}.* from (\S+) \(revision (\d+)\)/m.exec(agent.stdout);
    assert.ok(followed, agent.stdout);
    const shown = await runHapgent(["fleet", "status"], fleetEnv(etcd.endpoints));
    assert.equal(shown.code, 1, "an invalid value is still exit 1");
    assert.match(
      shown.stdout,
      new RegExp(
        `^a host with these keys follows ${followed[1]} \\(revision ${followed[2]}\\)$`,
        "m",
      ),
    );
    assert.match(shown.stdout, /^\/hapgent\/group\/web +.*DRAIN.*<- followed$/m);
    assert.match(shown.stdout, /^problem: .*still following \/hapgent\/group\/web/m);
    const json = await runHapgent(["fleet", "status", "--json"], fleetEnv(etcd.endpoints));
    assert.equal(JSON.parse(json.stdout).follows, "/hapgent/group/web");
    // Once etcd has compacted the history, the command says it cannot know the word before.
    await etcd.ctl("compact", String(await etcd.revision()));
    const compacted = await runHapgent(["fleet", "status"], fleetEnv(etcd.endpoints));
    assert.match(compacted.stdout, /^a host with these keys follows no fleet word/m);
    assert.match(
      compacted.stdout,
      /^note: etcd compacted its history before revision \d+: an agent that followed a word then still does$/m,
    );
  });

  test("values of 1.1 MB in less specific keys make only those keys not followed; the host's key is followed, read and watched", async (t) => {
    const etcd = await startEtcd(t);
    const huge = (why: string) =>
      `{"status":"DOWN","description":"${why} ${"x".repeat(1100 * 1000)}"}`;
    await etcd.putNow("/hapgent/group/web", huge("group"));
    await etcd.putNow("/hapgent/all", huge("all"));
    await etcd.put("/hapgent/host/a", '{"status":"DRAIN","reason":"host"}');
    const d = await startDaemon(t, { env: fleetEnv(etcd.endpoints) });
    assert.equal(await d.probe(), "up drain 100% # fleet /hapgent/host/a: host\n", d.stderr());
    const shown = await runHapgent(["fleet", "status"], fleetEnv(etcd.endpoints));
    assert.equal(shown.code, 1, `${shown.stdout}${shown.stderr}`);
    assert.match(
      shown.stdout,
      /^\/hapgent\/group\/web +INVALID \(revision \d+\): value is larger than 65536 bytes$/m,
    );
    assert.match(shown.stdout, /^\/hapgent\/host\/a +.*DRAIN.*<- followed$/m);
    // Another such value while watched, then the host's next word: followed.
    await etcd.putNow("/hapgent/all", huge("again"));
    await etcd.put("/hapgent/host/a", '{"status":"MAINT","reason":"host"}');
    await d.waitForReply("maint 100% # fleet /hapgent/host/a: host\n");
    // The host's key gone, the group's speaks, and its value is not followed: the word before
    // stands, and the reason is the value's, not etcd's.
    await etcd.ctl("del", "/hapgent/host/a");
    await d.waitForLog(
      /fleet: \/hapgent\/group\/web \(revision \d+\) is not a valid state: value is larger than 65536 bytes; still following \/hapgent\/host\/a/,
    );
    assert.equal(await d.probe(), "maint 100% # fleet /hapgent/host/a: host\n");
    const status = await cliFor(d, "status");
    assert.match(status.stdout, /^fleet {7}.*etcd http:\S+ watched, heard [\d.]+ s ago$/m);
    assert.doesNotMatch(d.stderr(), /cannot reach etcd/, d.stderr());
  });

  test("etcd gone: the last word stands, logged once; a restarted agent keeps it from its cache; etcd back: watched again", async (t) => {
    const etcd = await startEtcd(t);
    await etcd.put("/hapgent/group/web", '{"status":"DRAIN","reason":"zone b"}');
    const dir = await tempDir(t);
    const env = fleetEnv(etcd.endpoints);
    const first = await startDaemon(t, { dir, env });
    assert.equal(await first.probe(), "up drain 100% # fleet /hapgent/group/web: zone b\n");
    await etcd.members[0]?.stop();
    await first.waitForLog(
      /fleet: cannot reach etcd: .*; keeping the fleet's last word, \/hapgent\/group\/web/,
      10_000,
    );
    // Retries go on quietly: a few more seconds of them log nothing more.
    await new Promise((resolve) => setTimeout(resolve, 4000));
    assert.equal(lines(first, /cannot reach etcd/).length, 1, first.stderr());
    assert.equal(await first.probe(), "up drain 100% # fleet /hapgent/group/web: zone b\n");
    const status = await cliFor(first, "status");
    assert.match(
      status.stdout,
      /^fleet {7}\{"status":"DRAIN","reason":"zone b"\} from \/hapgent\/group\/web \(revision \d+\); etcd UNREACHABLE since .*; the last word stands, heard [\d.]+ s ago$/m,
    );
    const cache = JSON.parse(await readFile(join(dir, "state.fleet.json"), "utf8"));
    assert.equal(cache.word.key, "/hapgent/group/web");

    // A restart while etcd is down: the first probe already hears the fleet's word.
    first.signal("SIGTERM");
    await first.exited;
    const second = await startDaemon(t, { dir, env, port: first.port });
    assert.equal(await second.probe(), "up drain 100% # fleet /hapgent/group/web: zone b\n");
    await second.waitForLog(/following the cached word until etcd answers: \/hapgent\/group\/web/);

    await etcd.members[0]?.start();
    await second.waitForLog(/fleet: etcd at http:\S+ answers again after \d+ s/, 15_000);
    await etcd.put("/hapgent/group/web", '{"status":"UP"}');
    await second.waitForReply("up ready 100%\n", 10_000);
  });

  test("a partition: the watch resumes after the last revision seen, and a compaction behind it means one fresh read", async (t) => {
    const etcd = await startEtcd(t);
    const relay = await startRelay(t, etcd.endpoints);
    await etcd.put("/hapgent/all", '{"status":"UP","weight":10}');
    const metricsPort = await freePort();
    const d = await startDaemon(t, {
      env: fleetEnv(relay.url, { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` }),
    });
    await d.waitForReply("up ready 10% # fleet /hapgent/all\n");
    const scrape = async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    await waitFor("connected", async () =>
      /^hapgent_fleet_connected 1$/m.test(await scrape()) ? true : undefined,
    );
    const before = await scrape();
    assert.match(before, /^hapgent_fleet_following\{key="\/hapgent\/all",revision="\d+"\} 1$/m);
    assert.match(before, /^hapgent_fleet_value_valid 1$/m);
    assert.match(before, /^hapgent_status\{status="UP"\} 1$/m);

    // Changes while cut off arrive in order once the relay is back, each once.
    relay.cut();
    await d.waitForLog(/cannot reach etcd/, 10_000);
    // Scrapes are rendered at most once a second.
    await waitFor("disconnected", async () =>
      /^hapgent_fleet_connected 0$/m.test(await scrape()) ? true : undefined,
    );
    await etcd.put("/hapgent/all", '{"status":"UP","weight":20}');
    await etcd.put("/hapgent/all", '{"status":"UP","weight":30}');
    relay.restore();
    await d.waitForReply("up ready 30% # fleet /hapgent/all\n", 15_000);
    // Said once the endpoint has passed a health read (every 3 s).
    await d.waitForLog(/answers again after/, 10_000);
    const applied = lines(d, /fleet: \/hapgent\/all changed at revision/);
    assert.deepEqual(
      applied.map((l) => /"weight":(\d+)/.exec(l)?.[1]),
      ["20", "30"],
      `resumed from the last revision, nothing missed or applied twice:\n${d.stderr()}`,
    );
    assert.equal(lines(d, /fleet: read at revision/).length, 1, "no fresh read was needed");

    // Cut again; etcd moves on and compacts its history past the revision the watch resumes from.
    relay.cut();
    await waitFor(
      "the second loss",
      () => (lines(d, /cannot reach etcd/).length === 2 ? true : undefined),
      10_000,
    );
    await etcd.put("/hapgent/all", '{"status":"UP","weight":40}');
    await etcd.put("/hapgent/all", '{"status":"DRAIN","weight":50}');
    await etcd.ctl("compact", String(await etcd.revision()));
    relay.restore();
    await d.waitForReply("up drain 50% # fleet /hapgent/all\n", 15_000);
    await d.waitForLog(
      /etcd compacted its history past the revisions last seen .*reading the keys again/,
    );
    assert.equal(lines(d, /"weight":40/).length, 0, "a compacted change is not replayed");
    assert.equal(lines(d, /following \/hapgent\/all .*"weight":50/).length, 1, d.stderr());
    // The watch made after the read follows the next change.
    await etcd.put("/hapgent/all", '{"status":"UP"}');
    await d.waitForReply("up ready 100%\n");
  });

  test("a watch whose data is swallowed while reads pass: the change is followed within two health reads, the watch replaced, and nothing claims it watched", async (t) => {
    const etcd = await startEtcd(t);
    const relay = await startRelay(t, etcd.endpoints);
    await etcd.put("/hapgent/host/a", '{"status":"UP","weight":90}');
    const metricsPort = await freePort();
    const d = await startDaemon(t, {
      env: fleetEnv(relay.url, { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` }),
    });
    await d.waitForReply("up ready 90% # fleet /hapgent/host/a\n");
    const scrape = async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const connected = (value: 0 | 1) =>
      waitFor(
        `hapgent_fleet_connected ${value}`,
        async () =>
          new RegExp(`^hapgent_fleet_connected ${value}$`, "m").test(await scrape())
            ? true
            : undefined,
        30_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}:\n${d.stderr()}`);
      });
    await connected(1);

    relay.swallowWatches(true);
    const written = Date.now();
    await etcd.put("/hapgent/host/a", '{"status":"MAINT","reason":"swallowed"}');
    // Two health reads (3 s apart) and their round trips: well within 20 s on a loaded machine.
    await d.waitForReply("maint 100% # fleet /hapgent/host/a: swallowed\n", 20_000);
    process.stdout.write(
      `# a change behind a swallowed watch followed ${Date.now() - written} ms later\n`,
    );
    await d.waitForLog(
      /fleet: cannot reach etcd: .*the watch of \/hapgent\/host\/a did not bring a change a read saw 3 s before \(revision \d+; a stalled stream\)/,
    );
    await connected(0);
    const status = await cliFor(d, "status");
    assert.doesNotMatch(status.stdout, /watched/, status.stdout);
    assert.match(status.stdout, /^fleet {7}.*etcd UNREACHABLE since .*a stalled stream/m);
    // Still swallowed: each new session reads before it watches, so the next change comes too.
    await etcd.put("/hapgent/host/a", '{"status":"DRAIN","reason":"still"}');
    await d.waitForReply("up drain 100% # fleet /hapgent/host/a: still\n", 20_000);

    relay.swallowWatches(false);
    await connected(1);
    await etcd.put("/hapgent/host/a", '{"status":"UP","weight":70}');
    await d.waitForReply("up ready 70% # fleet /hapgent/host/a\n");
    assert.match((await cliFor(d, "status")).stdout, /watched, heard/);
  });

  test("an idle agent's health read is one request to etcd: the keys listed, no value read again", async (t) => {
    const etcd = await startEtcd(t);
    const relay = await startRelay(t, etcd.endpoints);
    await etcd.putNow("/hapgent/host/a", '{"status":"UP","weight":90}');
    await etcd.putNow("/hapgent/group/web", '{"status":"DRAIN","reason":"group"}');
    // A large valid value: re-read every period, it would be most of what etcd sends.
    await etcd.putNow("/hapgent/all", `{"status":"UP","description":"${"x".repeat(60_000)}"}`);
    const d = await startDaemon(t, { env: fleetEnv(relay.url) });
    await d.waitForReply("up ready 90% # fleet /hapgent/host/a\n");
    await waitFor("the watches", async () =>
      /watched, heard/.test((await cliFor(d, "status")).stdout) ? true : undefined,
    );
    const listings = () => relay.requests().get("/v3/kv/txn") ?? 0;
    const before = relay.requests();
    const from = listings();
    await waitFor("three health reads", () => (listings() >= from + 3 ? true : undefined), 30_000);
    const asked = new Map<string, number>();
    for (const [path, count] of relay.requests()) {
      const more = count - (before.get(path) ?? 0);
      if (more > 0 && path !== "/v3/watch") asked.set(path, more);
    }
    process.stdout.write(`# requests over health reads: ${JSON.stringify([...asked])}\n`);
    // Each health read is one keys_only listing; a read in flight when counted adds at most one.
    const reads = asked.get("/v3/kv/txn") ?? 0;
    assert.ok(reads === 3 || reads === 4, JSON.stringify([...asked]));
    assert.deepEqual([...asked.keys()], ["/v3/kv/txn"], "a value was read again");
    assert.doesNotMatch(d.stderr(), /cannot reach etcd|reading the keys again/, d.stderr());
  });

  test("a slow etcd (replies 1.2 s late, longer than a health period for a read of values): changes followed, no stall claimed", async (t) => {
    const etcd = await startEtcd(t);
    const relay = await startRelay(t, etcd.endpoints);
    await etcd.putNow("/hapgent/group/web", '{"status":"UP","weight":80}');
    await etcd.putNow("/hapgent/all", '{"status":"UP","weight":70}');
    await etcd.putNow("/hapgent/host/a", '{"status":"UP","weight":90}');
    const metricsPort = await freePort();
    const d = await startDaemon(t, {
      env: fleetEnv(relay.url, { HAPGENT_METRICS: `127.0.0.1:${metricsPort}` }),
    });
    await d.waitForReply("up ready 90% # fleet /hapgent/host/a\n");
    relay.delay(1200);
    // Writes at every phase of the health reads (3 s apart), each followed through the slow
    // watch before the next.
    for (let weight = 11; weight <= 19; weight++) {
      await etcd.putNow("/hapgent/host/a", `{"status":"UP","weight":${weight}}`);
      await d.waitForReply(`up ready ${weight}% # fleet /hapgent/host/a\n`, 20_000);
      await new Promise((resolve) => setTimeout(resolve, 700 + (weight % 3) * 500));
    }
    assert.doesNotMatch(
      d.stderr(),
      /stalled stream|cannot reach etcd|other values than its watches|reading the keys again/,
      d.stderr(),
    );
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert.match(metrics, /^hapgent_fleet_connected 1$/m);
    assert.match((await cliFor(d, "status")).stdout, /watched, heard/);
  });

  test("three members, the leader killed mid-watch: every agent follows the next write", async (t) => {
    const etcd = await startEtcd(t, 3);
    const urls = etcd.members.map((m) => m.clientUrl);
    await etcd.put("/hapgent/group/web", '{"status":"UP"}');
    const leader = await etcd.leader();
    // Each agent starts on another member, so one of them watches the leader.
    const agents: Daemon[] = [];
    for (let i = 0; i < 3; i++) {
      const order = [...urls.slice(i), ...urls.slice(0, i)].join(",");
      agents.push(await startDaemon(t, { env: fleetEnv(order) }));
    }
    for (const a of agents) await a.waitForLog(/fleet: read at revision/);
    await leader.stop("SIGKILL");
    const killed = Date.now();
    await waitFor(
      "a new leader",
      async () => (await etcd.leader().catch(() => undefined)) ?? undefined,
      20_000,
    );
    await etcd.put("/hapgent/group/web", '{"status":"DRAIN","reason":"after failover"}');
    for (const a of agents)
      await a.waitForReply("up drain 100% # fleet /hapgent/group/web: after failover\n", 20_000);
    process.stdout.write(
      `# leader ${leader.name} killed; all 3 agents followed the next write ${Date.now() - killed} ms later\n`,
    );
    // The agent that watched the leader lost it, and watches another member now.
    const watcher = agents[urls.indexOf(leader.clientUrl)] as Daemon;
    assert.match(watcher.stderr(), new RegExp(`cannot reach etcd: ${leader.clientUrl}`));
    await watcher.waitForLog(/fleet: etcd at http:\/\/127\.0\.0\.1:\d+ answers again/, 10_000);
    assert.doesNotMatch(watcher.stderr(), new RegExp(`etcd at ${leader.clientUrl} answers again`));
  });

  test("one write to a group key reaches 20 agents and HAProxy in front of five of them; latency reported", {
    skip: SKIP_HAPROXY,
  }, async (t) => {
    const etcd = await startEtcd(t);
    await etcd.put("/hapgent/group/web", '{"status":"UP"}');
    // Twenty agents start at once: on a loaded machine that takes longer than one agent's 5 s,
    // and how long is not what this test measures.
    const agents = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const agent = await startDaemon(t, { env: fleetEnv(etcd.endpoints), ready: false });
        await agent.waitForLog(/listening on/, 30_000);
        return agent;
      }),
    );
    const agentInterMs = 100;
    const watched = agents.slice(0, 5);
    const haproxies = await Promise.all(
      watched.map((a) =>
        startHaproxy(t as T, {
          agentPort: a.port,
          agentInterMs,
          backends: [{ name: "web", servers: [{ name: "s", weight: 100 }] }],
        }),
      ),
    );
    for (const h of haproxies)
      await h.waitUntil("in rotation", (v: View) => v["web/s"]?.status === "no check");
    // Node's fetch loads its HTTP client at first use: not a cost of the write.
    await etcd.putNow("/warm-up", "1");
    const written = Date.now();
    await etcd.putNow("/hapgent/group/web", '{"status":"DRAIN","reason":"deploy"}');
    const committed = Date.now() - written;
    const line = "up drain 100% # fleet /hapgent/group/web: deploy\n";
    const firstProbe = Date.now() - written;
    const answered = await Promise.all(
      agents.map(async (a) => {
        await waitFor(
          "drain",
          async () => ((await a.probe().catch(() => "")) === line ? true : undefined),
          10_000,
        );
        return Date.now() - written;
      }),
    );
    const drained = await Promise.all(
      haproxies.map(async (h) => {
        await h.waitUntil("DRAIN", (v: View) => v["web/s"]?.status === "DRAIN (agent)", 10_000);
        return Date.now() - written;
      }),
    );
    // When each agent applied it, by its own log line's time stamp (one clock, this host's).
    const applied = agents.map((a) => {
      const line = lines(a, /following \/hapgent\/group\/web .*DRAIN/)[0] ?? "";
      return Date.parse(line.slice(0, 24)) - written;
    });
    const spread = (ms: number[]) => {
      const sorted = [...ms].sort((a, b) => a - b);
      return `min ${sorted[0]} ms, median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted.at(-1)} ms`;
    };
    process.stdout.write(
      `# one write (etcd committed it in ${committed} ms) -> 20 agents: applied ${spread(applied)}; answering probes ${spread(answered)}; 5 HAProxy (agent-inter ${agentInterMs} ms) showing DRAIN: ${spread(drained)} (probing began at ${firstProbe} ms)\n`,
    );
    for (const a of agents)
      assert.equal(lines(a, /following \/hapgent\/group\/web .*DRAIN/).length, 1);
    await etcd.ctl("del", "/hapgent/group/web");
    for (const h of haproxies)
      await h.waitUntil("back", (v: View) => v["web/s"]?.status === "no check", 10_000);
  });

  test("credentials: a password file, never logged; a wrong one is a clear error and the agent still answers", async (t) => {
    const etcd = await startEtcd(t);
    const password = "s3cret-Fleet-pw";
    await etcd.ctl("user", "add", `root:${password}`);
    await etcd.ctl("user", "add", "agent:agent-pw-xyz");
    await etcd.ctl("role", "add", "reader");
    await etcd.ctl("role", "grant-permission", "reader", "read", "/hapgent/", "--prefix=true");
    await etcd.ctl("user", "grant-role", "agent", "reader");
    await etcd.ctl("auth", "enable");
    const dir = await tempDir(t);
    const file = join(dir, "etcd-password");
    // The first line is the password (docs/fleets.md); a second line is never sent.
    await writeFile(file, "agent-pw-xyz\r\nrotated 2026-01: old-pw-qrs\n", { mode: 0o600 });
    const adminFile = join(dir, "admin-password");
    await writeFile(adminFile, `${password}\n`, { mode: 0o600 });
    const admin = {
      HAPGENT_ETCD_ENDPOINTS: etcd.endpoints,
      HAPGENT_ETCD_USERNAME: "root",
      HAPGENT_ETCD_PASSWORD_FILE: adminFile,
    };
    const set = await runHapgent(
      ["fleet", "set", "/hapgent/all", "drain", "--reason", "auth"],
      admin,
    );
    assert.equal(set.code, 0, set.stderr);
    const d = await startDaemon(t, {
      env: fleetEnv(etcd.endpoints, {
        HAPGENT_ETCD_USERNAME: "agent",
        HAPGENT_ETCD_PASSWORD_FILE: file,
      }),
    });
    assert.equal(await d.probe(), "up drain 100% # fleet /hapgent/all: auth\n");
    // The agent may read, not write: its user's own limits hold.
    const denied = await runHapgent(["fleet", "set", "/hapgent/all", "up"], {
      HAPGENT_ETCD_ENDPOINTS: etcd.endpoints,
      HAPGENT_ETCD_USERNAME: "agent",
      HAPGENT_ETCD_PASSWORD: "agent-pw-xyz",
    });
    assert.equal(denied.code, 10);
    assert.match(denied.stderr, /etcd refused: .*permission denied/);
    assert.doesNotMatch(denied.stderr, /agent-pw-xyz/);
    await writeFile(file, "wrong-pw-abc\n");
    const wrong = await startDaemon(t, {
      env: fleetEnv(etcd.endpoints, {
        HAPGENT_ETCD_USERNAME: "agent",
        HAPGENT_ETCD_PASSWORD_FILE: file,
      }),
    });
    await wrong.waitForLog(/fleet: cannot reach etcd: .*authentication failed/);
    assert.equal(
      await wrong.probe(),
      "up ready 100%\n",
      "the operator's state, answered all along",
    );
    for (const daemon of [d, wrong]) {
      assert.doesNotMatch(daemon.stderr(), /agent-pw-xyz|old-pw-qrs|wrong-pw-abc|s3cret/);
    }
    assert.doesNotMatch(set.stderr + set.stdout, /s3cret/);
  });

  test("TLS: etcd asks for a client certificate; the agent and hapgent fleet present theirs and check etcd's", async (t) => {
    const dir = await tempDir(t);
    const files = await makeCertificates(dir);
    const etcd = await startEtcd(t, 1, files);
    assert.match(etcd.endpoints, /^https:/);
    const tls = {
      HAPGENT_ETCD_CA_FILE: files.ca,
      HAPGENT_ETCD_CERT_FILE: files.clientCert,
      HAPGENT_ETCD_KEY_FILE: files.clientKey,
    };
    const set = await runHapgent(["fleet", "set", "/hapgent/all", "drain", "--reason", "tls"], {
      HAPGENT_ETCD_ENDPOINTS: etcd.endpoints,
      ...tls,
    });
    assert.equal(set.code, 0, set.stderr);
    const d = await startDaemon(t, { env: fleetEnv(etcd.endpoints, tls) });
    assert.equal(await d.probe(), "up drain 100% # fleet /hapgent/all: tls\n");
    await etcd.put("/hapgent/all", '{"status":"UP","weight":25}');
    await d.waitForReply("up ready 25% # fleet /hapgent/all\n");
    // Without a client certificate etcd refuses; without the CA the agent refuses etcd.
    const { HAPGENT_ETCD_CA_FILE: _, ...noCa } = tls;
    for (const env of [{ HAPGENT_ETCD_CA_FILE: files.ca }, noCa]) {
      const shown = await runHapgent(["fleet", "status", "/hapgent/all"], {
        HAPGENT_ETCD_ENDPOINTS: etcd.endpoints,
        ...env,
      });
      assert.equal(shown.code, 10, shown.stdout);
      assert.match(shown.stderr, /cannot reach etcd: https:\/\/127\.0\.0\.1:\d+: \w+/);
    }
  });

  test("an endpoint that is not etcd (garbage, wrong shapes, silence, a huge body) never crashes the agent; the next endpoint serves", async (t) => {
    const etcd = await startEtcd(t);
    await etcd.put("/hapgent/all", '{"status":"DRAIN","reason":"real etcd"}');
    let mode = 0;
    const modes = [
      (res: ServerResponse) => res.end("not json at all"),
      (res: ServerResponse) => res.end('{"header":{"revision":"abc"},"responses":"x"}'),
      (res: ServerResponse) =>
        res.end(
          '{"header":{"revision":"5"},"responses":[{"response_range":{"kvs":[{"key":"!!","mod_revision":"-1"}]}}]}',
        ),
      (res: ServerResponse) =>
        res.end(`{"header":{"revision":"5"},"x":"${"y".repeat(9 * 1024 * 1024)}"}`),
      (res: ServerResponse) => {
        res.writeHead(500);
        res.end("{}");
      },
      // Accepts, answers nothing.
      () => {},
    ];
    const fakePort = await fakeEtcd(t, (req, res) => {
      req.resume();
      modes[mode % modes.length]?.(res);
    });
    for (mode = 0; mode < modes.length; mode++) {
      const d = await startDaemon(t, {
        env: fleetEnv(`http://127.0.0.1:${fakePort},${etcd.endpoints}`),
      });
      // Whatever the first endpoint says, the agent answers, and follows the real etcd.
      await d.waitForReply("up drain 100% # fleet /hapgent/all: real etcd\n", 10_000);
      assert.match(
        d.stderr(),
        new RegExp(`cannot reach etcd: http://127\\.0\\.0\\.1:${fakePort}`),
        `mode ${mode}`,
      );
      assert.doesNotMatch(d.stderr(), /TypeError|at .*\.js:\d+/, `mode ${mode}: no stack trace`);
      d.signal("SIGTERM");
      assert.equal((await d.exited).code, 0);
    }
  });

  test("replies that would exhaust the heap (2 MiB of nesting, 690,000 empty lists) are refused unparsed, with the reason; the agent answers all along", async (t) => {
    const txn =
      '{"header":{"revision":"10"},"responses":[{"response_range":{}},{"response_range":{}},{"response_range":{}}]}';
    const bodies: { read: string; watch?: string }[] = [
      { read: `${"[".repeat(1024 * 1024 - 8)}${"]".repeat(1024 * 1024 - 8)}` },
      { read: `{"header":{"revision":"10"},"x":[${"[],".repeat(690_000)}[]]}` },
      { read: `{"header":${'{"a":'.repeat(300_000)}1${"}".repeat(300_000)}}` },
      // A good read, then one watch message of nesting just under the line's cap.
      { read: txn, watch: `{"result":${"[".repeat(1024 * 1024 - 32)}\n` },
    ];
    let mode = 0;
    const port = await fakeEtcd(t, (req, res) => {
      req.resume();
      const body = bodies[mode] as { read: string; watch?: string };
      if (req.url === "/v3/watch" && body.watch !== undefined) {
        res.writeHead(200);
        res.write(body.watch);
      } else res.end(body.read);
    });
    for (mode = 0; mode < bodies.length; mode++) {
      const d = await startDaemon(t, { env: fleetEnv(`http://127.0.0.1:${port}`) });
      await d
        .waitForLog(
          /fleet: cannot reach etcd: .*left unparsed: it (nests deeper than 16 levels|holds more than 20000 values)/,
          15_000,
        )
        .catch((err: Error) => {
          throw new Error(`mode ${mode}: ${err.message}:\n${d.stderr()}`);
        });
      assert.equal(await d.probe(), "up ready 100%\n", `mode ${mode}: the operator's state`);
      assert.equal(d.child.exitCode, null, `mode ${mode}: still running`);
      assert.doesNotMatch(d.stderr(), /heap|internal error|at .*\.js:\d+/, `mode ${mode}`);
      d.signal("SIGTERM");
      assert.equal((await d.exited).code, 0, `mode ${mode}`);
    }
  });

  test("watch streams that are not etcd's (bad shapes, a line without end, streams that open and close) never crash the agent nor flood its log", async (t) => {
    const streams: ((res: ServerResponse) => void)[] = [
      (res) => res.write('{"result":{"header":{"revision":"11"},"events":[null]}}\n'),
      (res) => res.write('{"error":null}\n'),
      (res) => res.write('{"result":{"header":{"revision":"11"},"events":[{"type":"PUT"}]}}\n'),
      (res) => res.write('{"result":{"header":{"revision":"NaN"},"created":true}}\n'),
      (res) => res.write(`{"result":${"[".repeat(1000)}`),
      (res) => res.write(`{"result":{"x":"${"y".repeat(3 * 1024 * 1024)}`),
      // Made, then closed at once: a session that never proves itself.
      (res) => res.end('{"result":{"header":{"revision":"11"},"created":true}}\n'),
    ];
    let mode = 0;
    const txn =
      '{"header":{"revision":"10"},"succeeded":true,"responses":[{"response_range":{"header":{"revision":"10"}}},{"response_range":{"header":{"revision":"10"}}},{"response_range":{"header":{"revision":"10"}}}]}';
    const port = await fakeEtcd(t, (req, res) => {
      req.resume();
      if (req.url === "/v3/watch") {
        res.writeHead(200);
        streams[mode]?.(res);
      } else res.end(txn);
    });
    for (mode = 0; mode < streams.length; mode++) {
      const d = await startDaemon(t, { env: fleetEnv(`http://127.0.0.1:${port}`) });
      const pid = d.pid;
      const cpu = async () => {
        const stat = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]?.split(" ") ?? [];
        return (Number(stat[11]) + Number(stat[12])) * 10;
      };
      const before = await cpu();
      await new Promise((resolve) => setTimeout(resolve, 4000));
      const used = (await cpu()) - before;
      assert.equal(await d.probe(), "up ready 100%\n", `mode ${mode}: still answering`);
      assert.equal(d.child.exitCode, null, `mode ${mode}: still running`);
      assert.doesNotMatch(d.stderr(), /internal error|TypeError|at .*\.js:\d+/, `mode ${mode}`);
      const logged = lines(d, /fleet:/).length;
      assert.ok(logged <= 3, `mode ${mode}: ${logged} fleet lines in 4 s:\n${d.stderr()}`);
      // Retries back off: a loop without pause would take most of a core.
      assert.ok(used < 1500, `mode ${mode}: ${used} ms of CPU in 4 s`);
      d.signal("SIGTERM");
      assert.equal((await d.exited).code, 0);
    }
  });

  test("etcd's data made anew under the same revisions: the health read finds the values differ and the keys are read again", async (t) => {
    const etcd = await startEtcd(t);
    await etcd.put("/hapgent/all", '{"status":"MAINT","reason":"old cluster"}');
    for (let i = 0; i < 8; i++) await etcd.put("/pad", String(i));
    const relay = await startRelay(t, etcd.endpoints);
    const d = await startDaemon(t, { env: fleetEnv(relay.url) });
    assert.equal(await d.probe(), "maint 100% # fleet /hapgent/all: old cluster\n");
    const member = etcd.members[0];
    assert.ok(member);
    // Out of the agent's sight until the new store is past every revision it saw.
    relay.cut();
    await member.wipe();
    await member.start();
    await waitFor(
      "etcd anew",
      async () =>
        (await etcd.ctl("endpoint", "health").then(
          () => true,
          () => false,
        ))
          ? true
          : undefined,
      20_000,
    );
    // The same key at the same revision (the new store's first write), with another value.
    await etcd.put("/hapgent/all", '{"status":"UP","weight":10}');
    for (let i = 0; i < 12; i++) await etcd.put("/pad", String(i));
    relay.restore();
    await d.waitForReply("up ready 10% # fleet /hapgent/all\n", 20_000);
    await d
      .waitForLog(/etcd holds other values than its watches delivered .*; reading the keys again/)
      .catch((err: Error) => {
        throw new Error(`${err.message}:\n${d.stderr()}`);
      });
  });

  test("without HAPGENT_ETCD_ENDPOINTS nothing of the fleet is loaded, not even Node's HTTP client; with it, its client is", async (t) => {
    const etcd = await startEtcd(t);
    assert.deepEqual(await httpModulesLoaded(t, {}), []);
    const loaded = await httpModulesLoaded(t, fleetEnv(etcd.endpoints));
    assert.ok(loaded.includes("NativeModule http"), JSON.stringify(loaded));
  });
});

test("a root agent refuses credentials another user could have chosen (a symlink to root's own file sent as a password)", {
  skip: IS_ROOT ? false : "needs root",
}, async (t) => {
  const dir = await tempDir(t);
  const theirs = join(dir, "theirs");
  await mkdir(theirs);
  await chown(theirs, NOBODY, NOBODY);
  // Their directory, their symlink: root's agent would read /etc/shadow and send it to etcd.
  await symlink("/etc/shadow", join(theirs, "password"));
  const d = await startDaemon(t, {
    ready: false,
    env: fleetEnv("http://127.0.0.1:9", {
      HAPGENT_ETCD_USERNAME: "agent",
      HAPGENT_ETCD_PASSWORD_FILE: join(theirs, "password"),
    }),
  });
  const { code } = await d.exited;
  assert.equal(code, 2, d.stderr());
  assert.match(
    d.stderr(),
    /HAPGENT_ETCD_PASSWORD_FILE=".*\/theirs\/password": .*owned by uid 65534.*expected a path only root can change/,
  );
  assert.doesNotMatch(d.stderr(), /root:/, "nothing of the file it points at");
});
