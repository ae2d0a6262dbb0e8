/**
 * Reading the agent's JSON files (the state file, the checks file) strictly, and what JSON.parse
 * forgives and such a file must not: the same key twice in one object, where
 * JSON.parse silently keeps the last (`{"status":"UP","status":"DOWN"}` would be DOWN, and an
 * operator's typo would go unnoticed). Pure.
 */

/** Where a key repeats: the keys of the objects around it, outermost first, and the key. */
export interface DuplicateKey {
  readonly path: readonly string[];
  readonly key: string;
}

/**
 * The first key that appears twice in one object of `text`, which must already be valid JSON
 * (JSON.parse has accepted it), or undefined when every key is unique.
 */
export function findDuplicateKey(text: string): DuplicateKey | undefined {
  // One entry per open object or array: an object's keys so far, or null for an array; and the
  // key under which each nested value sits.
  const seen: (Set<string> | null)[] = [];
  const path: string[] = [];
  let lastKey: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{" || c === "[") {
      if (seen.length > 0) path.push(lastKey ?? "");
      seen.push(c === "{" ? new Set() : null);
      lastKey = undefined;
    } else if (c === "}" || c === "]") {
      seen.pop();
      path.pop();
    } else if (c === '"') {
      const end = stringEnd(text, i);
      const token = text.slice(i, end + 1);
      i = end;
      const keys = seen.at(-1);
      if (keys && nextNonBlank(text, end + 1) === ":") {
        const key = JSON.parse(token) as string;
        if (keys.has(key)) return { path: [...path], key };
        keys.add(key);
        lastKey = key;
      }
    }
  }
  return undefined;
}

/** The index of the quote that closes the string opening at `start`. */
function stringEnd(text: string, start: number): number {
  for (let i = start + 1; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === '"') return i;
  }
  return text.length - 1;
}

function nextNonBlank(text: string, from: number): string | undefined {
  for (let i = from; i < text.length; i++) {
    const c = text[i];
    if (c !== " " && c !== "\t" && c !== "\n" && c !== "\r") return c;
  }
  return undefined;
}

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

export type JsonResult =
  | { readonly ok: true; readonly value: unknown }
  | { readonly ok: false; readonly reason: string };

/**
 * The value of a JSON file's bytes, or why there is none: larger than `maxBytes`, not UTF-8 (a
 * leading byte-order mark, which some editors add, is dropped), empty, not JSON, or a key twice
 * in one object (refused rather than last-wins: the file would say two things). `quote` shows a
 * key in a reason. Never throws.
 */
export function parseJsonFile(
  bytes: Uint8Array,
  maxBytes: number,
  quote: (key: string) => string = (key) => JSON.stringify(key),
): JsonResult {
  const fail = (reason: string): JsonResult => ({ ok: false, reason });
  if (bytes.length > maxBytes) return fail(`file is larger than ${maxBytes} bytes`);
  let text: string;
  try {
    text = UTF8.decode(bytes);
  } catch {
    return fail("file is not valid UTF-8");
  }
  if (text.trim() === "") return fail("file is empty");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return fail(`file is not valid JSON (${(err as Error).message})`);
  }
  const duplicate = findDuplicateKey(text);
  if (duplicate !== undefined) {
    const [first = "", ...rest] = duplicate.path;
    const where =
      duplicate.path.length === 0
        ? ""
        : `${first}${rest.map((key) => `[${quote(key)}]`).join("")}: `;
    return fail(`${where}${quote(duplicate.key)} appears more than once; expected each key once`);
  }
  return { ok: true, value };
}
