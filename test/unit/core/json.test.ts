import assert from "node:assert/strict";
import { test } from "node:test";
import { findDuplicateKey } from "../../../src/core/json.js";

test("findDuplicateKey", () => {
  const cases: [string, ReturnType<typeof findDuplicateKey>][] = [
    ["{}", undefined],
    ['{"a":1,"b":2}', undefined],
    ['{"a":1,"a":2}', { path: [], key: "a" }],
    ['{"a":{"x":1},"b":{"x":2}}', undefined],
    ['{"a":{"x":1,"x":2}}', { path: ["a"], key: "x" }],
    ['{"a":[{"x":1},{"x":2}]}', undefined],
    ['{"a":[{"x":1,"x":1}]}', { path: ["a", ""], key: "x" }],
    // Strings that look like keys, escapes, and keys spelt differently that are the same.
    ['{"a":"\\"a\\":","b":1}', undefined],
    ['{"a":1,"\\u0061":2}', { path: [], key: "a" }],
    ['{"a\\\\":1,"a\\\\":2}', { path: [], key: "a\\" }],
    ['{ "a" : 1 , "a"\n:\t2 }', { path: [], key: "a" }],
    ['["a","a"]', undefined],
    ['"a"', undefined],
    ['{"__proto__":1,"__proto__":2}', { path: [], key: "__proto__" }],
  ];
  for (const [text, expected] of cases) {
    JSON.parse(text);
    assert.deepEqual(findDuplicateKey(text), expected, text);
  }
});
