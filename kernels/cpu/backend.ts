/**
 * The CPU merge backend: a WebAssembly SIMD kernel (`kernels/cpu/kernel.ts`, generated at startup)
 * run by workers that share one `WebAssembly.Memory` and claim the block's rows chunk by chunk
 * (`_chunks.ts`). Results equal `kernels/reference.ts` bit for bit; the ‖ΔW‖ sums do not depend on
 * the worker count.
 *
 * A block is copied into the shared memory (A rearranged by 16-column tile as the kernel reads it,
 * `packA`), merged by the workers in parallel (one block at a
 * time: they already use every core) and copied out. The memory has two slots, so with calls in
 * flight the calling thread copies the next block in (and the previous one out) while the workers
 * merge this one. Blocks too small to be worth a round trip to the workers are merged on the
 * calling thread with the same kernel.
 *
 * @example Merging on the CPU
 * ```ts
 * import { createCpuBackend } from "./backend.ts";
 * import { mergeRowsReference } from "../reference.ts";
 * import assert from "node:assert/strict";
 *
 * const cpu = await createCpuBackend({ workers: 2 });
 * const req = {
 *   name: "w", wDtype: "BF16", outDtype: "BF16", rows: 3, cols: 40, rank: 2,
 *   w: new Uint8Array(3 * 40 * 2).fill(0x3f), a: new Float32Array(80).fill(0.25),
 *   b: new Float32Array(6).fill(-1), scale: 2,
 * } as const;
 * assert.deepEqual(await cpu.mergeRows(req), mergeRowsReference(req));
 * await cpu.dispose();
 * ```
 * @module
 */
import { CkptError } from "../../errors.ts";
import { compileKernel, type CpuTask, KernelCache, kernelKey, kernelKind } from "./_rows.ts";
import { KERNEL_MAX_PAGES, packA } from "./kernel.ts";
import {
  addChunkSums,
  CHUNK_ELEMENTS,
  chunkCount,
  type ChunkedTask,
  chunkRows,
  runAllChunks,
} from "./_chunks.ts";
import { phaseClock } from "../../formats/phase_clock.ts";
import {
  MERGE_DTYPE_SIZE,
  type MergeBackend,
  type MergeChangeSums,
  type MergeRowsIntoRequest,
  type MergeRowsRequest,
} from "../types.ts";
import { checkBlockBytes, validateMergeRequest, validateMergeShape } from "../validate.ts";

/** Options of {@linkcode createCpuBackend}. */
export interface CpuBackendOptions {
  /** Worker count (default `navigator.hardwareConcurrency`, at most 16; 0 merges on the calling
   * thread only). */
  workers?: number;
  /** Blocks with fewer than this many `weights × rank` products run on the calling thread
   * (default 2^20). */
  inlineBelow?: number;
  /** Elements per chunk of a block that the workers claim one at a time (default 2^18, about
   * 512 KiB of bf16; tests make it small to give small blocks several chunks). */
  chunkElements?: number;
}

const PAGE = 65536;
/** The claim counter of the block being merged (one at a time): in the memory's first page, which
 * no slot uses (slots start past the memory's initial 16 pages). */
const COUNTER_PTR = 0;
const align = (n: number) => Math.ceil(n / 64) * 64;

interface Pending {
  resolve: (sums: number[]) => void;
  reject: (e: Error) => void;
}

/** The CPU backend, with a benchmark helper. */
export interface CpuMergeBackend extends MergeBackend {
  /** See {@linkcode MergeBackend.mergeRowsInto}: the CPU backend always merges in place. */
  mergeRowsInto(req: MergeRowsIntoRequest, out: Uint8Array): Promise<Uint8Array>;
  /** Benchmark helper: copies `req` in once, merges it `reps` times and returns the seconds per
   * merge without the copies (the kernel alone, all workers). */
  timeKernel(req: MergeRowsRequest, reps: number): Promise<number>;
}

