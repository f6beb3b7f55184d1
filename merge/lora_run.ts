/**
 * Running a planned LoRA merge: each planned {@linkcode Job} becomes a lazy {@linkcode TensorRef}
 * whose `read(rowStart, rowEnd)` decodes the factors once per tensor (several adapters concatenated
 * into one rank, weights and scales folded into B), sends row blocks of the weight through the
 * merge backend with bounded concurrency, applies DoRA column factors, biases, trainable-token rows
 * and casts, and (by default) computes the next row range ahead while the writer writes this one.
 * Private to `mergeLora` (`merge/lora.ts`).
 * @module
 */
import { CkptError } from "../errors.ts";
import { decodeF32, type DType, DTYPES, encodeF32, isFloatDType } from "../formats/dtype.ts";
import { castBytes } from "../formats/cast.ts";
import { numel, rowCount, type TensorRef } from "../formats/state_dict.ts";
import {
  isMergeDType,
  type MergeBackend,
  type MergeDType,
  type MergeRowsIntoRequest,
  type MergeRowsRequest,
} from "../kernels/types.ts";
import { addBlockChange, type BlockChange, ChangeTracker, noChange } from "./_lora_change.ts";
import type { Job, Plan } from "./_lora_job.ts";
import { applyColumnFactors, ColumnNorms } from "./dora.ts";
import { factorA, factorB } from "./layouts.ts";
import type { MergeLoraOptions } from "./lora_types.ts";

/** `LORA_NONFINITE` when the float tensor `ref` holds a NaN or an infinity. */
async function scanFinite(key: string, ref: TensorRef): Promise<void> {
  if (!isFloatDType(ref.dtype)) return;
  const rows = rowCount(ref.shape);
  const rowBytes = ref.shape.length === 0 ? DTYPES[ref.dtype].size : numel(ref.shape.slice(1)) *
    DTYPES[ref.dtype].size;
  const step = Math.max(1, Math.floor((8 << 20) / Math.max(1, rowBytes)));
  for (let r = 0; r < rows; r += step) {
    const v = decodeF32(ref.dtype, await ref.read(r, Math.min(rows, r + step)));
    for (let i = 0; i < v.length; i++) {
      if (!Number.isFinite(v[i]!)) {
        throw new CkptError(
          "LORA_NONFINITE",
          `Cannot merge safely: adapter tensor "${key}" holds a non-finite value (${v[i]})`,
          { tensor: key, details: { index: r * (rowBytes / DTYPES[ref.dtype].size) + i } },
        );
      }
    }
  }
}

/** With `safe`: every factor, magnitude, bias term and token row the plan reads is finite. */
export async function checkPlanFinite(plan: Plan): Promise<void> {
  for (const job of plan.jobs.values()) {
    for (const t of job.terms) {
      await scanFinite(t.aKey, t.a);
      await scanFinite(t.bKey, t.b);
    }
    if (job.magnitude) await scanFinite(job.magnitude.key, job.magnitude.ref);
    for (const bt of job.biasTerms) await scanFinite(bt.key, bt.ref);
    if (job.tokens) await scanFinite(job.tokens.key, job.tokens.values);
  }
}

interface Prepared {
  rank: number;
  a: Float32Array; // rank × cols
  b: Float32Array; // rows × rank
  scale: number;
  rowMagnitude?: Float32Array;
  colFactors?: Float32Array;
}

/** What the merged refs of one `mergeLora` result share. */
export interface ReadContext {
  backend: MergeBackend | undefined;
  safe: boolean;
  blockBytes: number;
  concurrency: number;
  cache: Map<string, Promise<Prepared>>;
  prefetch: boolean;
  /** Row ranges computed ahead of the reader, per tensor and output dtype. */
  ahead: Map<string, { s: number; e: number; p: Promise<JobRows> }>;
  /** Work in flight that nobody awaits yet (waited for on close). */
  pending: Set<Promise<unknown>>;
  /** How much each merged tensor changed, from the blocks readers consumed. */
  changes: ChangeTracker;
}

/** The read context of a merge with `options`, running on `backend` (undefined: none needed). */
export function createReadContext(
  backend: MergeBackend | undefined,
  options: MergeLoraOptions,
  changes: ChangeTracker = new ChangeTracker(() => {}),
): ReadContext {
  return {
    backend,
    safe: options.safe ?? false,
    blockBytes: Math.max(1, options.blockBytes ?? 8 << 20),
    concurrency: Math.max(1, options.concurrency ?? 3),
    cache: new Map(),
    prefetch: options.prefetch ?? true,
    ahead: new Map(),
    pending: new Set(),
    changes,
  };
}

