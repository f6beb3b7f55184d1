/**
 * Worker of the CPU merge backend: receives the shared memory once, then blocks; merges the chunks
 * of each it claims ({@linkcode runClaimedChunks}) and answers `{ id, sums }` (or `{ id, error }`).
 * @module
 */
/// <reference lib="deno.worker" />
import { KernelCache } from "./_rows.ts";
import { type ChunkedTask, runClaimedChunks } from "./_chunks.ts";

let mem: WebAssembly.Memory | undefined;
let cache: KernelCache | undefined;

self.onmessage = (e: MessageEvent) => {
  const msg = e.data as
    | { type: "init"; mem: WebAssembly.Memory }
    | { type: "task"; id: number; job: ChunkedTask; module?: WebAssembly.Module };
  if (msg.type === "init") {
    mem = msg.mem;
    cache = new KernelCache(mem);
    return;
  }
  try {
    self.postMessage({ id: msg.id, sums: runClaimedChunks(mem!, cache!, msg.job, msg.module) });
  } catch (err) {
    self.postMessage({ id: msg.id, error: String((err as Error)?.stack ?? err) });
  }
};
