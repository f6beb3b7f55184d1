/**
 * The part of a CPU merge that runs beside the SIMD kernel, on the main thread or in a worker:
 * the columns past the last 16-column tile (scalar formula of `kernels/reference.ts`) and the DoRA
 * row scaling. Private to the CPU backend.
 * @module
 */
import { bf16ToF32, f16ToF32 } from "../../formats/dtype.ts";
import { doraSumOfSquares, encodeMergedRow } from "../reference.ts";
import { KERNEL_MAX_UNROLL, KERNEL_TILE_COLS, mergeKernelWasm } from "./kernel.ts";
import { changeSumsWasm } from "./change_kernel.ts";
import { MERGE_DTYPE_SIZE, type MergeChangeSums, type MergeDType } from "../types.ts";

/** One slice of a block for one thread: pointers into the shared memory and the row range. */
export interface CpuTask {
  /** Kernel cache key, from {@linkcode kernelKey}. */
  key: string;
  wDtype: MergeDType;
  outDtype: MergeDType;
  wPtr: number;
  aPtr: number;
  bPtr: number;
  outPtr: number;
  /** DoRA: f32 scratch for the unscaled rows (`rows × cols`), and the magnitudes. */
  yPtr: number;
  magPtr: number;
  dora: boolean;
  row0: number;
  row1: number;
  cols: number;
  rank: number;
  scale: number;
  /** Also measure the rows' change (see {@linkcode blockChangeSums}). */
  change?: boolean;
}

type Kernel = (...args: number[]) => void;

/** What a kernel is specialised for: dtypes, and rank and columns when unrolled. */
export interface KernelKind {
  /** W dtype. */
  wDtype: MergeDType;
  /** Dtype the kernel writes (F32 for DoRA's unscaled rows). */
  kernelOut: MergeDType;
  /** Unrolled for this rank and column count, or generic. */
  unroll: { rank: number; cols: number } | undefined;
}

/** The kernel kind for a request: unrolled up to {@linkcode KERNEL_MAX_UNROLL}. */
export function kernelKind(
  wDtype: MergeDType,
  kernelOut: MergeDType,
  rank: number,
  cols: number,
): KernelKind {
  const unroll = rank > 0 && rank <= KERNEL_MAX_UNROLL && cols >= KERNEL_TILE_COLS
    ? { rank, cols }
    : undefined;
  return { wDtype, kernelOut, unroll };
}

/** Cache key of a kernel kind. */
export function kernelKey(k: KernelKind): string {
  return `${k.wDtype}>${k.kernelOut}${k.unroll ? `:r${k.unroll.rank}:c${k.unroll.cols}` : ""}`;
}

/**
 * Kernels this thread has compiled ({@linkcode compileKernel} calls): what the caches save, which
 * a test can read (results do not show it).
 */
export const kernelsCompiled: { count: number } = { count: 0 };

/** Compiles a kernel kind. */
export function compileKernel(k: KernelKind): WebAssembly.Module {
  kernelsCompiled.count++;
  return new WebAssembly.Module(mergeKernelWasm(k.wDtype, k.kernelOut, k.unroll));
}

