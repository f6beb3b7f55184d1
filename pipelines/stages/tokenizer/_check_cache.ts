/**
 * Private: the tokenizer checks that passed, kept across processes, so a job that exports every
 * new checkpoint of a run with the same tokenizer loads it once, not once per process. The file
 * is `checks.json` in the cache folder the merge backend keeps its calibration in
 * (`formats/_cache_dir.ts`: `$CKPT_CACHE_DIR`, `$XDG_CACHE_HOME/ckpt` or `~/.cache/ckpt`). An entry is a
 * key (`validate.ts`: the sha256 of everything the check depends on) and when it passed; only
 * passes are stored, at most {@linkcode CHECK_CACHE_MAX}, the oldest dropped first. Best effort
 * both ways: a cache that cannot be read is empty, one that cannot be written is skipped, and
 * neither fails a run.
 * @module
 */
import { join } from "node:path";
import { cacheDir } from "../../../formats/_cache_dir.ts";

/** The most entries kept; the oldest go first. */
export const CHECK_CACHE_MAX = 256;

/** The file's shape: `{ format, passed: { key: ISO time } }`. */
const FORMAT = "ckpt-tokenizer-checks-1";

/** The cache file (`checks.json` in the cache folder), or undefined when there is none. */
export function checkCacheFile(): string | undefined {
  const dir = cacheDir();
  return dir ? join(dir, "checks.json") : undefined;
}

async function readPassed(file: string): Promise<Record<string, string>> {
  try {
    const v = JSON.parse(await Deno.readTextFile(file));
    const passed = v?.format === FORMAT ? v.passed : undefined;
    return passed && typeof passed === "object" && !Array.isArray(passed) ? passed : {};
  } catch {
    return {}; // missing, unreadable, not JSON: nothing cached
  }
}

/** True when a check with `key` passed before (in any process) and is still cached. */
export async function passedBefore(key: string): Promise<boolean> {
  const file = checkCacheFile();
  if (!file) return false;
  return typeof (await readPassed(file))[key] === "string";
}

/** Records that the check with `key` passed (best effort, written atomically). */
export async function rememberPass(key: string): Promise<void> {
  const file = checkCacheFile();
  if (!file) return;
  try {
    const passed = await readPassed(file);
    passed[key] = new Date().toISOString();
    const kept = Object.entries(passed).filter(([, at]) => typeof at === "string")
      .sort(([, a], [, b]) => (a < b ? 1 : a > b ? -1 : 0))
      .slice(0, CHECK_CACHE_MAX);
    await Deno.mkdir(join(file, ".."), { recursive: true });
    const tmp = `${file}.tmp-${crypto.randomUUID()}`;
    await Deno.writeTextFile(
      tmp,
      JSON.stringify({ format: FORMAT, passed: Object.fromEntries(kept) }) + "\n",
    );
    await Deno.rename(tmp, file).catch(async (err) => {
      await Deno.remove(tmp).catch(() => {});
      throw err;
    });
  } catch {
    // read-only home, no permission, full disk: check again next time
  }
}
