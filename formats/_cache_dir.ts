/**
 * Private: the folder ckpt keeps its caches in (the merge backend's calibration, the tokenizer
 * checks that passed): `$CKPT_CACHE_DIR`, else `$XDG_CACHE_HOME/ckpt`, else `~/.cache/ckpt`;
 * undefined when none is set or the environment may not be read (then nothing is cached); and
 * how a cache file is written.
 * @module
 */
import { dirname, join } from "node:path";

/** The cache folder (see the module doc), or undefined. */
export function cacheDir(): string | undefined {
  const env = (k: string) => {
    try {
      return Deno.env.get(k);
    } catch {
      return undefined; // no --allow-env: no cache
    }
  };
  return env("CKPT_CACHE_DIR") ??
    (env("XDG_CACHE_HOME") ? join(env("XDG_CACHE_HOME")!, "ckpt") : undefined) ??
    (env("HOME") ? join(env("HOME")!, ".cache", "ckpt") : undefined);
}

/**
 * Writes `text` to the cache file `file` atomically (a temporary file beside it, renamed over it;
 * removed when the rename fails), creating its folder. Throws the OS error: callers treat their
 * cache as best effort.
 */
export async function writeCacheFile(file: string, text: string): Promise<void> {
  await Deno.mkdir(dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${crypto.randomUUID()}`;
  await Deno.writeTextFile(tmp, text);
  await Deno.rename(tmp, file).catch(async (err) => {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  });
}
