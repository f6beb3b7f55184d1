/**
 * Which way a LoRA delta lies on its base weight, decided from shapes (reference §1.3–§1.5):
 *
 * - `linear`: `nn.Linear` `W[out, in]`, `A[r, in]`, `B[out, r]`: `ΔW = s·B@A`.
 * - `conv1d`: transformers `Conv1D` stores `W[in, out]`: `ΔW = s·(B@A)ᵀ`. Decided by shape; the
 *   config's `fan_in_fan_out` only decides square matrices (PEFT mutates that flag per module type,
 *   so the saved value is unreliable).
 * - `embedding`: `W[V, D]`, `lora_embedding_A[r, V]`, `lora_embedding_B[D, r]`: `ΔW = s·(B@A)ᵀ`.
 * - `conv`: `ConvNd` `W[out, in, *k]`, `A[r, in, *k]`, `B[out, r, 1…]`: `ΔW[o, (i,k)] = s·Σ B[o,r]·A[r,(i,k)]`,
 *   i.e. a Linear on the flattened trailing dims. `groups > 1` is refused (PEFT raises too).
 *
 * Every layout is handed to the backends as the one row-major form of `kernels/types.ts`: rows of the
 * stored weight, an `a` of `rank × cols` and `b` rows of `rows × rank`. For transposed layouts the
 * small factors swap roles: `a = Bᵀ`, `b = Aᵀ`.
 *
 * @example Deciding a GPT-2 `c_attn` (Conv1D) layout
 * ```ts
 * import { planLayout } from "./layouts.ts";
 * import assert from "node:assert/strict";
 *
 * const p = planLayout({
 *   module: "transformer.h.0.attn.c_attn", factorKind: "lora",
 *   weightShape: [768, 2304], aShape: [8, 768], bShape: [2304, 8], fanInFanOut: false,
 * });
 * assert.deepEqual([p.layout, p.transposed, p.rows, p.cols, p.rank], ["conv1d", true, 768, 2304, 8]);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { numel } from "../formats/state_dict.ts";

/** The layout kinds. */
export type LoraLayoutKind = "linear" | "conv1d" | "embedding" | "conv";

/** A decided layout. */
export interface LoraLayout {
  /** Kind. */
  layout: LoraLayoutKind;
  /** True when `ΔW` is `(B@A)ᵀ` in the stored layout (`a = Bᵀ`, `b = Aᵀ`). */
  transposed: boolean;
  /** Rows of the stored weight (dim 0). */
  rows: number;
  /** Elements per stored row. */
  cols: number;
  /** Rank r. */
  rank: number;
}

/** Input of {@linkcode planLayout}. */
export interface PlanLayoutInput {
  /** Module path, for errors. */
  module: string;
  /** `lora` for `lora_A/lora_B`, `embedding` for `lora_embedding_A/B`. */
  factorKind: "lora" | "embedding";
  /** Base weight shape. */
  weightShape: readonly number[];
  /** Shape of A. */
  aShape: readonly number[];
  /** Shape of B. */
  bShape: readonly number[];
  /** Config flag, used for square 2-D weights only. */
  fanInFanOut: boolean;
}

function fmt(s: readonly number[]): string {
  return `[${s.join(", ")}]`;
}

