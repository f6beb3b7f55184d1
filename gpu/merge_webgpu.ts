/**
 * The WebGPU merge backend: host code for the WGSL kernels of `gpu/merge_shader.ts`.
 *
 * - Pipelines are compiled once per {@linkcode pipelineKey} and cached.
 * - Buffers come from a pool keyed by usage and size class, every one labelled; counters
 *   ({@linkcode WebGpuMergeBackend.stats}) let tests prove nothing leaks.
 * - A is uploaded once per distinct `Float32Array` (every block of a tensor shares it): do not
 *   mutate an A array between calls.
 * - Calls may be concurrent: each call's upload and dispatch are queued at once and its read-back
 *   awaited afterwards, so the queue uploads the next block and runs its kernel while the previous
 *   block's result is mapped and copied out. Within one call, up to two blocks are in flight.
 *
 * @example Merging on the GPU (needs a WebGPU adapter)
 * ```ts ignore
 * import { createWebGpuBackend } from "./merge_webgpu.ts";
 *
 * const gpu = await createWebGpuBackend();
 * console.log(gpu.description, gpu.info.isFallbackAdapter);
 * await gpu.dispose();
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { MERGE_DTYPE_SIZE, type MergeBackend, type MergeRowsRequest } from "../kernels/types.ts";
import { validateMergeRequest } from "../kernels/validate.ts";
import { type AcquiredGpu, acquireGpu, type GpuInfo } from "./device.ts";
import {
  type MergeBlockPlan,
  type MergeKernelSpec,
  type MergePlan,
  type MergePlanOptions,
  pipelineKey,
  planMerge,
} from "./merge_plan.ts";
import { mergeShaderSource } from "./merge_shader.ts";

/** Options of {@linkcode createWebGpuBackend}. */
export interface WebGpuBackendOptions extends MergePlanOptions {
  /** Use this device instead of acquiring one (it is then not destroyed by `dispose`). */
  gpu?: AcquiredGpu;
  /** Free pooled bytes kept for reuse before buffers are destroyed (default 1 GiB). */
  maxPooledBytes?: number;
}

/** Counters of GPU objects, for leak tests and reports. */
export interface WebGpuStats {
  /** Buffers created so far. */
  buffersCreated: number;
  /** Buffers destroyed so far. */
  buffersDestroyed: number;
  /** Buffers checked out of the pool (in use by calls in flight, or the cached A). */
  buffersInUse: number;
  /** Free buffers kept in the pool. */
  buffersPooled: number;
  /** Pipelines compiled. */
  pipelinesCompiled: number;
  /** Pipeline cache hits. */
  pipelineCacheHits: number;
  /** Times A was uploaded. */
  aUploads: number;
  /** Times A was reused from the cache. */
  aReuses: number;
}

/** The WebGPU backend with its device description and counters. */
export interface WebGpuMergeBackend extends MergeBackend {
  /** The adapter and device description. */
  readonly info: GpuInfo;
  /** Object counters. */
  stats(): WebGpuStats;
  /** Destroys the free pooled buffers (and the cached A when no call uses it). */
  trim(): void;
  /** The plan a request would run (for reports and tests). */
  plan(req: MergeRowsRequest): MergePlan;
  /**
   * Benchmark helper: uploads `req` once, runs its kernel `reps` times and returns the seconds per
   * kernel run (queue work only, no transfers).
   */
  timeKernel(req: MergeRowsRequest, reps: number): Promise<number>;
}

const U = {
  storage: 0x80 | 0x08, // STORAGE | COPY_DST
  out: 0x80 | 0x04 | 0x08, // STORAGE | COPY_SRC | COPY_DST
  read: 0x01 | 0x08, // MAP_READ | COPY_DST
  uniform: 0x40 | 0x08, // UNIFORM | COPY_DST
};

function sizeClass(n: number): number {
  if (n <= 4096) return Math.max(256, Math.ceil(n / 256) * 256);
  const step = 2 ** (Math.floor(Math.log2(n)) - 2);
  return Math.ceil(n / step) * step;
}

interface ACacheEntry {
  a: Float32Array;
  buf: GPUBuffer;
  refs: number;
  current: boolean;
}

