import type { Check } from "../../core/checks.js";

/** A check's definition as one text: one read again as it was keeps its counters. */
export function keyOf(check: Check | readonly Check[]): string {
  return JSON.stringify(check, (_key, value: unknown) =>
    value instanceof Map ? [...value.entries()] : value,
  );
}
