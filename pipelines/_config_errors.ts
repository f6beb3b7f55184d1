/**
 * Config errors that say where and what: a JSON path (`stages[2].maxShardSize`), the value found,
 * what was expected, and a "did you mean" for a mistyped key or stage name.
 * @module
 */
import type { z } from "zod";
import { CkptError } from "../errors.ts";
import type { SchemaIssue } from "./stage.ts";

/** Formats a JSON path like `stages[2].maxShardSize`. */
export function formatJsonPath(path: readonly PropertyKey[]): string {
  let s = "";
  for (const p of path) {
    if (typeof p === "number") s += `[${p}]`;
    else s += s === "" ? String(p) : `.${String(p)}`;
  }
  return s === "" ? "(root)" : s;
}

export function describeValue(v: unknown): string {
  if (v === undefined) return "nothing";
  let text: string;
  try {
    text = JSON.stringify(v) ?? String(v);
  } catch {
    text = String(v);
  }
  if (text.length > 60) text = `${text.slice(0, 57)}...`;
  const kind = v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
  return `${text} (${kind})`;
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = root;
  for (const p of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[p as string];
  }
  return v;
}

function expectedOf(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case "invalid_type":
      return issue.expected;
    case "unrecognized_keys":
      return `no key ${issue.keys.map((k) => `"${k}"`).join(", ")} (unknown keys are errors)`;
    case "invalid_value":
      return `one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "too_small":
      return `${issue.origin} of at least ${String(issue.minimum)}`;
    case "too_big":
      return `${issue.origin} of at most ${String(issue.maximum)}`;
    default:
      return issue.message;
  }
}

/**
 * Turns a zod error into a `CONFIG_INVALID` {@linkcode CkptError} whose message gives the JSON path,
 * the value found and what was expected (first issue; all issues are in `details.issues`).
 */
export function configError(
  error: { readonly issues: readonly SchemaIssue[] },
  root: unknown,
  prefix: readonly PropertyKey[],
  source: string,
  knownKeys?: readonly string[],
): CkptError {
  const issues = error.issues.map((schemaIssue) => {
    // Zod's issues carry the per-code fields read below; other schemas fall back to `message`.
    const issue = schemaIssue as z.core.$ZodIssue;
    const path = [...prefix, ...issue.path];
    let found = describeValue(valueAt(root, path));
    let expected = expectedOf(issue);
    if (issue.code === "unrecognized_keys") {
      found = `unknown key${issue.keys.length > 1 ? "s" : ""} ${
        issue.keys.map((k) => `"${k}"`).join(", ")
      }`;
      if (issue.path.length === 0 && knownKeys && knownKeys.length > 0) {
        const hint = closest(issue.keys[0]!, knownKeys);
        expected = `one of ${knownKeys.join(", ")}${hint ? ` (did you mean "${hint}"?)` : ""}`;
      }
    }
    return { path: formatJsonPath(path), found, expected, message: issue.message };
  });
  const first = issues[0]!;
  const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : "";
  return new CkptError(
    "CONFIG_INVALID",
    `Cannot load ${source}: at ${first.path}: found ${first.found}, expected ${first.expected}${more}`,
    {
      file: source,
      details: { path: first.path, found: first.found, expected: first.expected, issues },
    },
  );
}

/** Edit distance between two short strings (case-insensitive). */
function distance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const cur = [i];
    for (let j = 1; j <= y.length; j++) {
      cur[j] = Math.min(
        prev[j]! + 1,
        cur[j - 1]! + 1,
        prev[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1),
      );
    }
    prev = cur;
  }
  return prev[y.length]!;
}

/** The known name closest to `name`, when it is a plausible typo (distance at most 2). */
export function closest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const d = distance(name, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best;
}

/** Keys of an object schema (`z.strictObject`), when it is one. */
export function schemaKeys(schema: unknown): string[] | undefined {
  const shape = (schema as { shape?: unknown }).shape;
  return shape && typeof shape === "object" ? Object.keys(shape) : undefined;
}
