/**
 * Private: the folder ckpt keeps its caches in (the merge backend's calibration, the tokenizer
 * checks that passed): `$CKPT_CACHE_DIR`, else `$XDG_CACHE_HOME/ckpt`, else `~/.cache/ckpt`;
 * undefined when none is set or the environment may not be read (then nothing is cached).
 * @module
 */
import { join } from "node:path";

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