class WebGpuBackend implements WebGpuMergeBackend {
  readonly kind = "webgpu" as const;
  readonly description: string;
  readonly info: GpuInfo;
  #gpu: AcquiredGpu;
  #owns: boolean;
  #device: GPUDevice;
  #opts: WebGpuBackendOptions;
  #pipelines = new Map<string, Promise<GPUComputePipeline>>();
  #pool = new Map<string, GPUBuffer[]>();
  #pooledBytes = 0;
  #bufKey = new WeakMap<GPUBuffer, string>();
  #a: ACacheEntry | undefined;
  #stale = new Set<ACacheEntry>();
  #stats: WebGpuStats = {
    buffersCreated: 0,
    buffersDestroyed: 0,
    buffersInUse: 0,
    buffersPooled: 0,
    pipelinesCompiled: 0,
    pipelineCacheHits: 0,
    aUploads: 0,
    aReuses: 0,
  };
  #lost: string | undefined;
  #disposed = false;
  #serial = 0;

  constructor(gpu: AcquiredGpu, owns: boolean, opts: WebGpuBackendOptions) {
    this.#gpu = gpu;
    this.#owns = owns;
    this.#device = gpu.device;
    this.#opts = opts;
    this.info = gpu.info;
    this.description = `webgpu: ${gpu.info.description || gpu.info.vendor}${
      gpu.info.isFallbackAdapter ? " (fallback adapter)" : ""
    }`;
    gpu.device.lost.then((l) => {
      this.#lost = `${l.reason}: ${l.message}`;
    });
  }

  stats(): WebGpuStats {
    return { ...this.#stats };
  }

  plan(req: MergeRowsRequest): MergePlan {
    return planMerge(
      {
        rows: req.rows,
        cols: req.cols,
        rank: req.rank,
        wDtype: req.wDtype,
        outDtype: req.outDtype,
        dora: req.magnitude !== undefined,
      },
      this.info.limits,
      this.#opts,
    );
  }

  #acquire(usage: number, size: number, label: string): GPUBuffer {
    const cls = Math.min(sizeClass(size), this.info.limits.maxBufferSize);
    const key = `${usage}:${cls}`;
    const free = this.#pool.get(key);
    const hit = free?.pop();
    this.#stats.buffersInUse++;
    if (hit) {
      this.#stats.buffersPooled--;
      this.#pooledBytes -= cls;
      hit.label = label;
      return hit;
    }
    const buf = this.#device.createBuffer({ label, size: cls, usage });
    this.#bufKey.set(buf, key);
    this.#stats.buffersCreated++;
    return buf;
  }

  #release(buf: GPUBuffer): void {
    const key = this.#bufKey.get(buf)!;
    const size = Number(key.split(":")[1]);
    this.#stats.buffersInUse--;
    if (this.#disposed || this.#pooledBytes + size > (this.#opts.maxPooledBytes ?? 2 ** 30)) {
      buf.destroy();
      this.#stats.buffersDestroyed++;
      return;
    }
    let list = this.#pool.get(key);
    if (!list) this.#pool.set(key, list = []);
    buf.label = `ckpt.merge.pooled(${key})`;
    list.push(buf);
    this.#stats.buffersPooled++;
    this.#pooledBytes += size;
  }

  trim(): void {
    for (const list of this.#pool.values()) {
      for (const b of list) {
        b.destroy();
        this.#stats.buffersDestroyed++;
        this.#stats.buffersPooled--;
      }
    }
    this.#pool.clear();
    this.#pooledBytes = 0;
    if (this.#a && this.#a.refs === 0) {
      this.#release(this.#a.buf);
      this.#a = undefined;
      this.trim();
    }
  }

  #pipeline(spec: MergeKernelSpec): Promise<GPUComputePipeline> {
    const key = pipelineKey(spec);
    const hit = this.#pipelines.get(key);
    if (hit) {
      this.#stats.pipelineCacheHits++;
      return hit;
    }
    const made = this.#compile(key, spec);
    this.#pipelines.set(key, made);
    made.catch(() => this.#pipelines.delete(key));
    return made;
  }

  async #compile(key: string, spec: MergeKernelSpec): Promise<GPUComputePipeline> {
    this.#device.pushErrorScope("validation");
    const module = this.#device.createShaderModule({ label: key, code: mergeShaderSource(spec) });
    const pipeline = this.#device.createComputePipeline({
      label: key,
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    const err = await this.#device.popErrorScope();
    if (err) {
      throw new CkptError("GPU_PIPELINE", `Cannot compile merge kernel ${key}: ${err.message}`);
    }
    this.#stats.pipelinesCompiled++;
    return pipeline;
  }

  #useA(a: Float32Array, name: string): ACacheEntry {
    const cur = this.#a;
    if (cur && cur.a === a) {
      cur.refs++;
      this.#stats.aReuses++;
      return cur;
    }
    if (cur) {
      cur.current = false;
      if (cur.refs === 0) this.#release(cur.buf);
      else this.#stale.add(cur);
    }
    const bytes = Math.max(16, a.byteLength);
    const buf = this.#acquire(U.storage, bytes, `ckpt.merge.A(${name})`);
    if (a.byteLength > 0) this.#device.queue.writeBuffer(buf, 0, a as Float32Array<ArrayBuffer>);
    this.#stats.aUploads++;
    const entry: ACacheEntry = { a, buf, refs: 1, current: true };
    this.#a = entry;
    return entry;
  }

  #doneA(entry: ACacheEntry): void {
    entry.refs--;
    if (!entry.current && entry.refs === 0 && this.#stale.delete(entry)) this.#release(entry.buf);
  }

  #writeBytes(buf: GPUBuffer, bytes: Uint8Array): void {
    const whole = bytes.byteLength & ~3;
    if (whole > 0) {
      this.#device.queue.writeBuffer(buf, 0, bytes as Uint8Array<ArrayBuffer>, 0, whole);
    }
    if (whole < bytes.byteLength) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(whole));
      this.#device.queue.writeBuffer(buf, whole, tail);
    }
  }

  /** Uploads a block and queues its kernel; returns the buffers to read and release. */
  #submitBlock(
    req: MergeRowsRequest,
    plan: MergePlan,
    block: MergeBlockPlan,
    pipeline: GPUComputePipeline,
    aBuf: GPUBuffer,
    readBack: boolean,
  ): {
    out: GPUBuffer;
    read: GPUBuffer | undefined;
    bufs: GPUBuffer[];
    dataBytes: number;
    validation: Promise<GPUError | null>;
  } {
    const { rows: _r, cols, rank } = req;
    const label = `ckpt.merge(${req.name})[${block.row0}:${block.row1}]#${this.#serial++}`;
    const wsz = MERGE_DTYPE_SIZE[req.wDtype], osz = MERGE_DTYPE_SIZE[req.outDtype];
    const rowsN = block.row1 - block.row0;
    const n = rowsN * cols;
    const params = this.#acquire(U.uniform, 16, `${label}.params`);
    const pv = new ArrayBuffer(16);
    new Uint32Array(pv, 0, 3).set([rowsN, cols, n]);
    new Float32Array(pv, 12, 1)[0] = req.scale;
    this.#device.queue.writeBuffer(params, 0, pv);
    const w = this.#acquire(U.storage, block.wBytes, `${label}.W`);
    this.#writeBytes(w, req.w.subarray(block.row0 * cols * wsz, block.row1 * cols * wsz));
    const b = this.#acquire(U.storage, block.bBytes, `${label}.B`);
    if (rank > 0) {
      this.#device.queue.writeBuffer(
        b,
        0,
        req.b as Float32Array<ArrayBuffer>,
        block.row0 * rank,
        rowsN * rank,
      );
    }
    const out = this.#acquire(U.out, block.outBytes, `${label}.out`);
    const bufs = [params, w, b, out];
    const entries: GPUBindGroupEntry[] = [
      { binding: 0, resource: { buffer: params, size: 16 } },
      { binding: 1, resource: { buffer: aBuf, size: plan.aBytes } },
      { binding: 2, resource: { buffer: b, size: block.bBytes } },
      { binding: 3, resource: { buffer: w, size: block.wBytes } },
      { binding: 4, resource: { buffer: out, size: block.outBytes } },
    ];
    if (req.magnitude) {
      const m = this.#acquire(U.storage, Math.max(16, rowsN * 4), `${label}.magnitude`);
      this.#device.queue.writeBuffer(
        m,
        0,
        req.magnitude as Float32Array<ArrayBuffer>,
        block.row0,
        rowsN,
      );
      bufs.push(m);
      entries.push({ binding: 5, resource: { buffer: m, size: Math.max(16, rowsN * 4) } });
    }
    this.#device.pushErrorScope("validation");
    const bind = this.#device.createBindGroup({
      label,
      layout: pipeline.getBindGroupLayout(0),
      entries,
    });
    const enc = this.#device.createCommandEncoder({ label });
    if (req.magnitude) enc.clearBuffer(out, 0, block.outBytes);
    const pass = enc.beginComputePass({ label });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    if (n > 0) pass.dispatchWorkgroups(block.dispatch[0], block.dispatch[1]);
    pass.end();
    const dataBytes = n * osz;
    let read: GPUBuffer | undefined;
    if (readBack && dataBytes > 0) {
      read = this.#acquire(U.read, Math.ceil(dataBytes / 4) * 4, `${label}.read`);
      bufs.push(read);
      enc.copyBufferToBuffer(out, 0, read, 0, Math.ceil(dataBytes / 4) * 4);
    }
    this.#device.queue.submit([enc.finish()]);
    const validation = this.#device.popErrorScope();
    return { out, read, bufs, dataBytes, validation };
  }

  async mergeRows(req: MergeRowsRequest): Promise<Uint8Array> {
    if (this.#disposed) {
      throw new CkptError(
        "MERGE_DISPOSED",
        `Cannot merge "${req.name}": the WebGPU backend was disposed`,
      );
    }
    if (this.#lost) {
      throw new CkptError(
        "GPU_LOST",
        `Cannot merge "${req.name}": the GPU device was lost (${this.#lost})`,
      );
    }
    validateMergeRequest(req);
    const plan = this.plan(req);
    const pipeline = await this.#pipeline(plan.spec);
    const osz = MERGE_DTYPE_SIZE[req.outDtype];
    const result = new Uint8Array(req.rows * req.cols * osz);
    const aEntry = this.#useA(req.a, req.name);
    try {
      const inFlight: Promise<void>[] = [];
      for (const block of plan.blocks) {
        if (inFlight.length >= 2) await inFlight.shift();
        const sub = this.#submitBlock(req, plan, block, pipeline, aEntry.buf, true);
        inFlight.push((async () => {
          try {
            const err = await sub.validation;
            if (err) {
              throw new CkptError(
                "GPU_VALIDATION",
                `Cannot merge "${req.name}" on the GPU: ${err.message}`,
                { tensor: req.name },
              );
            }
            if (sub.read) {
              await sub.read.mapAsync(GPUMapMode.READ, 0, Math.ceil(sub.dataBytes / 4) * 4);
              const view = new Uint8Array(
                sub.read.getMappedRange(0, Math.ceil(sub.dataBytes / 4) * 4),
              );
              result.set(view.subarray(0, sub.dataBytes), block.row0 * req.cols * osz);
              sub.read.unmap();
            }
          } finally {
            for (const b of sub.bufs) this.#release(b);
          }
        })());
      }
      await Promise.all(inFlight);
    } finally {
      this.#doneA(aEntry);
    }
    return result;
  }

  async timeKernel(req: MergeRowsRequest, reps: number): Promise<number> {
    validateMergeRequest(req);
    const plan = this.plan(req);
    if (plan.blocks.length !== 1) {
      throw new CkptError("GPU_BENCH", "Cannot time the kernel: the request needs several blocks");
    }
    const pipeline = await this.#pipeline(plan.spec);
    const aEntry = this.#useA(req.a, req.name);
    const block = plan.blocks[0]!;
    const sub = this.#submitBlock(req, plan, block, pipeline, aEntry.buf, false);
    try {
      await this.#device.queue.onSubmittedWorkDone();
      const bind = this.#device.createBindGroup({
        label: `ckpt.merge.bench(${req.name})`,
        layout: pipeline.getBindGroupLayout(0),
        entries: [0, 1, 2, 3, 4].map((binding) => ({
          binding,
          resource: {
            buffer: binding === 1 ? aEntry.buf : sub.bufs[[0, 0, 2, 1, 3][binding]!]!,
            size: [16, plan.aBytes, block.bBytes, block.wBytes, block.outBytes][binding]!,
          },
        })),
      });
      const t0 = performance.now();
      const enc = this.#device.createCommandEncoder({ label: "ckpt.merge.bench" });
      for (let r = 0; r < reps; r++) {
        const pass = enc.beginComputePass({ label: `ckpt.merge.bench#${r}` });
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, bind);
        pass.dispatchWorkgroups(block.dispatch[0], block.dispatch[1]);
        pass.end();
      }
      this.#device.queue.submit([enc.finish()]);
      await this.#device.queue.onSubmittedWorkDone();
      return (performance.now() - t0) / 1000 / reps;
    } finally {
      for (const b of sub.bufs) this.#release(b);
      this.#doneA(aEntry);
    }
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    await this.#device.queue.onSubmittedWorkDone().catch(() => {});
    this.trim();
    if (this.#a) {
      this.#a.buf.destroy();
      this.#stats.buffersDestroyed++;
      this.#stats.buffersInUse--;
      this.#a = undefined;
    }
    this.#disposed = true;
    this.#pipelines.clear();
    if (this.#owns) this.#gpu.device.destroy();
  }
}

/**
 * Creates the WebGPU backend on a new device (or `options.gpu`). Throws `GPU_UNAVAILABLE`,
 * `GPU_LIMIT` or `GPU_DEVICE` from {@linkcode acquireGpu}.
 */
export async function createWebGpuBackend(
  options: WebGpuBackendOptions = {},
): Promise<WebGpuMergeBackend> {
  const gpu = options.gpu ?? await acquireGpu();
  // measured on llvmpipe: the row-loop kernel (A tile in registers, 32 rows per invocation) does
  // 1.6-2x the work per CPU second of the 4-8-row tiles; hardware GPUs want more parallelism
  const rowsPerInvocation = options.rowsPerInvocation ?? (gpu.info.isFallbackAdapter ? 32 : 4);
  return new WebGpuBackend(gpu, options.gpu === undefined, { ...options, rowsPerInvocation });
}
