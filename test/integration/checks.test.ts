/** The checks file of another user, made with useradd: refused, with what it names. */
import assert from "node:assert/strict";
import { chmod, chown, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { loadChecksFile } from "../../src/daemon/checks/file.js";
import { IS_ROOT, tempDir } from "../helpers.js";
import { createUser } from "../users.js";

test("another user's checks file or program is refused: it could run its commands as the agent", {
  skip: !IS_ROOT && "needs root to give files away",
}, async (t) => {
  const other = createUser(t, "checks");
  const dir = await tempDir(t);
  await chmod(dir, 0o755);
  const theirs = join(dir, "theirs");
  await mkdir(theirs);
  await chown(theirs, other.uid, other.gid);
  const file = join(theirs, "checks.json");
  await writeFile(file, JSON.stringify({ checks: [{ name: "t", tcp: "127.0.0.1:1" }] }), {
    mode: 0o644,
  });
  let result = await loadChecksFile(file, 0);
  assert.ok(!result.ok);
  assert.match(
    result.reason,
    new RegExp(
      `${theirs} is owned by uid ${other.uid}, so another user could change what it holds`,
    ),
  );
  // A root-owned file naming a program that user owns.
  const program = join(theirs, "probe");
  await writeFile(program, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
  const mine = join(dir, "checks.json");
  await writeFile(mine, JSON.stringify({ checks: [{ name: "p", exec: [program] }] }), {
    mode: 0o644,
  });
  result = await loadChecksFile(mine, 0);
  assert.ok(!result.ok);
  assert.match(result.reason, new RegExp(`^p: ${program}: .*owned by uid ${other.uid}`));
  // A set-user-ID program, for an agent that is not root: more privilege than the agent.
  const setuid = join(dir, "setuid-probe");
  await writeFile(setuid, "#!/bin/sh\nexit 0\n");
  await chmod(setuid, 0o4755);
  await writeFile(mine, JSON.stringify({ checks: [{ name: "s", exec: [setuid] }] }), {
    mode: 0o644,
  });
  result = await loadChecksFile(mine, other.uid);
  assert.ok(!result.ok);
  assert.match(
    result.reason,
    /is set-user-ID or set-group-ID; a check never runs with more privilege than the agent/,
  );
});
