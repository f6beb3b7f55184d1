/**
 * Settings of `ckpt watch`: which checkpoint folders to export, when a folder counts as complete,
 * how often to retry and how many exports to keep. They live in the pipeline config as an optional
 * `"watch"` block (the runner ignores it) and can be overridden by CLI flags.
 *
 * ```jsonc
 * {
 *   "output": "${run}/exports/${name}",
 *   "stages": [{ "use": "gatherShards", "from": "${checkpoint}" }, { "use": "writeModel" }],
 *   "watch": {
 *     "pattern": ["step-*", "FINAL"],   // folder globs, relative to the runs folder
 *     "complete": ["signals"],          // "signals" and/or file globs that must exist
 *     "quietSeconds": 30,               // no size/mtime change for this long
 *     "keep": 3,                        // keep the 3 newest exports (never touches inputs)
 *     "maxTries": 3,                    // then the checkpoint is marked failed
 *     "verify": true                    // verify every export before recording it as done
 *   }
 * }
 * ```
 *
 * @example Defaults
 * ```ts
 * import { parseWatchSettings } from "./config.ts";
 * import assert from "node:assert/strict";
 *
 * const s = parseWatchSettings({ keep: 2 });
 * assert.deepEqual(s.pattern, ["step-*", "FINAL"]);
 * assert.equal(s.keep, 2);
 * assert.equal(s.maxTries, 3);
 * ```
 * @module
 */
import { Minimatch } from "minimatch";
import { z } from "zod";
import { CkptError } from "../../errors.ts";

/** The keyword in `complete` that turns on the training-side signals (see `complete.ts`). */
export const SIGNALS = "signals";

/** Schema of the `"watch"` block (unknown keys are errors). */
const WatchSettingsSchema: z.ZodType<WatchSettingsInput> = z.strictObject({
  pattern: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
  complete: z.array(z.string().min(1)).optional(),
  quietSeconds: z.number().min(0).optional(),
  keep: z.number().int().min(1).optional(),
  maxTries: z.number().int().min(1).optional(),
  verify: z.boolean().optional(),
});

/** The `"watch"` block as written in a config (every field optional). */
export interface WatchSettingsInput {
  /** Folder glob(s) relative to the runs folder (`*`, `?`, `[..]`; `/` separates levels). Default `["step-*", "FINAL"]`. */
  pattern?: string | string[] | undefined;
  /** `"signals"` (training-side completion signals) and/or file globs that must exist. Default `["signals"]`. */
  complete?: string[] | undefined;
  /** Seconds with no size or mtime change in the folder before it counts as complete. Default 30. */
  quietSeconds?: number | undefined;
  /** Keep only the N newest exports; older *exports* are deleted once a newer one is verified. Default: keep all. */
  keep?: number | undefined;
  /** Tries per checkpoint before it is marked failed. Default 3. */
  maxTries?: number | undefined;
  /** Verify each export (`ckpt verify`) before recording it as done. Default true. */
  verify?: boolean | undefined;
}

/** Watch settings with defaults applied. */
export interface WatchSettings {
  /** Folder globs relative to the runs folder. */
  pattern: string[];
  /** Completeness rules: {@linkcode SIGNALS} and/or file globs. */
  complete: string[];
  /** Quiet period in seconds. */
  quietSeconds: number;
  /** Exports to keep, or undefined to keep all. */
  keep: number | undefined;
  /** Tries before a checkpoint is marked failed. */
  maxTries: number;
  /** Whether exports are verified before they count as done. */
  verify: boolean;
}

/** Defaults of every setting. */
export const WATCH_DEFAULTS: Readonly<WatchSettings> = Object.freeze({
  pattern: ["step-*", "FINAL"],
  complete: [SIGNALS],
  quietSeconds: 30,
  keep: undefined,
  maxTries: 3,
  verify: true,
});

/**
 * Validates a `"watch"` block (or `undefined`) and applies the defaults and then `overrides`.
 * Throws `WATCH_CONFIG` with the JSON path of the first problem.
 */
export function parseWatchSettings(
  value: unknown,
  overrides: WatchSettingsInput = {},
): WatchSettings {
  const parsed = WatchSettingsSchema.safeParse(value ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const path = ["watch", ...(issue?.path ?? []).map(String)].join(".");
    throw new CkptError(
      "WATCH_CONFIG",
      `Cannot read watch settings: ${path}: ${issue?.message ?? "invalid"}`,
      { details: { path } },
    );
  }
  const merged: WatchSettingsInput = { ...parsed.data };
  for (const [k, v] of Object.entries(overrides)) {
    if (v !== undefined) (merged as Record<string, unknown>)[k] = v;
  }
  const pattern = merged.pattern ?? WATCH_DEFAULTS.pattern;
  return {
    pattern: typeof pattern === "string" ? [pattern] : [...pattern],
    complete: [...(merged.complete ?? WATCH_DEFAULTS.complete)],
    quietSeconds: merged.quietSeconds ?? WATCH_DEFAULTS.quietSeconds,
    keep: merged.keep,
    maxTries: merged.maxTries ?? WATCH_DEFAULTS.maxTries,
    verify: merged.verify ?? WATCH_DEFAULTS.verify,
  };
}

/** A compiled glob: {@linkcode GlobMatcher.test} says whether a path matches it. */
export interface GlobMatcher {
  /** True when `path` (`/`-separated, relative) matches the whole glob. */
  test(path: string): boolean;
}

/**
 * Compiles a watch glob with `minimatch`: `*`, `?`, `[abc]`, `[!abc]`, `\` escapes the next
 * character; `*` and `?` never cross `/` and match a leading dot. No braces, no extglobs, no `**`,
 * no `!` negation: those characters match themselves.
 */
export function globMatcher(glob: string): GlobMatcher {
  const m = new Minimatch(glob, {
    dot: true,
    nobrace: true,
    noext: true,
    noglobstar: true,
    nonegate: true,
    nocomment: true,
  });
  return { test: (path) => m.match(path) };
}
