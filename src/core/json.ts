/**
 * What JSON.parse forgives and a state file must not: the same key twice in one object, where
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
