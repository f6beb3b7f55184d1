/**
 * A fresh ckpt cache folder for a test (`CKPT_CACHE_DIR`), so what earlier runs cached (the
 * tokenizer checks that passed, the merge calibration) does not count, and nothing is left in
 * the user's cache.
 * @module
 */
import { withTempDir } from "./tmp.ts";

/** Runs `fn` with `CKPT_CACHE_DIR` set to a new empty folder; restores the variable afterwards. */
export async function withCacheDir<T>(fn: (cacheDir: string) => Promise<T>): Promise<T> {
  return await withTempDir(async (dir) => {
    const before = Deno.env.get("CKPT_CACHE_DIR");
    Deno.env.set("CKPT_CACHE_DIR", dir);
    try {
      return await fn(dir);
    } finally {
      if (before === undefined) Deno.env.delete("CKPT_CACHE_DIR");
      else Deno.env.set("CKPT_CACHE_DIR", before);
    }
  });
}