class CpuBackend implements CpuMergeBackend {
  readonly kind = "cpu" as const;
  readonly description: string;
  #mem: WebAssembly.Memory;
  #cache: KernelCache;
  #workers: Worker[];
  #modules = new Map<string, WebAssembly.Module>();
  #sent: Set<string>[];
  #pending = new Map<number, Pending>();
  #nextId = 0;
  /** Two slots of the shared memory: a call copies into one while the workers merge the other. */
  #slots: { base: number; cap: number; chain: Promise<unknown> }[] = [
    { base: 0, cap: 0, chain: Promise.resolve() },
    { base: 0, cap: 0, chain: Promise.resolve() },
  ];
  #nextSlot = 0;
  /** The workers' turn: one block merged at a time. */
  #compute: Promise<unknown> = Promise.resolve();
  #inlineBelow: number;
  #chunkElements: number;
  #disposed = false;

  constructor(workers: number, inlineBelow: number, chunkElements: number) {
    this.#mem = new WebAssembly.Memory({ initial: 16, maximum: KERNEL_MAX_PAGES, shared: true });
    this.#cache = new KernelCache(this.#mem);
    this.#inlineBelow = inlineBelow;
    this.#chunkElements = chunkElements;
    this.#workers = [];
    this.#sent = [];
    for (let n = 0; n < workers; n++) {
      const w = new Worker(new URL("./worker.ts", import.meta.url).href, {
        type: "module",
        name: `ckpt-merge-cpu-${n}`,
      });
      w.onmessage = (e: MessageEvent) => {
        const { id, error, sums } = e.data as { id: number; error?: string; sums?: number[] };
        const p = this.#pending.get(id);
        this.#pending.delete(id);
        if (error === undefined) p?.resolve(sums ?? []);
        else p?.reject(new CkptError("MERGE_CPU_WORKER", `Cannot merge on the CPU: ${error}`));
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        for (const p of this.#pending.values()) {
          p.reject(new CkptError("MERGE_CPU_WORKER", `Cannot merge on the CPU: ${e.message}`));
        }
        this.#pending.clear();
      };
      w.postMessage({ type: "init", mem: this.#mem });
      this.#workers.push(w);
      this.#sent.push(new Set());
    }
    this.description = `cpu: WebAssembly SIMD, ${workers} worker${workers === 1 ? "" : "s"}`;
  }

  mergeRows(req: MergeRowsRequest): Promise<Uint8Array> {
    if (this.#disposed) {
      return Promise.reject(
        new CkptError("MERGE_DISPOSED", `Cannot merge "${req.name}": the CPU backend was disposed`),
      );
    }
    try {
      validateMergeRequest(req);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#inSlot((slot) => this.#merge(req, 0, slot));
  }

  /**
   * W is read straight into the slot's region of the shared memory (no block buffer of its own)
   * and the result copied once, into `out`.
   */
  mergeRowsInto(req: MergeRowsIntoRequest, out: Uint8Array): Promise<Uint8Array> {
    if (this.#disposed) {
      return Promise.reject(
        new CkptError("MERGE_DISPOSED", `Cannot merge "${req.name}": the CPU backend was disposed`),
      );
    }
    try {
      validateMergeShape(req);
      checkBlockBytes(req, "the output buffer", out, req.outDtype);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#inSlot((slot) => this.#merge(req, 0, slot, out));
  }

  /** Runs `fn` in the next slot once that slot's previous call is done. */
  #inSlot<T>(fn: (slot: number) => Promise<T>): Promise<T> {
    const slot = this.#nextSlot;
    this.#nextSlot ^= 1;
    const run = this.#slots[slot]!.chain.then(() => fn(slot));
    this.#slots[slot]!.chain = run.catch(() => {});
    return run;
  }

  #module(key: string, kind: ReturnType<typeof kernelKind>): WebAssembly.Module {
    let m = this.#modules.get(key);
    if (!m) {
      if (this.#modules.size > 64) this.#modules.clear();
      m = compileKernel(kind);
      this.#modules.set(key, m);
    }
    return m;
  }

  /** See {@linkcode CpuMergeBackend.timeKernel}. */
  async timeKernel(req: MergeRowsRequest, reps: number): Promise<number> {
    validateMergeRequest(req);
    const n = Math.max(1, Math.floor(reps));
    return (await this.#inSlot((slot) => this.#merge(req, n, slot))).seconds;
  }

  async #merge(
    req: MergeRowsRequest | MergeRowsIntoRequest,
    reps?: 0,
    slot?: number,
    out?: Uint8Array,
  ): Promise<Uint8Array>;
  async #merge(req: MergeRowsRequest, reps: number, slot: number): Promise<{ seconds: number }>;
  async #merge(
    req: MergeRowsRequest | MergeRowsIntoRequest,
    reps = 0,
    slot = 0,
    out?: Uint8Array,
  ): Promise<Uint8Array | { seconds: number }> {
    const { rows, cols, rank } = req;
    const dora = req.magnitude !== undefined;
    // layout relative to the slot's base: A, B, W, output, DoRA rows, DoRA magnitudes
    const outBytes = rows * cols * MERGE_DTYPE_SIZE[req.outDtype];
    const wBytes = rows * cols * MERGE_DTYPE_SIZE[req.wDtype];
    const bOff = align(req.a.byteLength);
    const wOff = align(bOff + req.b.byteLength);
    const outOff = align(wOff + wBytes);
    const yOff = align(outOff + outBytes);
    const magOff = align(yOff + (dora ? rows * cols * 4 : 0));
    const size = magOff + (dora ? rows * 4 : 0) + 64;
    const s = this.#slots[slot]!;
    if (size > s.cap) {
      // a new, larger region for this slot at the end of the memory: only this slot's own calls
      // use it, so the other slot's call in flight is never disturbed
      s.base = this.#mem.buffer.byteLength;
      s.cap = Math.ceil((size * 1.25) / PAGE) * PAGE;
    }
    const aPtr = s.base, bPtr = s.base + bOff, wPtr = s.base + wOff, outPtr = s.base + outOff;
    const yPtr = s.base + yOff, magPtr = s.base + magOff;
    const pages = Math.ceil((s.base + s.cap) / PAGE);
    const have = this.#mem.buffer.byteLength / PAGE;
    if (pages > KERNEL_MAX_PAGES) {
      throw new CkptError(
        "MERGE_BLOCK_TOO_LARGE",
        `Cannot merge "${req.name}" on the CPU: a block of ${rows} x ${cols} needs ${size} bytes, more than the 4 GiB memory holds`,
        { tensor: req.name },
      );
    }
    if (pages > have) this.#mem.grow(pages - have);
    const u8 = new Uint8Array(this.#mem.buffer as unknown as ArrayBuffer);
    packA(
      req.a,
      rank,
      cols,
      new Float32Array(this.#mem.buffer as unknown as ArrayBuffer, aPtr, rank * cols),
    );
    u8.set(new Uint8Array(req.b.buffer, req.b.byteOffset, req.b.byteLength), bPtr);
    if ("w" in req) u8.set(req.w, wPtr);
    else {
      const view = u8.subarray(wPtr, wPtr + wBytes);
      const got = await req.readW(view);
      checkBlockBytes(req, "W block", got, req.wDtype);
      if (got.buffer !== view.buffer || got.byteOffset !== view.byteOffset) {
        // the memory may have grown while reading: copy through a fresh view
        new Uint8Array(this.#mem.buffer as unknown as ArrayBuffer).set(got, wPtr);
      }
    }
    if (req.magnitude) {
      const m = req.magnitude;
      u8.set(new Uint8Array(m.buffer, m.byteOffset, m.byteLength), magPtr);
    }
    const base: Omit<CpuTask, "row0" | "row1"> = {
      key: kernelKey(kernelKind(req.wDtype, dora ? "F32" : req.outDtype, rank, cols)),
      wDtype: req.wDtype,
      outDtype: req.outDtype,
      wPtr,
      aPtr,
      bPtr,
      outPtr,
      yPtr,
      magPtr,
      dora,
      cols,
      rank,
      scale: req.scale,
    };
    const change = "change" in req ? req.change : undefined;
    if (change) base.change = true;
    const work = rows * cols * Math.max(rank, 1);
    const n = Math.min(this.#workers.length, rows);
    let seconds = 0;
    const turn = this.#compute.then(async () => {
      const t0 = performance.now();
      for (let rep = 0; rep < Math.max(reps, 1); rep++) {
        const sums = await this.#run(req, base, n, work);
        if (change && sums) {
          change.sumSqW += sums.sumSqW;
          change.sumSqDelta += sums.sumSqDelta;
          change.maxAbs = Math.max(change.maxAbs, sums.maxAbs);
        }
      }
      seconds = (performance.now() - t0) / 1000 / Math.max(reps, 1);
      if (reps === 0) phaseClock.add("merge", seconds * 1000, wBytes);
    });
    this.#compute = turn.catch(() => {});
    await turn;
    if (reps > 0) return { seconds };
    const result = new Uint8Array(this.#mem.buffer as unknown as ArrayBuffer, outPtr, outBytes);
    if (!out) return result.slice();
    out.set(result);
    return out;
  }

  async #run(
    req: Pick<MergeRowsRequest, "rows" | "wDtype" | "outDtype">,
    base: Omit<CpuTask, "row0" | "row1">,
    n: number,
    work: number,
  ): Promise<MergeChangeSums | undefined> {
    const job: ChunkedTask = {
      ...base,
      rows: req.rows,
      chunkRows: chunkRows(base.cols, this.#chunkElements),
      counterPtr: COUNTER_PTR,
    };
    const chunks = chunkCount(job);
    const threads = Math.min(n, chunks);
    if (threads <= 1 || work < this.#inlineBelow) return runAllChunks(this.#mem, this.#cache, job);
    const module = this.#module(
      base.key,
      kernelKind(req.wDtype, base.dora ? "F32" : req.outDtype, base.rank, base.cols),
    );
    Atomics.store(new Int32Array(this.#mem.buffer as unknown as ArrayBuffer, COUNTER_PTR, 1), 0, 0);
    const jobs: Promise<number[]>[] = [];
    for (let t = 0; t < threads; t++) {
      const id = this.#nextId++;
      const sent = this.#sent[t]!;
      const first = !sent.has(base.key);
      sent.add(base.key);
      jobs.push(
        new Promise<number[]>((resolve, reject) => {
          this.#pending.set(id, { resolve, reject });
          this.#workers[t]!.postMessage({ type: "task", id, job, ...(first ? { module } : {}) });
        }),
      );
    }
    // every thread has stopped claiming before the next block resets the counter, failed or not
    const settled = await Promise.allSettled(jobs);
    const failed = settled.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
    const parts = settled.map((r) => (r as PromiseFulfilledResult<number[]>).value);
    return base.change ? addChunkSums(chunks, parts) : undefined;
  }

  dispose(): Promise<void> {
    this.#disposed = true;
    for (const w of this.#workers) w.terminate();
    this.#workers = [];
    for (const p of this.#pending.values()) {
      p.reject(new CkptError("MERGE_DISPOSED", "Cannot merge: the CPU backend was disposed"));
    }
    this.#pending.clear();
    return Promise.resolve();
  }
}

/** Creates the CPU backend (workers start at once; dispose it to stop them). */
export function createCpuBackend(options: CpuBackendOptions = {}): Promise<CpuMergeBackend> {
  const workers = Math.max(
    0,
    Math.min(16, Math.floor(options.workers ?? navigator.hardwareConcurrency ?? 1)),
  );
  return Promise.resolve(
    new CpuBackend(
      workers,
      options.inlineBelow ?? 1 << 20,
      Math.max(1, options.chunkElements ?? CHUNK_ELEMENTS),
    ),
  );
}
