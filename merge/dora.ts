/**
 * DoRA (weight-decomposed LoRA) merge math, as PEFT's `DoraLinearVariant` / `DoraEmbeddingVariant`
 * merge it (reference §1.8): `W' = (m / ‖W + ΔW‖) ⊙ (W + ΔW)`, computed in f32 and rounded once.
 *
 * - Linear and Conv (`W[out, …]`): one norm per **output row** over the rest of the row. Row-local,
 *   so it streams in one pass; the backends do it (`MergeRowsRequest.magnitude`).
 * - Embedding (`W[V, D]`) and Conv1D-layout (`W[in, out]`): one norm per **column** over all rows.
 *   Two passes: the first streams every row block through the backend into f32 to sum the column
 *   squares (accumulated in f64, the norm rounded to f32 like torch's fp32 `linalg.norm`), the second
 *   recomputes each block in f32, multiplies by `f32(m_j / norm_j)` and rounds once.
 *
 * No epsilon is added (PEFT adds none): a zero column or row gives Inf/NaN, which `safe` refuses.
 *
 * @example Column factors
 * ```ts
 * import { ColumnNorms } from "./dora.ts";
 * import assert from "node:assert/strict";
 *
 * const norms = new ColumnNorms(2);
 * norms.add(new Float32Array([3, 1, 4, 1]), 2); // rows [3, 1] and [4, 1]
 * const f = norms.factors(new Float32Array([10, 2]));
 * assert.deepEqual([...f], [2, Math.fround(2 / Math.fround(Math.SQRT2))]);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";

/** Which DoRA norm a module needs. */
export type DoraMode = "row" | "column";

/** The DoRA mode of a layout: per row for Linear/Conv, per column for transposed layouts. */
export function doraModeFor(transposed: boolean): DoraMode {
  return transposed ? "column" : "row";
}

/**
 * Checks a magnitude vector's element count against the rows (row mode) or columns (column mode)
 * of the weight: `LORA_DORA` otherwise, naming the module and both shapes.
 */
export function checkMagnitude(
  module: string,
  mode: DoraMode,
  magnitudeShape: readonly number[],
  weightShape: readonly number[],
  rows: number,
  cols: number,
): void {
  const n = magnitudeShape.reduce((p, d) => p * d, 1);
  const want = mode === "row" ? rows : cols;
  if (n !== want) {
    throw new CkptError(
      "LORA_DORA",
      `Cannot merge "${module}": DoRA magnitude [${
        magnitudeShape.join(", ")
      }] has ${n} values, the ${mode === "row" ? "rows" : "columns"} of weight [${
        weightShape.join(", ")
      }] need ${want}`,
      { tensor: `${module}.weight`, details: { module, magnitude: [...magnitudeShape] } },
    );
  }
}

/** Accumulates column sums of squares over row blocks of f32 values (first DoRA pass). */
export class ColumnNorms {
  #sums: Float64Array;
  /** Columns. */
  readonly cols: number;

  /** Starts empty sums for `cols` columns. */
  constructor(cols: number) {
    this.cols = cols;
    this.#sums = new Float64Array(cols);
  }

  /** Adds `rows` rows (`rows × cols` f32 values, row-major). */
  add(values: Float32Array, rows: number): void {
    const s = this.#sums;
    const c = this.cols;
    for (let i = 0; i < rows; i++) {
      const o = i * c;
      for (let j = 0; j < c; j++) {
        const v = values[o + j]!;
        s[j] = s[j]! + v * v;
      }
    }
  }

  /** `f32(m_j / f32(sqrt(sum_j)))` for every column. */
  factors(magnitude: Float32Array): Float32Array {
    const out = new Float32Array(this.cols);
    for (let j = 0; j < this.cols; j++) {
      out[j] = Math.fround(magnitude[j]! / Math.fround(Math.sqrt(this.#sums[j]!)));
    }
    return out;
  }
}

/** Multiplies each of `rows` rows of `values` by the column factors in place, rounding to f32. */
export function applyColumnFactors(
  values: Float32Array,
  rows: number,
  factors: Float32Array,
): void {
  const c = factors.length;
  for (let i = 0; i < rows; i++) {
    const o = i * c;
    for (let j = 0; j < c; j++) values[o + j] = Math.fround(factors[j]! * values[o + j]!);
  }
}
