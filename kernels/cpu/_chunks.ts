/**
 * A block's rows in chunks that the CPU backend's threads claim one at a time from a counter in
 * the shared memory, so a thread that the OS descheduled (the hash worker and the main thread share
 * the cores) merges fewer chunks instead of holding the others up; and the ‖ΔW‖ sums, added chunk
 * by chunk in chunk order, come out the same whatever the thread count. Private to the CPU backend.
 * @module
 */
import type { MergeChangeSums } from "../types.ts";
import { type CpuTask, type KernelCache, runCpuTask } from "./_rows.ts";

/** Elements per chunk by default, about: 512 KiB of bf16 W, so that a chunk's W and output are still
 * in L2 for its sums. */
export const CHUNK_ELEMENTS = 1 << 18;

/** A block to merge chunk by chunk: the task without its row range, the block's rows, the chunk
 * size, and where the claim counter lives in the shared memory. */
export interface ChunkedTask extends Omit<CpuTask, "row0" | "row1"> {
  rows: number;
  chunkRows: number;
  /** Byte offset of the Int32 claim counter (reset to 0 before the chunks are handed out). */
  counterPtr: number;
}

/** Rows per chunk of a block `cols` wide: about `elements` elements, an even count (the kernel
 * merges row pairs) unless one row is the whole chunk. */
export function chunkRows(cols: number, elements: number = CHUNK_ELEMENTS): number {
  const r = Math.floor(elements / Math.max(1, cols));
  return r > 1 ? r & ~1 : 1;
}

/** How many chunks `job` has. */
export function chunkCount(job: Pick<ChunkedTask, "rows" | "chunkRows">): number {
  return Math.ceil(job.rows / job.chunkRows);
}

function runChunk(
  mem: WebAssembly.Memory,
  cache: KernelCache,
  job: ChunkedTask,
  i: number,
  module?: WebAssembly.Module,
): MergeChangeSums | undefined {
  const { rows: _rows, chunkRows: per, counterPtr: _ptr, ...task } = job;
  return runCpuTask(
    mem,
    cache,
    { ...task, row0: i * per, row1: Math.min(job.rows, (i + 1) * per) },
    module,
  );
}

/**
 * Claims chunks of `job` until none is left and merges each; returns the sums of the chunks this
 * thread merged as `[chunk, ΣW², ΣΔ², max]` quadruples (none without `job.change`).
 */
export function runClaimedChunks(
  mem: WebAssembly.Memory,
  cache: KernelCache,
  job: ChunkedTask,
  module?: WebAssembly.Module,
): number[] {
  const counter = new Int32Array(mem.buffer as unknown as ArrayBuffer, job.counterPtr, 1);
  const n = chunkCount(job);
  const sums: number[] = [];
  for (let i = Atomics.add(counter, 0, 1); i < n; i = Atomics.add(counter, 0, 1)) {
    const c = runChunk(mem, cache, job, i, module);
    if (c) sums.push(i, c.sumSqW, c.sumSqDelta, c.maxAbs);
  }
  return sums;
}

/** Merges every chunk of `job` on this thread, in order; its sums as {@linkcode addChunkSums} adds them. */
export function runAllChunks(
  mem: WebAssembly.Memory,
  cache: KernelCache,
  job: ChunkedTask,
): MergeChangeSums | undefined {
  const n = chunkCount(job);
  const sums: number[] = [];
  for (let i = 0; i < n; i++) {
    const c = runChunk(mem, cache, job, i);
    if (c) sums.push(i, c.sumSqW, c.sumSqDelta, c.maxAbs);
  }
  return job.change ? addChunkSums(n, [sums]) : undefined;
}

/** The block's sums from the quadruples of every thread: added in chunk order, from zero. */
export function addChunkSums(chunks: number, parts: readonly number[][]): MergeChangeSums {
  const byChunk = new Float64Array(chunks * 3);
  for (const p of parts) {
    for (let q = 0; q < p.length; q += 4) byChunk.set([p[q + 1]!, p[q + 2]!, p[q + 3]!], p[q]! * 3);
  }
  const out: MergeChangeSums = { sumSqW: 0, sumSqDelta: 0, maxAbs: 0 };
  for (let i = 0; i < chunks; i++) {
    out.sumSqW += byChunk[i * 3]!;
    out.sumSqDelta += byChunk[i * 3 + 1]!;
    out.maxAbs = Math.max(out.maxAbs, byChunk[i * 3 + 2]!);
  }
  return out;
}
