/**
 * Private: the tokenizer checks that passed, kept across processes, so a job that exports every
 * new checkpoint of a run with the same tokenizer loads it once, not once per process. The file
 * is `checks.json` in the cache folder the merge backend keeps its calibration in
 * (`formats/_cache_dir.ts`: `$CKPT_CACHE_DIR`, `$XDG_CACHE_HOME/ckpt` or `~/.cache/ckpt`). An
 * entry is a key (`validate.ts`, `_known_json.ts`: the sha256 of everything the check depends
 * on), when it passed and what it found (the highest token id of a `tokenizer.json` that parsed);
 * only passes are stored, at most {@linkcode CHECK_CACHE_MAX}, the oldest dropped first. Best
 * effort both ways: a cache that cannot be read is empty, one that cannot be written is skipped,
 * and neither fails a run.
 * @module
 */
import { join } from "node:path";
import { cacheDir, writeCacheFile } from "../../../formats/_cache_dir.ts";

/** The most entries kept; the oldest go first. */
export const CHECK_CACHE_MAX = 256;

/** The file's shape: `{ format, passed: { key: { at: ISO time, found? } } }`. */
const FORMAT = "ckpt-tokenizer-checks-2";

/** One remembered pass: when, and what the check found (numbers and strings: an id, a digest). */
export interface CachedPass {
  /** When it passed (ISO time). */
  at: string;
  /** What it found, if it records anything. */
  found?: Record<string, number | string>;
}

/** The cache file (`checks.json` in the cache folder), or undefined when there is none. */
export function checkCacheFile(): string | undefined {
  const dir = cacheDir();
  return dir ? join(dir, "checks.json") : undefined;
}

function isPass(v: unknown): v is CachedPass {
  if (v === null || typeof v !== "object" || typeof (v as CachedPass).at !== "string") return false;
  const found = (v as CachedPass).found;
  return found === undefined ||
    (found !== null && typeof found === "object" &&
      Object.values(found).every((n) => typeof n === "number" || typeof n === "string"));
}

async function readPassed(file: string): Promise<Map<string, CachedPass>> {
  try {
    const v = JSON.parse(await Deno.readTextFile(file));
    const passed = v?.format === FORMAT ? v.passed : undefined;
    if (!passed || typeof passed !== "object" || Array.isArray(passed)) return new Map();
    return new Map(Object.entries(passed).filter((e): e is [string, CachedPass] => isPass(e[1])));
  } catch {
    return new Map(); // missing, unreadable, not JSON: nothing cached
  }
}

/** The pass of the check with `key` (in any process), if it is still cached. */
export async function passedBefore(key: string): Promise<CachedPass | undefined> {
  const file = checkCacheFile();
  if (!file) return undefined;
  return (await readPassed(file)).get(key);
}

/** Records that the check with `key` passed, with what it `found` (best effort, atomic). */
export async function rememberPass(
  key: string,
  found?: Record<string, number | string>,
): Promise<void> {
  const file = checkCacheFile();
  if (!file) return;
  try {
    const passed = await readPassed(file);
    passed.set(key, { at: new Date().toISOString(), ...(found ? { found } : {}) });
    const kept = [...passed].sort(([, a], [, b]) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0))
      .slice(0, CHECK_CACHE_MAX);
    const text = JSON.stringify({ format: FORMAT, passed: Object.fromEntries(kept) });
    await writeCacheFile(file, text + "\n");
  } catch {
    // read-only home, no permission, full disk: check again next time
  }
}
