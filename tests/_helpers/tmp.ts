/**
 * Temporary folders for tests, under /tmp so that the torch peer sees them at the same path.
 * @module
 */

/** Creates a temp folder, runs `fn` with it and removes it afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "ckpt-test-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
