/**
 * Worker that hashes for the manifest off the main thread, so the runner can hash a stage's
 * outputs while the next stages run, and hash output bytes while they are written. Messages in:
 * `{ id, path }` hashes a file, answered `{ id, size, sha256 }` or `{ id, error }`; a stream is
 * `{ id, op: "update", bytes }` (answered `{ id, ack, buffer }` with the byte count, so the sender
 * can bound what is queued, and the block's buffer transferred back for reuse; with `shared: true`
 * the bytes are a view of shared memory, answered `{ id, ack, shared: true }` once hashed), then
 * `{ id, op: "digest" }` (answered `{ id, size, sha256, ms }`, `ms` the time spent hashing it) or
 * `{ id, op: "abort" }` (discards it, no answer). Streams with different ids are independent.
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { hashFile } from "./hash_file.ts";

type HashRequest =
  | { id: number; path: string; op?: undefined }
  | { id: number; op: "update"; bytes: Uint8Array<ArrayBuffer>; shared?: boolean }
  | { id: number; op: "digest" }
  | { id: number; op: "abort" };

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<HashRequest>) => void) | null;
  postMessage(message: unknown, transfer?: Transferable[]): void;
};

const streams = new Map<number, { hash: Hash; size: number; ms: number }>();

scope.onmessage = async (e) => {
  const msg = e.data;
  if (msg.op === "update") {
    let s = streams.get(msg.id);
    if (!s) streams.set(msg.id, s = { hash: createHash("sha256"), size: 0, ms: 0 });
    const t0 = performance.now();
    s.hash.update(msg.bytes);
    s.ms += performance.now() - t0;
    s.size += msg.bytes.length;
    // bytes in shared memory stay where they are; a copied block's buffer goes back for reuse
    if (msg.shared) return scope.postMessage({ id: msg.id, ack: msg.bytes.length, shared: true });
    const buffer = msg.bytes.buffer;
    scope.postMessage({ id: msg.id, ack: msg.bytes.length, buffer }, [buffer]);
    return;
  }
  if (msg.op === "digest") {
    const s = streams.get(msg.id) ?? { hash: createHash("sha256"), size: 0, ms: 0 };
    streams.delete(msg.id);
    const t0 = performance.now();
    const sha256 = s.hash.digest("hex");
    scope.postMessage({ id: msg.id, size: s.size, sha256, ms: s.ms + performance.now() - t0 });
    return;
  }
  if (msg.op === "abort") {
    streams.delete(msg.id);
    return;
  }
  const { id, path } = msg;
  try {
    const { size, sha256 } = await hashFile(path);
    scope.postMessage({ id, size, sha256 });
  } catch (err) {
    scope.postMessage({ id, error: err instanceof Error ? err.message : String(err) });
  }
};
