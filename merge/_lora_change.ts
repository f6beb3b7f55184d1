/**
 * How much a merge changed each weight, measured on the merged blocks as they are produced (no
 * second pass over the weights): per block, Σ W² and Σ (W' − W)² in float64 and the largest
 * |W' − W|, where W is the base weight as stored and W' the merged value as rounded into the
 * output dtype (what a writer writes, what `ckpt diff base merged` compares). A tensor's figures are
 * complete once every row has been read once in one output dtype; a range read twice (a reader
 * that goes back) counts once. Private to `merge/lora_run.ts`.
 * @module
 */
import { decodeF32, type DType, DTYPES } from "../formats/dtype.ts";
import { rowCount } from "../formats/state_dict.ts";
import type { MergeChangeSums } from "../kernels/types.ts";

/** Sums over some blocks of one tensor: the sums the merge backends add to (Σ W², Σ ΔW², max |ΔW|). */
export type BlockChange = MergeChangeSums;

/** Empty sums. */
export function noChange(): BlockChange {
  return { sumSqW: 0, sumSqDelta: 0, maxAbs: 0 };
}

/** Elements decoded at a time (two reused f32 buffers: no allocation per block). */
const CHUNK = 16384;
const scratchW = new Float32Array(CHUNK);
const scratchOut = new Float32Array(CHUNK);

/** Adds one block: `w` (base bytes, `wDtype`) against `out` (merged bytes, `outDtype`). */
export function addBlockChange(
  into: BlockChange,
  wDtype: DType,
  w: Uint8Array,
  outDtype: DType,
  out: Uint8Array,
): void {
  const wSize = DTYPES[wDtype].size, outSize = DTYPES[outDtype].size;
  const n = w.byteLength / wSize;
  let sw = 0, sd = 0, max = into.maxAbs;
  for (let c = 0; c < n; c += CHUNK) {
    const m = Math.min(CHUNK, n - c);
    const a = decodeF32(wDtype, w.subarray(c * wSize, (c + m) * wSize), scratchW);
    const b = decodeF32(outDtype, out.subarray(c * outSize, (c + m) * outSize), scratchOut);
    for (let i = 0; i < m; i++) {
      const x = a[i]!;
      const d = b[i]! - x;
      sw += x * x;
      sd += d * d;
      const ad = Math.abs(d);
      if (ad > max) max = ad;
    }
  }
  into.sumSqW += sw;
  into.sumSqDelta += sd;
  into.maxAbs = max;
}

/** The figures of one fully read merged tensor. */
export interface TensorChange {
  /** Tensor name. */
  tensor: string;
  /** The output dtype the merged values were rounded into. */
  dtype: DType;
  /** The sums. */
  change: BlockChange;
}

/**
 * Collects the block sums of each (tensor, output dtype) by row range and calls `onComplete` once
 * every row is covered.
 */
export class ChangeTracker {
  readonly #onComplete: (c: TensorChange) => void;
  readonly #open = new Map<
    string,
    { ranges: [number, number][]; rows: number; sums: BlockChange }
  >();

  /** A tracker that reports complete tensors to `onComplete`. */
  constructor(onComplete: (c: TensorChange) => void) {
    this.#onComplete = onComplete;
  }

  /** Adds the sums of rows `[s, e)` of `tensor` merged into `dtype`, unless those rows are in. */
  commit(
    tensor: string,
    shape: readonly number[],
    dtype: DType,
    s: number,
    e: number,
    sums: BlockChange,
  ): void {
    if (e <= s) return;
    const key = `${tensor}\0${dtype}`;
    const rows = rowCount(shape);
    let t = this.#open.get(key);
    if (!t) {
      t = { ranges: [], rows: 0, sums: noChange() };
      this.#open.set(key, t);
    }
    if (t.ranges.some(([rs, re]) => s < re && rs < e)) return; // read again: counted already
    t.ranges.push([s, e]);
    t.rows += e - s;
    t.sums.sumSqW += sums.sumSqW;
    t.sums.sumSqDelta += sums.sumSqDelta;
    t.sums.maxAbs = Math.max(t.sums.maxAbs, sums.maxAbs);
    if (t.rows === rows) {
      this.#open.delete(key);
      this.#onComplete({ tensor, dtype, change: t.sums });
    }
  }
}
