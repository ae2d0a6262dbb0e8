/**
 * The shape of src/ that a newcomer relies on: no function longer than a screen and a half, and
 * the layout CONTRIBUTING.md describes is the one on disk.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";
import ts from "typescript";
import { REPO } from "../helpers.js";

const MAX_FUNCTION_LINES = 80;

function sourceFiles(dir = join(REPO, "src")): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith(".ts") ? [relative(REPO, path)] : [];
  });
}

/** Each outermost function of a file with its span in lines, its inner functions included. */
function functionSpans(path: string): { name: string; lines: number }[] {
  const text = readFileSync(join(REPO, path), "utf8");
  const file = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
  const spans: { name: string; lines: number }[] = [];
  const line = (pos: number) => file.getLineAndCharacterOfPosition(pos).line;
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && "body" in node && node.body !== undefined) {
      const named =
        node.name ?? (ts.isVariableDeclaration(node.parent) ? node.parent.name : undefined);
      spans.push({
        name: `${path}: ${named?.getText(file) ?? "(anonymous)"}`,
        lines: line(node.getEnd()) - line(node.getStart(file)) + 1,
      });
      return;
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return spans;
}

test(`no function in src/ spans more than ${MAX_FUNCTION_LINES} lines, inner functions included`, () => {
  const spans = sourceFiles().flatMap(functionSpans);
  assert.ok(spans.length > 100, `only ${spans.length} functions found: is src/ there?`);
  const long = spans
    .filter((span) => span.lines > MAX_FUNCTION_LINES)
    .map((span) => `${span.name} (${span.lines} lines)`);
  assert.deepEqual(long, []);
});

test("CONTRIBUTING.md's layout names every file of src/, and only those", () => {
  const text = readFileSync(join(REPO, "CONTRIBUTING.md"), "utf8");
  const layout = text.slice(
    text.indexOf("## Layout"),
    text.indexOf("\n## ", text.indexOf("## Layout") + 1),
  );
  const named = new Set<string>();
  // Each entry: "- `src/dir/`: … `name.ts` (…) …", the files of that folder by name.
  for (const entry of layout.split(/\n- /).slice(1)) {
    const folder = /^`(src\/(?:[a-z-]+\/)*)`/.exec(entry)?.[1];
    if (folder === undefined) continue;
    for (const [, name] of entry.matchAll(/`([a-z-]+\.ts)`/g)) named.add(`${folder}${name}`);
  }
  assert.deepEqual([...named].sort(), sourceFiles().sort());
});

test("every src/ path the documents name exists", () => {
  const documents = ["README.md", "CONTRIBUTING.md", "BENCHMARKS.md"].concat(
    readdirSync(join(REPO, "docs")).map((name) => `docs/${name}`),
  );
  const missing = documents.flatMap((document) =>
    [...readFileSync(join(REPO, document), "utf8").matchAll(/`(src\/[\w./-]*(?:\.ts|\/))`/g)]
      .map(([, path]) => path as string)
      .filter((path) => !existsSync(join(REPO, path)))
      .map((path) => `${document}: ${path}`),
  );
  assert.deepEqual(missing, []);
});

/** The modules `path` imports, as paths from the repository (node: modules as they are named). */
function importsOf(path: string): string[] {
  const text = readFileSync(join(REPO, path), "utf8");
  return [...text.matchAll(/(?:from|import\()\s*"([^"]+)"/g)].map(([, spec]) =>
    (spec as string).startsWith(".")
      ? relative(REPO, join(REPO, dirname(path), (spec as string).replace(/\.js$/, ".ts")))
      : (spec as string),
  );
}

test("imports run one way: core/ is pure, and neither cli/ nor the protocol reaches into daemon/", () => {
  const wrong = sourceFiles().flatMap((path) =>
    importsOf(path)
      .filter((target) =>
        path.startsWith("src/core/")
          ? !target.startsWith("src/core/")
          : (path.startsWith("src/cli/") || path === "src/control-protocol.ts") &&
            target.startsWith("src/daemon/"),
      )
      .map((target) => `${path} imports ${target}`),
  );
  assert.deepEqual(wrong, []);
});

test("only main.ts touches `process`: the rest is given what it needs", () => {
  const uses = sourceFiles()
    .filter((path) => path !== "src/main.ts")
    .flatMap((path) => {
      const file = ts.createSourceFile(
        path,
        readFileSync(join(REPO, path), "utf8"),
        ts.ScriptTarget.Latest,
        true,
      );
      const found: string[] = [];
      const visit = (node: ts.Node): void => {
        const named =
          node.parent !== undefined &&
          ts.isPropertyAccessExpression(node.parent) &&
          node.parent.name === node;
        if (ts.isIdentifier(node) && node.text === "process" && !named) {
          found.push(`${path}:${file.getLineAndCharacterOfPosition(node.getStart(file)).line + 1}`);
        }
        ts.forEachChild(node, visit);
      };
      visit(file);
      return found;
    });
  assert.deepEqual(uses, []);
});
