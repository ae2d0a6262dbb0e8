/**
 * The npm package as a user gets it: `npm pack`, then a global install of the tarball into a
 * fresh prefix, whose `hapgent` must be the daemon and the command line.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { VERSION } from "../../src/version.js";
import { execOk, freePort, REPO, startDaemon } from "../helpers.js";

interface Packed {
  filename: string;
  files: { path: string; mode: number }[];
}

describe("the npm package", () => {
  let dir = "";
  let packed: Packed;
  // The Node running the tests runs the installed package too (its bin is `#!/usr/bin/env node`).
  const PATH = `${dirname(process.execPath)}:/usr/bin:/bin`;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hapgent-npm-"));
    const { stdout } = await execOk(
      "npm",
      ["pack", "--json", "--pack-destination", dir, "--no-audit", "--no-fund"],
      { cwd: REPO, timeoutMs: 120_000 },
    );
    const [first] = JSON.parse(stdout) as Packed[];
    assert.ok(first, stdout);
    packed = first;
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test("holds the compiled agent, its README, docs and licence, and nothing else", () => {
    const paths = packed.files.map((file) => file.path).sort();
    for (const path of paths) {
      assert.match(
        path,
        /^(package\.json|README\.md|LICENSE|docs\/[a-z]+\.md|packaging\/prometheus\/hapgent\.rules\.yml|dist\/src\/((core|cli|etcd|daemon(\/(checks|fleet))?)\/)?[a-z-]+\.js)$/,
        path,
      );
    }
    for (const needed of [
      "package.json",
      "README.md",
      "docs/reference.md",
      "LICENSE",
      "dist/src/main.js",
      "dist/src/daemon/metrics.js",
      "packaging/prometheus/hapgent.rules.yml",
    ]) {
      assert.ok(paths.includes(needed), `${needed} in ${paths.join(", ")}`);
    }
  });

  test("installed with npm install -g, `hapgent` is the daemon and the command", async (t) => {
    const prefix = join(dir, "prefix");
    // As a user installs it: its one dependency, prom-client, comes from npm's cache when it is
    // there, else from the registry (a fresh cache holds the tarballs npm ci fetched, not the
    // registry's list of versions that a range needs).
    await execOk(
      "npm",
      [
        "install",
        "--global",
        "--prefix",
        prefix,
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        join(dir, packed.filename),
      ],
      { cwd: dir, timeoutMs: 120_000 },
    );
    const bin = join(prefix, "bin", "hapgent");
    const env = { PATH, HOME: dir };
    const version = await execOk(bin, ["--version"], { env });
    assert.equal(version.stdout, `hapgent ${VERSION}\n`);
    const manifest = JSON.parse(
      await readFile(join(prefix, "lib/node_modules/hapgent/package.json"), "utf8"),
    ) as { dependencies?: object };
    // One runtime dependency, loaded only when HAPGENT_METRICS is set.
    assert.deepEqual(Object.keys(manifest.dependencies ?? {}), ["prom-client"]);

    const d = await startDaemon(t, { exec: bin, env, state: '{"status":"UP","weight":40}' });
    assert.equal(await d.probe(), "up ready 40%\n");
    d.signal("SIGUSR2");
    await d.waitForReply("down ready 40%\n");
    await d.waitForFile('{"status":"DOWN","weight":40}\n');
    const status = await execOk(bin, ["status", "--state-file", d.stateFile], { env });
    assert.match(status.stdout, new RegExp(`hapgent pid ${d.pid} at 127\\.0\\.0\\.1:${d.port}`));
    assert.match(status.stdout, /agreement {3}yes/);
    const set = await execOk(bin, ["up", "--weight", "60", "--state-file", d.stateFile], { env });
    assert.match(set.stdout, new RegExp(`hapgent pid ${d.pid} answers: up ready 60%`));
    d.signal("SIGTERM");
    assert.equal((await d.exited).code, 0);

    // Metrics, from the prom-client the install brought.
    const metricsPort = await freePort();
    const m = await startDaemon(t, {
      exec: bin,
      env: { ...env, HAPGENT_METRICS: `127.0.0.1:${metricsPort}` },
    });
    const scrape = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert.match(scrape, /^hapgent_status\{status="UP"\} 1$/m);
    assert.match(scrape, /^process_resident_memory_bytes \d+$/m);
    m.signal("SIGTERM");
    assert.equal((await m.exited).code, 0);
  });
});