function eq(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function shapeError(input: PlanLayoutInput, why: string): CkptError {
  const { module, weightShape, aShape, bShape } = input;
  return new CkptError(
    "LORA_SHAPE",
    `Cannot merge "${module}": ${why} (weight ${fmt(weightShape)}, lora_A ${fmt(aShape)}, lora_B ${
      fmt(bShape)
    })`,
    {
      tensor: `${module}.weight`,
      details: { module, weight: [...weightShape], a: [...aShape], b: [...bShape] },
    },
  );
}

/**
 * Decides the layout of a LoRA pair on its base weight from the three shapes, or throws
 * `LORA_SHAPE` (shapes that do not fit, naming the module and the shapes) or `LORA_CONV_GROUPS`
 * (a grouped convolution, which PEFT cannot merge either).
 */
export function planLayout(input: PlanLayoutInput): LoraLayout {
  const { weightShape: w, aShape: a, bShape: b } = input;
  if (input.factorKind === "embedding") {
    if (a.length !== 2 || b.length !== 2 || w.length !== 2) {
      throw shapeError(input, "embedding factors and weight must be 2-D");
    }
    const [r, v] = a as [number, number];
    const [d, rb] = b as [number, number];
    if (r !== rb) {
      throw shapeError(input, `rank of lora_embedding_A (${r}) ≠ lora_embedding_B (${rb})`);
    }
    if (!eq(w, [v, d])) throw shapeError(input, `expected weight [${v}, ${d}]`);
    return { layout: "embedding", transposed: true, rows: v, cols: d, rank: r };
  }
  if (a.length < 2 || b.length < 2) throw shapeError(input, "factors must have at least 2 dims");
  const r = a[0]!;
  if (w.length === 2) {
    if (a.length !== 2 || b.length !== 2) throw shapeError(input, "2-D weight needs 2-D factors");
    if (b[1] !== r) throw shapeError(input, `rank of lora_A (${r}) ≠ lora_B (${b[1]})`);
    const out = b[0]!;
    const inn = a[1]!;
    const linear = eq(w, [out, inn]);
    const conv1d = eq(w, [inn, out]);
    if (linear && (!conv1d || !input.fanInFanOut)) {
      return { layout: "linear", transposed: false, rows: out, cols: inn, rank: r };
    }
    if (conv1d) return { layout: "conv1d", transposed: true, rows: inn, cols: out, rank: r };
    throw shapeError(
      input,
      `expected weight [${out}, ${inn}] (Linear) or [${inn}, ${out}] (Conv1D)`,
    );
  }
  if (w.length < 3) throw shapeError(input, "weight must be 2-D or a convolution kernel");
  if (a.length !== w.length || b.length !== w.length) {
    throw shapeError(input, "convolution factors must have as many dims as the weight");
  }
  if (b.slice(2).some((k) => k !== 1)) throw shapeError(input, "lora_B kernel must be 1×…×1");
  if (w[0] !== b[0]) throw shapeError(input, `out channels ${w[0]} ≠ lora_B ${b[0]}`);
  if (!eq(a.slice(2), w.slice(2))) {
    throw shapeError(input, "kernel sizes of lora_A and weight differ");
  }
  const groupsFromIn = w[1]! !== a[1]! && a[1]! % w[1]! === 0 ? a[1]! / w[1]! : 1;
  const groupsFromB = b[1]! !== r && r % b[1]! === 0 ? r / b[1]! : 1;
  if (groupsFromIn > 1 || groupsFromB > 1) {
    const groups = Math.max(groupsFromIn, groupsFromB);
    throw new CkptError(
      "LORA_CONV_GROUPS",
      `Cannot merge "${input.module}": convolution with groups=${groups} (weight ${
        fmt(w)
      }, lora_A ${fmt(a)}, lora_B ${fmt(b)}); PEFT cannot merge grouped convolutions either`,
      { tensor: `${input.module}.weight`, details: { module: input.module, groups } },
    );
  }
  if (w[1] !== a[1]) throw shapeError(input, `in channels ${w[1]} ≠ lora_A ${a[1]}`);
  if (b[1] !== r) throw shapeError(input, `rank of lora_A (${r}) ≠ lora_B (${b[1]})`);
  return { layout: "conv", transposed: false, rows: w[0]!, cols: numel(w.slice(1)), rank: r };
}

/**
 * The backend's `a` (`rank × cols`) from decoded f32 factors: A itself (flattened) for
 * non-transposed layouts, `Bᵀ` for transposed ones.
 */
export function factorA(layout: LoraLayout, a: Float32Array, b: Float32Array): Float32Array {
  if (!layout.transposed) return a;
  const { rank, cols } = layout;
  const out = new Float32Array(rank * cols);
  // b is [cols, rank] (B of [out, r] for Conv1D, [D, r] for Embedding).
  for (let j = 0; j < cols; j++) {
    for (let k = 0; k < rank; k++) out[k * cols + j] = b[j * rank + k]!;
  }
  return out;
}

/**
 * The backend's full `b` (`rows × rank`): B itself for non-transposed layouts, `Aᵀ` for transposed
 * ones (A is `[rank, rows]`).
 */
export function factorB(layout: LoraLayout, a: Float32Array, b: Float32Array): Float32Array {
  if (!layout.transposed) return b;
  const { rank, rows } = layout;
  const out = new Float32Array(rows * rank);
  for (let k = 0; k < rank; k++) {
    for (let i = 0; i < rows; i++) out[i * rank + k] = a[k * rows + i]!;
  }
  return out;
}