async function decodeAll(ref: TensorRef): Promise<Float32Array> {
  return decodeF32(ref.dtype, await ref.read());
}

async function prepareFactors(job: Job, ctx: ReadContext): Promise<Prepared> {
  const layout = job.layout!;
  const { rows, cols } = layout;
  const decoded: { a: Float32Array; b: Float32Array; factor: number; rank: number }[] = [];
  for (const t of job.terms) {
    const ra = await decodeAll(t.a);
    const rb = await decodeAll(t.b);
    decoded.push({
      a: factorA(t.layout, ra, rb),
      b: factorB(t.layout, ra, rb),
      factor: t.scaling.scale * t.weight,
      rank: t.layout.rank,
    });
  }
  let prepared: Prepared;
  if (decoded.length === 1) {
    const d = decoded[0]!;
    prepared = { rank: d.rank, a: d.a, b: d.b, scale: d.factor };
  } else {
    const rank = decoded.reduce((s, d) => s + d.rank, 0);
    const a = new Float32Array(rank * cols);
    const b = new Float32Array(rows * rank);
    let off = 0;
    for (const d of decoded) {
      a.set(d.a, off * cols);
      const f = Math.fround(d.factor);
      for (let i = 0; i < rows; i++) {
        for (let k = 0; k < d.rank; k++) b[i * rank + off + k] = f * d.b[i * d.rank + k]!;
      }
      off += d.rank;
    }
    prepared = { rank, a, b, scale: 1 };
  }
  if (job.magnitude) {
    const m = await decodeAll(job.magnitude.ref);
    if (job.magnitude.mode === "row") prepared.rowMagnitude = m;
    else {
      const norms = new ColumnNorms(cols);
      await runBlocks(job, ctx, prepared, 0, rows, "F32", (_start, blockRows, bytes) => {
        norms.add(new Float32Array(bytes.buffer, bytes.byteOffset, blockRows * cols), blockRows);
      });
      prepared.colFactors = norms.factors(m);
    }
  }
  return prepared;
}

function getPrepared(job: Job, ctx: ReadContext): Promise<Prepared> {
  let p = ctx.cache.get(job.name);
  if (!p) {
    p = prepareFactors(job, ctx);
    ctx.cache.set(job.name, p);
    p.catch(() => ctx.cache.delete(job.name));
    while (ctx.cache.size > 2) ctx.cache.delete(ctx.cache.keys().next().value!);
  }
  return p;
}

/**
 * Runs row blocks of `[r0, r1)` through the backend with bounded concurrency, in any order. With
 * `into` (the bytes of rows `[r0, r1)` in `outDtype`) and a backend that merges in place
 * (`mergeRowsInto`), each block's W is read straight into the backend's memory and its result lands
 * in `into`: no buffer per block, and `sink` is not called; with `change`, the backend adds each
 * block's change where it merges it. Otherwise `sink` gets each block's result and W.
 */
async function runBlocks(
  job: Job,
  ctx: ReadContext,
  prep: Prepared,
  r0: number,
  r1: number,
  outDtype: MergeDType,
  sink: (rowStart: number, rows: number, bytes: Uint8Array, w: Uint8Array) => void,
  into?: Uint8Array,
  change?: BlockChange,
): Promise<void> {
  const layout = job.layout!;
  const { cols } = layout;
  const wSize = DTYPES[job.source.dtype].size;
  const outSize = DTYPES[outDtype].size;
  const inPlace = into !== undefined && ctx.backend?.mergeRowsInto !== undefined;
  const source = job.source;
  const step = Math.max(1, Math.floor(ctx.blockBytes / Math.max(1, cols * wSize)));
  const starts: number[] = [];
  for (let r = r0; r < r1; r += step) starts.push(r);
  // what a merge request says of rows s..e, whether the backend reads W itself or is given it
  const block = (s: number, e: number): Omit<MergeRowsRequest, "w"> => {
    const req: Omit<MergeRowsRequest, "w"> = {
      name: job.name,
      wDtype: source.dtype as MergeDType,
      outDtype,
      rows: e - s,
      cols,
      rank: prep.rank,
      a: prep.a,
      b: prep.b.subarray(s * prep.rank, e * prep.rank),
      scale: prep.scale,
    };
    if (prep.rowMagnitude) req.magnitude = prep.rowMagnitude.subarray(s, e);
    return req;
  };
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < starts.length) {
      const s = starts[next++]!;
      const e = Math.min(r1, s + step);
      if (inPlace) {
        const req: MergeRowsIntoRequest = {
          ...block(s, e),
          readW: (buf) => source.readInto ? source.readInto(s, e, buf) : source.read(s, e),
        };
        // the backend adds the block's change to the sums where it merges it (the workers)
        if (change) req.change = change;
        const out = into.subarray((s - r0) * cols * outSize, (e - r0) * cols * outSize);
        await ctx.backend!.mergeRowsInto!(req, out);
        continue;
      }
      const w = await source.read(s, e);
      const req: MergeRowsRequest = { ...block(s, e), w };
      sink(s, e - s, await ctx.backend!.mergeRows(req), w);
    }
  };
  const n = Math.min(ctx.concurrency, starts.length);
  await Promise.all(Array.from({ length: n }, worker));
}

