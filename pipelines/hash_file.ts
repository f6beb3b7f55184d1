/**
 * {@linkcode hashFile}: a file's size and sha256, streamed block by block (never whole in memory).
 * Its own module so that the hash worker (`_hash_worker.ts`) can import it without importing the
 * module that starts the worker.
 *
 * @example
 * ```ts
 * import { hashFile } from "./hash_file.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeTextFile(path, "abc");
 * const { size, sha256 } = await hashFile(path);
 * assert.equal(size, 3);
 * assert.equal(sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
 * await Deno.remove(path);
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { RandomAccessFile } from "../formats/_io.ts";

/** Block size for streamed hashing. */
const HASH_BLOCK = 4 * 1024 * 1024;

/** Streams a file through sha256; returns its size and hex digest. `signal` aborts between blocks. */
export async function hashFile(
  path: string,
  signal?: AbortSignal,
): Promise<{ size: number; sha256: string }> {
  const file = await RandomAccessFile.open(path);
  try {
    const hash = createHash("sha256");
    const buf = new Uint8Array(Math.min(HASH_BLOCK, Math.max(file.size, 1)));
    for (let off = 0; off < file.size; off += buf.length) {
      signal?.throwIfAborted();
      const len = Math.min(buf.length, file.size - off);
      hash.update(await file.readAt(off, len, buf));
    }
    return { size: file.size, sha256: hash.digest("hex") };
  } finally {
    await file.close();
  }
}