/** A per-thread cache of instantiated kernels over one shared memory. */
export class KernelCache {
  #mem: WebAssembly.Memory;
  #kernels = new Map<string, Kernel>();
  constructor(mem: WebAssembly.Memory) {
    this.#mem = mem;
  }
  /** The kernel of `kind`, instantiated from `module` or compiled when absent. */
  get(kind: KernelKind, module?: WebAssembly.Module): Kernel {
    const key = kernelKey(kind);
    let k = this.#kernels.get(key);
    if (!k) {
      if (this.#kernels.size > 64) this.#kernels.clear();
      const mod = module ?? compileKernel(kind);
      const inst = new WebAssembly.Instance(mod, { env: { mem: this.#mem } });
      k = inst.exports.run as Kernel;
      this.#kernels.set(key, k);
    }
    return k;
  }
}

const fr = Math.fround;

const CHUNK = 4096;
const scratchW = new Float32Array(CHUNK);
const scratchO = new Float32Array(CHUNK);

/** Elements `[at, at + n)` of `dtype` at byte `ptr` of `buf`, as f32 in `out`. */
function decodeAt(
  buf: ArrayBuffer,
  ptr: number,
  dtype: MergeDType,
  at: number,
  n: number,
  out: Float32Array,
): Float32Array {
  if (dtype === "F32") return new Float32Array(buf, ptr + at * 4, n);
  const u = new Uint16Array(buf, ptr + at * 2, n);
  if (dtype === "BF16") {
    const bits = new Uint32Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) bits[i] = u[i]! << 16;
  } else for (let i = 0; i < n; i++) out[i] = f16ToF32(u[i]!);
  return out;
}

const tables: Partial<Record<"BF16" | "F16", Float32Array>> = {};

/** Every 16-bit pattern of `dtype` as f32 (256 KiB, made once per thread). */
function table(dtype: "BF16" | "F16"): Float32Array {
  let tab = tables[dtype];
  if (!tab) {
    tab = new Float32Array(65536);
    if (dtype === "BF16") {
      const bits = new Uint32Array(tab.buffer);
      for (let i = 0; i < 65536; i++) bits[i] = i << 16;
    } else for (let i = 0; i < 65536; i++) tab[i] = f16ToF32(i);
    tables[dtype] = tab;
  }
  return tab;
}

/** The bf16 sums kernel of each memory (this thread's instance). */
const changeKernels = new WeakMap<WebAssembly.Memory, (...args: number[]) => number[]>();

function changeKernel(mem: WebAssembly.Memory): (...args: number[]) => number[] {
  let k = changeKernels.get(mem);
  if (!k) {
    const inst = new WebAssembly.Instance(new WebAssembly.Module(changeSumsWasm()), {
      env: { mem },
    });
    k = inst.exports.run as (...args: number[]) => number[];
    changeKernels.set(mem, k);
  }
  return k;
}

/**
 * {@linkcode blockChangeSums} of 16-bit W and W': bf16 pairs through the SIMD kernel
 * (`change_kernel.ts`) 8 elements at a time, the rest (and f16) in one pass with table lookups,
 * two sums each.
 */
function changeSums16(
  mem: WebAssembly.Memory,
  buf: ArrayBuffer,
  t: CpuTask,
  tw: Float32Array,
  to: Float32Array,
) {
  const end = t.row1 * t.cols;
  const wu = new Uint16Array(buf, t.wPtr, end);
  const ou = new Uint16Array(buf, t.outPtr, end);
  let sw0 = 0, sw1 = 0, sd0 = 0, sd1 = 0, max = 0;
  let i = t.row0 * t.cols;
  if (t.wDtype === "BF16" && t.outDtype === "BF16") {
    const groups = Math.floor((end - i) / 8);
    if (groups > 0) {
      const r = changeKernel(mem)(t.wPtr + i * 2, t.outPtr + i * 2, groups);
      sw0 = r[0]!;
      sw1 = r[1]!;
      sd0 = r[2]!;
      sd1 = r[3]!;
      if (r[4]! > max) max = r[4]!;
      if (r[5]! > max) max = r[5]!;
      i += groups * 8;
    }
  }
  for (; i + 1 < end; i += 2) {
    const x0 = tw[wu[i]!]!, x1 = tw[wu[i + 1]!]!;
    const d0 = to[ou[i]!]! - x0, d1 = to[ou[i + 1]!]! - x1;
    sw0 += x0 * x0;
    sw1 += x1 * x1;
    sd0 += d0 * d0;
    sd1 += d1 * d1;
    const a0 = Math.abs(d0), a1 = Math.abs(d1);
    if (a0 > max) max = a0;
    if (a1 > max) max = a1;
  }
  if (i < end) {
    const x = tw[wu[i]!]!, d = to[ou[i]!]! - x;
    sw0 += x * x;
    sd0 += d * d;
    if (Math.abs(d) > max) max = Math.abs(d);
  }
  return { sumSqW: sw0 + sw1, sumSqDelta: sd0 + sd1, maxAbs: max };
}

/** Σ W², Σ (W' − W)² and max |W' − W| over the task's rows (W at `wPtr`, W' at `outPtr`). */
export function blockChangeSums(mem: WebAssembly.Memory, t: CpuTask): MergeChangeSums {
  const buf = mem.buffer as unknown as ArrayBuffer;
  if (t.wDtype !== "F32" && t.outDtype !== "F32") {
    return changeSums16(mem, buf, t, table(t.wDtype), table(t.outDtype));
  }
  let sw = 0, sd = 0, max = 0;
  const end = t.row1 * t.cols;
  for (let at = t.row0 * t.cols; at < end; at += CHUNK) {
    const n = Math.min(CHUNK, end - at);
    const w = decodeAt(buf, t.wPtr, t.wDtype, at, n, scratchW);
    const o = decodeAt(buf, t.outPtr, t.outDtype, at, n, scratchO);
    for (let i = 0; i < n; i++) {
      const x = w[i]!;
      const d = o[i]! - x;
      sw += x * x;
      sd += d * d;
      const ad = Math.abs(d);
      if (ad > max) max = ad;
    }
  }
  return { sumSqW: sw, sumSqDelta: sd, maxAbs: max };
}

/** Runs one task: SIMD kernel, scalar tail, DoRA scaling. */
export function runCpuTask(
  mem: WebAssembly.Memory,
  cache: KernelCache,
  t: CpuTask,
  module?: WebAssembly.Module,
): MergeChangeSums | undefined {
  // another thread may have grown the shared memory: grow(0) refreshes this thread's view of it
  mem.grow(0);
  const kernelOut: MergeDType = t.dora ? "F32" : t.outDtype;
  const kernel = cache.get(kernelKind(t.wDtype, kernelOut, t.rank, t.cols), module);
  const colsVec = t.cols - (t.cols % KERNEL_TILE_COLS);
  const dst = t.dora ? t.yPtr : t.outPtr;
  const s = fr(t.scale);
  if (colsVec > 0) {
    // rank 0: the kernel's acc is -0 and s·(-0) with s = 1 adds -0, which leaves every w as it is
    kernel(
      t.wPtr,
      t.aPtr,
      t.bPtr,
      dst,
      t.row0,
      t.row1,
      t.cols,
      colsVec,
      t.rank,
      t.rank === 0 ? 1 : s,
    );
  }
  const buf = mem.buffer as unknown as ArrayBuffer;
  const { cols, rank } = t;
  const outBytes = new Uint8Array(buf, t.outPtr);
  if (colsVec < cols) {
    // A's tail columns follow its packed tiles as a row-major rank × (cols - colsVec) matrix
    const tc = cols - colsVec;
    const a = new Float32Array(buf, t.aPtr + colsVec * rank * 4, rank * tc);
    const tail = new Float32Array(tc);
    const wsz = MERGE_DTYPE_SIZE[t.wDtype];
    const w = new DataView(buf, t.wPtr);
    const b = new Float32Array(buf, t.bPtr);
    const y = t.dora ? new Float32Array(buf, t.yPtr) : undefined;
    for (let i = t.row0; i < t.row1; i++) {
      for (let j = colsVec; j < cols; j++) {
        const e = i * cols + j;
        const wv = t.wDtype === "F32"
          ? w.getFloat32(e * 4, true)
          : t.wDtype === "BF16"
          ? bf16ToF32(w.getUint16(e * wsz, true))
          : f16ToF32(w.getUint16(e * wsz, true));
        let v = wv;
        if (rank > 0) {
          const at = j - colsVec;
          let acc = fr(b[i * rank]! * a[at]!);
          for (let k = 1; k < rank; k++) acc = fr(acc + fr(b[i * rank + k]! * a[k * tc + at]!));
          v = fr(wv + fr(s * acc));
        }
        if (y) y[e] = v;
        else tail[j - colsVec] = v;
      }
      if (!y) encodeMergedRow(t.outDtype, tail, outBytes, i * cols + colsVec);
    }
  }
  if (t.dora) {
    const mag = new Float32Array(buf, t.magPtr);
    for (let i = t.row0; i < t.row1; i++) {
      const row = new Float32Array(buf, t.yPtr + i * cols * 4, cols);
      const norm = fr(Math.sqrt(doraSumOfSquares(row)));
      const f = fr(mag[i]! / norm);
      for (let j = 0; j < cols; j++) row[j] = fr(f * row[j]!);
      encodeMergedRow(t.outDtype, row, outBytes, i * cols);
    }
  }
  return t.change ? blockChangeSums(mem, t) : undefined;
}
