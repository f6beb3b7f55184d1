/**
 * The scalar CPU reference of the merge: the definition of ckpt's merge numerics, which every
 * backend (WebAssembly SIMD workers, the WGSL kernel) reproduces bit for bit.
 *
 * ## Numerics (the decision)
 * All arithmetic is IEEE binary32 with round-to-nearest-even after every operation and no fused
 * multiply-add; subnormals are kept (never flushed). With `s = f32(scale)`:
 *
 * 1. `acc = B[i,0]·A[0,j]`, then for `k = 1 … r-1`: `acc = acc + B[i,k]·A[k,j]` (in this order,
 *    each product and each sum rounded to f32). With `r = 0`, `y = W[i,j]` (step 2 skipped).
 * 2. `y = f32(W[i,j]) + s·acc` (the product rounded, then the sum rounded).
 * 3. DoRA (`magnitude` given): `q_t = Σ y_j²` over `j ≡ t (mod 256)` ascending for `t < 256`, then a
 *    pairwise tree `q_t += q_{t+h}` for `h = 128, 64, …, 1`; `norm = sqrt(q_0)`,
 *    `f = m_i / norm`, `y = f·y` (each rounded to f32; no epsilon, like PEFT: a zero row gives NaN).
 * 4. One round-to-nearest-even into `outDtype` with `formats/dtype.ts` (overflow to Inf,
 *    subnormals kept). A NaN result is written as the canonical NaN of the output dtype:
 *    BF16 `0xFFFF` (what torch writes), F16 `0x7E00`, F32 `0x7FC00000`.
 *
 * This matches PEFT's unsafe merge with fp32 adapters (one rounding at the end) up to the order of
 * the fp32 k-sum.
 *
 * @example Merging one row
 * ```ts
 * import { mergeRowsReference } from "./reference.ts";
 * import assert from "node:assert/strict";
 *
 * const out = mergeRowsReference({
 *   name: "w", wDtype: "F32", outDtype: "F32", rows: 1, cols: 2, rank: 1,
 *   w: new Uint8Array(new Float32Array([1, 2]).buffer),
 *   a: new Float32Array([3, 4]), b: new Float32Array([0.5]), scale: 2,
 * });
 * assert.deepEqual([...new Float32Array(out.buffer)], [4, 6]);
 * ```
 * @module
 */
import { decodeF32, f32ToBf16, f32ToF16 } from "../formats/dtype.ts";
import { MERGE_DTYPE_SIZE, type MergeDType, type MergeRowsRequest } from "./types.ts";
import { validateMergeRequest } from "./validate.ts";

/** Number of partial sums of the DoRA row norm (see the module doc). */
export const DORA_NORM_LANES = 256;

/** Canonical NaN bits written for a NaN result, per output dtype. */
export const MERGE_NAN_BITS: Readonly<Record<MergeDType, number>> = {
  BF16: 0xffff,
  F16: 0x7e00,
  F32: 0x7fc00000,
};

const fr = Math.fround;

/**
 * Sum of squares of `y` in the canonical DoRA order (256 strided partial sums, then a pairwise
 * tree), in f32.
 */
export function doraSumOfSquares(y: Float32Array): number {
  const q = new Float32Array(DORA_NORM_LANES);
  for (let j = 0; j < y.length; j++) {
    const v = y[j]!;
    const t = j & (DORA_NORM_LANES - 1);
    q[t] = fr(q[t]! + fr(v * v));
  }
  for (let h = DORA_NORM_LANES >> 1; h >= 1; h >>= 1) {
    for (let t = 0; t < h; t++) q[t] = fr(q[t]! + q[t + h]!);
  }
  return q[0]!;
}

/**
 * Writes f32 `values` into `out` (a byte view) as `dtype`, one RNE rounding each, canonical NaNs.
 * `offset` is in elements.
 */
export function encodeMergedRow(
  dtype: MergeDType,
  values: Float32Array,
  out: Uint8Array,
  offset: number,
): void {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const nan = MERGE_NAN_BITS[dtype];
  if (dtype === "F32") {
    for (let j = 0; j < values.length; j++) {
      const v = values[j]!;
      const at = (offset + j) * 4;
      if (v !== v) dv.setUint32(at, nan, true);
      else dv.setFloat32(at, v, true);
    }
    return;
  }
  const enc = dtype === "BF16" ? f32ToBf16 : f32ToF16;
  for (let j = 0; j < values.length; j++) {
    const v = values[j]!;
    dv.setUint16((offset + j) * 2, v !== v ? nan : enc(v), true);
  }
}

/**
 * Merges a block of rows with plain scalar JavaScript, exactly as the module doc defines; the
 * reference every other backend is tested against (slow: about 20 million weights per second at
 * rank 16). Validates the request first (`MERGE_SHAPE`, `MERGE_DTYPE`, `MERGE_SCALE`).
 */
export function mergeRowsReference(req: MergeRowsRequest): Uint8Array {
  validateMergeRequest(req);
  const { rows, cols, rank, a, b, magnitude } = req;
  const s = fr(req.scale);
  const wsize = MERGE_DTYPE_SIZE[req.wDtype];
  const out = new Uint8Array(rows * cols * MERGE_DTYPE_SIZE[req.outDtype]);
  const y = new Float32Array(cols);
  for (let i = 0; i < rows; i++) {
    const wRow = decodeF32(
      req.wDtype,
      req.w.subarray(i * cols * wsize, (i + 1) * cols * wsize),
    );
    for (let j = 0; j < cols; j++) {
      if (rank === 0) {
        y[j] = wRow[j]!;
        continue;
      }
      let acc = fr(b[i * rank]! * a[j]!);
      for (let k = 1; k < rank; k++) acc = fr(acc + fr(b[i * rank + k]! * a[k * cols + j]!));
      y[j] = fr(wRow[j]! + fr(s * acc));
    }
    if (magnitude !== undefined) {
      const norm = fr(Math.sqrt(doraSumOfSquares(y)));
      const f = fr(magnitude[i]! / norm);
      for (let j = 0; j < cols; j++) y[j] = fr(f * y[j]!);
    }
    encodeMergedRow(req.outDtype, y, out, i * cols);
  }
  return out;
}