function firstNonFinite(dtype: DType, bytes: Uint8Array): number {
  const n = bytes.byteLength / DTYPES[dtype].size;
  if (dtype === "BF16" || dtype === "F16") {
    const u = bytes.byteOffset % 2 === 0
      ? new Uint16Array(bytes.buffer, bytes.byteOffset, n)
      : new Uint16Array(bytes.slice().buffer);
    const mask = dtype === "BF16" ? 0x7f80 : 0x7c00;
    for (let i = 0; i < n; i++) if ((u[i]! & mask) === mask) return i;
    return -1;
  }
  const v = decodeF32(dtype, bytes);
  for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i]!)) return i;
  return -1;
}

function checkFinite(job: Job, bytes: Uint8Array, rowStart: number): void {
  if (!isFloatDType(job.outDtype)) return;
  const i = firstNonFinite(job.outDtype, bytes);
  if (i < 0) return;
  const per = job.source.shape.length <= 1 ? 1 : numel(job.source.shape.slice(1));
  const row = rowStart + Math.floor(i / per);
  throw new CkptError(
    "LORA_NONFINITE",
    `Cannot merge "${job.name}" safely: the result has a non-finite value at row ${row}, column ${
      i % per
    }`,
    { tensor: job.name, details: { row, column: i % per } },
  );
}

/** Rows `[r0, r1)` of a job in its output dtype, and for a LoRA job how much they changed. */
interface JobRows {
  bytes: Uint8Array;
  change?: BlockChange;
}

async function readJob(job: Job, ctx: ReadContext, r0: number, r1: number): Promise<JobRows> {
  const outSize = DTYPES[job.outDtype].size;
  let change: BlockChange | undefined;
  const per = job.source.shape.length <= 1 ? 1 : numel(job.source.shape.slice(1));
  let out: Uint8Array;
  let owned = true; // false while `out` may be a view of the source's bytes
  if (job.terms.length > 0) {
    const prep = await getPrepared(job, ctx);
    out = new Uint8Array((r1 - r0) * per * outSize);
    const outDtype = job.outDtype as MergeDType;
    const sums = change = noChange();
    const wDtype = job.source.dtype;
    if (prep.colFactors) {
      const f = prep.colFactors;
      await runBlocks(job, ctx, prep, r0, r1, "F32", (s, rows, bytes, w) => {
        const v = new Float32Array(bytes.buffer, bytes.byteOffset, rows * per).slice();
        applyColumnFactors(v, rows, f);
        const encoded = encodeF32(outDtype, v);
        addBlockChange(sums, wDtype, w, outDtype, encoded);
        out.set(encoded, (s - r0) * per * outSize);
      });
    } else {
      await runBlocks(job, ctx, prep, r0, r1, outDtype, (s, _rows, bytes, w) => {
        addBlockChange(sums, wDtype, w, outDtype, bytes);
        out.set(bytes, (s - r0) * per * outSize);
      });
    }
  } else {
    const src = await job.source.read(r0, r1);
    out = castBytes(job.source.dtype, job.outDtype, src);
    owned = out !== src;
    if (job.biasTerms.length > 0) {
      const v = decodeF32(job.source.dtype, src).slice();
      for (const t of job.biasTerms) {
        const bb = decodeF32(t.ref.dtype, await t.ref.read(r0, r1));
        const f = Math.fround(t.factor);
        for (let i = 0; i < v.length; i++) v[i] = v[i]! + Math.fround(bb[i]! * f);
      }
      out = encodeF32(job.outDtype, v);
    }
  }
  if (job.tokens) {
    const { indices, values } = job.tokens;
    if (!owned) out = out.slice(); // never write into someone else's bytes
    for (let j = 0; j < indices.length; j++) {
      const row = indices[j]!;
      if (row < r0 || row >= r1) continue;
      const v = decodeF32(values.dtype, await values.read(j, j + 1));
      out.set(encodeF32(job.outDtype, v), (row - r0) * per * outSize);
    }
  }
  if (ctx.safe) checkFinite(job, out, r0);
  return change === undefined ? { bytes: out } : { bytes: out, change };
}

