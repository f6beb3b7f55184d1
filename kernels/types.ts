/**
 * The contract between the LoRA semantics (which tensors, which factors, which scale) and the merge
 * backends (WebGPU and CPU) that do the arithmetic. A backend merges row blocks:
 *
 *   out[i, j] = round_outDtype( f32(W[i, j]) + scale · Σ_k B[i, k] · A[k, j] )
 *
 * in f32 with one round-to-nearest-even into `outDtype`; with `magnitude` (DoRA, per output row)
 * the row is then multiplied by `magnitude[i] / ‖row_i‖₂` before the single rounding.
 * Transposed layouts (Conv1D, Embedding) are expressed by the caller by swapping and transposing
 * the (small) factors, so backends only ever see this one layout.
 * @module
 */
import { type DType, DTYPES } from "../formats/dtype.ts";

/** Float dtypes a merge reads and writes. */
export type MergeDType = Extract<DType, "BF16" | "F16" | "F32">;

/** The merge dtypes, in the order errors list them. */
export const MERGE_DTYPES: readonly MergeDType[] = ["BF16", "F16", "F32"];

/** Bytes per element of each merge dtype (from the dtype table, `formats/dtype.ts`). */
export const MERGE_DTYPE_SIZE: Readonly<Record<MergeDType, number>> = {
  BF16: DTYPES.BF16.size,
  F16: DTYPES.F16.size,
  F32: DTYPES.F32.size,
};

/** True when `d` is one of the {@linkcode MERGE_DTYPES}. */
export function isMergeDType(d: unknown): d is MergeDType {
  return typeof d === "string" && (MERGE_DTYPES as readonly string[]).includes(d);
}

/** One block of rows to merge. */
export interface MergeRowsRequest {
  /** Tensor name, for errors and labels. */
  name: string;
  /** Base rows: `rows × cols` elements of `wDtype`, little-endian, contiguous. */
  w: Uint8Array;
  /** Dtype of `w`. */
  wDtype: MergeDType;
  /** Dtype of the result. */
  outDtype: MergeDType;
  /** Rows in this block. */
  rows: number;
  /** Columns (elements per row). */
  cols: number;
  /** Rank r (may be the concatenation of several adapters' ranks). */
  rank: number;
  /** A factor, `rank × cols`, f32 (the whole A; identical for every block of a tensor). */
  a: Float32Array;
  /** B rows for this block, `rows × rank`, f32 (per-adapter weight × scaling may be folded in). */
  b: Float32Array;
  /** Scaling s applied to B·A (alpha/r, alpha/sqrt(r) for rsLoRA, times the adapter weight). */
  scale: number;
  /** DoRA magnitude per row of this block (`rows` values), or undefined for plain LoRA. */
  magnitude?: Float32Array;
}

/** How much a merge changed some weights: Σ W², Σ (W' − W)², max |W' − W| (W and W' as f32). */
export interface MergeChangeSums {
  /** Σ W². */
  sumSqW: number;
  /** Σ (W' − W)². */
  sumSqDelta: number;
  /** max |W' − W|. */
  maxAbs: number;
}

/** A block of rows whose W the backend has read into its own memory (see `mergeRowsInto`). */
export interface MergeRowsIntoRequest extends Omit<MergeRowsRequest, "w"> {
  /**
   * When given, the backend adds this block's sums to it: W as read, W' the result rounded into
   * `outDtype`, both decoded to f32, the sums in f64 (where the block is merged, so no thread
   * copies or decodes the block again to measure it).
   */
  change?: MergeChangeSums;
  /**
   * Reads the block's W (`rows × cols` elements of `wDtype`) into `into`, which has exactly that
   * many bytes; resolves to the bytes read: `into` itself, or another buffer that is copied in.
   */
  readW(into: Uint8Array): Promise<Uint8Array>;
}

/** A merge backend: the arithmetic, nothing about files or PEFT. */
export interface MergeBackend {
  /** Which backend this is, for reports. */
  readonly kind: "webgpu" | "cpu";
  /** Human-readable detail (adapter description, worker count). */
  readonly description: string;
  /** Merges one block; resolves to `rows × cols` elements of `outDtype`. Concurrent calls are allowed
   * (the WebGPU backend overlaps upload, compute and read-back of calls in flight). */
  mergeRows(req: MergeRowsRequest): Promise<Uint8Array>;
  /**
   * Optional, the streaming form of {@linkcode MergeBackend.mergeRows}: the backend has `req.readW`
   * read the block's W straight into its own memory and writes the result into `out` (exactly
   * `rows × cols` elements of `outDtype`), so a block costs no fresh buffers and no extra copies.
   * Resolves to `out`. Same arithmetic and errors as `mergeRows`.
   */
  mergeRowsInto?(req: MergeRowsIntoRequest, out: Uint8Array): Promise<Uint8Array>;
  /** Releases GPU objects / workers. */
  dispose(): Promise<void>;
}