/** `ROW_RANGE` unless `[s, e)` is a row range of a tensor of `shape`. */
function checkRows(name: string, shape: readonly number[], s: number, e: number): void {
  const rows = rowCount(shape);
  if (!Number.isInteger(s) || !Number.isInteger(e) || s < 0 || e < s || e > rows) {
    throw new CkptError(
      "ROW_RANGE",
      `Cannot read rows [${s}, ${e}) of "${name}": it has ${rows} rows`,
      { tensor: name },
    );
  }
}

/**
 * The lazy merged tensor of `job`. Its {@linkcode TensorRef.cast} is the same job with another
 * output dtype: the merge (or the replacement, bias sum, token rows) rounds once, straight into the
 * dtype a writer asks for. The kernels write BF16, F16 and F32; another float dtype takes the f32
 * result and converts it (exact for F64).
 */
export function jobRef(job: Job, ctx: ReadContext): TensorRef {
  const shape = [...job.source.shape];
  const note = job.terms.length > 0
    ? `merged ${job.terms.map((t) => t.adapter).join("+")} into ${job.source.source ?? "base"}`
    : `from ${job.source.source ?? "adapter"}`;
  const key = `${job.name}\0${job.outDtype}`; // computed-ahead rows are bytes of one dtype
  return {
    dtype: job.outDtype,
    shape,
    source: note,
    cast(dtype: DType): TensorRef {
      if (job.terms.length === 0 || isMergeDType(dtype)) {
        return jobRef({ ...job, outDtype: dtype }, ctx);
      }
      const f32 = jobRef({ ...job, outDtype: "F32" }, ctx);
      return {
        dtype,
        shape,
        source: `${note} as ${dtype}`,
        read: async (s?: number, e?: number) => castBytes("F32", dtype, await f32.read(s, e)),
      };
    },
    /**
     * The merged rows `[rowStart, rowEnd)` written into `into` (a writer's block buffer): on a
     * backend that merges in place, W goes from the file into the backend's memory and the result
     * into `into`, with no buffer of its own. Other jobs (DoRA column norms, replacements, token
     * rows) give their bytes as `read` does.
     */
    async readInto(rowStart: number, rowEnd: number, into: Uint8Array): Promise<Uint8Array> {
      checkRows(job.name, shape, rowStart, rowEnd);
      if (job.terms.length === 0 || job.tokens || !ctx.backend?.mergeRowsInto) {
        return await this.read(rowStart, rowEnd);
      }
      const prep = await getPrepared(job, ctx);
      if (prep.colFactors) return await this.read(rowStart, rowEnd);
      const per = shape.length <= 1 ? 1 : numel(shape.slice(1));
      const target = into.subarray(0, (rowEnd - rowStart) * per * DTYPES[job.outDtype].size);
      const outDtype = job.outDtype as MergeDType;
      const change = noChange();
      await runBlocks(job, ctx, prep, rowStart, rowEnd, outDtype, () => {}, target, change);
      if (ctx.safe) checkFinite(job, target, rowStart);
      ctx.changes.commit(job.name, shape, job.outDtype, rowStart, rowEnd, change);
      return target;
    },
    async read(rowStart?: number, rowEnd?: number): Promise<Uint8Array> {
      const rows = rowCount(shape);
      const s = rowStart ?? 0;
      const e = rowEnd ?? rows;
      checkRows(job.name, shape, s, e);
      const ahead = ctx.ahead.get(key);
      let p: Promise<JobRows>;
      if (ahead && ahead.s === s && ahead.e === e) {
        ctx.ahead.delete(key);
        p = ahead.p;
      } else p = readJob(job, ctx, s, e);
      // A writer reads row ranges in order: compute the next range of the same size while this
      // one is finished and written (queued behind it, so it does not delay it).
      if (ctx.prefetch && job.terms.length > 0 && e > s && e < rows) {
        const next = ctx.ahead.get(key);
        if (!next || next.s !== e) {
          const ne = Math.min(rows, e + (e - s));
          const np = readJob(job, ctx, e, ne);
          const settled = np.then(() => {}, () => {});
          ctx.pending.add(settled);
          void settled.then(() => ctx.pending.delete(settled));
          ctx.ahead.set(key, { s: e, e: ne, p: np });
        }
      }
      const got = await p;
      if (got.change) ctx.changes.commit(job.name, shape, job.outDtype, s, e, got.change);
      return got.bytes;
    },
  };
}
