/**
 * The "one rounding, to the final dtype" check of merged tensors against float64: every element
 * must be the float64 result rounded once (round to nearest even) into the output dtype, where
 * "the float64 result" may move by the f32-accumulation bound of the merge (`kernels/reference.ts`
 * computes products and sums in f32). Formally `RNE(exact − slack) ≤ got ≤ RNE(exact + slack)`;
 * away from rounding boundaries both ends agree and `got` must equal `RNE(exact)`.
 * @module
 */
import { decodeF32 } from "../../formats/dtype.ts";
import { classifyAdapterKey, loadAdapter } from "../../formats/peft.ts";
import { resolveModuleScaling } from "../../formats/peft_config.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import type { MergeDType } from "../../kernels/types.ts";
import { openModelWeights } from "../../pipelines/verify.ts";

const FORMATS: Record<MergeDType, { p: number; emin: number; max: number }> = {
  BF16: { p: 8, emin: -126, max: (2 - 2 ** -7) * 2 ** 127 },
  F16: { p: 11, emin: -14, max: 65504 },
  F32: { p: 24, emin: -126, max: (2 - 2 ** -23) * 2 ** 127 },
};

/** `x` (a float64) rounded once, to nearest even, into `dtype` (subnormals kept, overflow to ±Inf). */
export function roundOnce(x: number, dtype: MergeDType): number {
  if (!Number.isFinite(x) || x === 0) return x;
  if (dtype === "F32") return Math.fround(x); // ECMAScript: roundTiesToEven
  const { p, emin, max } = FORMATS[dtype];
  const ax = Math.abs(x);
  let e = Math.floor(Math.log2(ax));
  if (2 ** e > ax) e--;
  else if (2 ** (e + 1) <= ax) e++;
  const q = 2 ** (Math.max(e, emin) - p + 1);
  const r = ax / q; // exact: q is a power of two
  let n = Math.floor(r);
  const frac = r - n;
  if (frac > 0.5 || (frac === 0.5 && n % 2 === 1)) n++;
  const y = n * q;
  return Math.sign(x) * (y > max ? Infinity : y);
}

/** One tensor's float64 result and its f32-accumulation bound, element by element. */
export interface Exact {
  /** The exact value (float64). */
  value: Float64Array;
  /** How far the f32 computation may move it before the final rounding. */
  slack: Float64Array;
}

/** The float64 `W + s·B@A` (`W` rows × cols, `A` rank × cols, `B` rows × rank) with its bound. */
export function exactLinear(
  w: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  s: number,
  rows: number,
  cols: number,
  rank: number,
): Exact {
  const value = new Float64Array(rows * cols);
  const slack = new Float64Array(rows * cols);
  const sf = Math.fround(s);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let sum = 0, mag = 0;
      for (let k = 0; k < rank; k++) {
        const p = b[i * rank + k]! * a[k * cols + j]!;
        sum += p;
        mag += Math.abs(p);
      }
      const wv = w[i * cols + j]!;
      value[i * cols + j] = wv + s * sum;
      // rank products and sums, the scale product and the sum with W, each ≤ 2^-24 relative; plus
      // f32(s) ≠ s
      slack[i * cols + j] = (rank + 3) * 2 ** -24 * (Math.abs(wv) + Math.abs(sf) * mag) +
        Math.abs(sf - s) * mag;
    }
  }
  return { value, slack };
}

/** What {@linkcode checkOneRounding} found. */
export interface OneRoundingStats {
  /** Elements checked. */
  elements: number;
  /** Elements away from a rounding boundary (equal to `RNE(exact)` exactly). */
  decided: number;
  /** Largest |got − exact|. */
  maxAbsError: number;
}

/**
 * Throws naming the first element of `got` (decoded output values) that is not `exact` rounded
 * once into `dtype` within its slack.
 */
export function checkOneRounding(
  name: string,
  dtype: MergeDType,
  got: ArrayLike<number>,
  exact: Exact,
): OneRoundingStats {
  const n = exact.value.length;
  if (got.length !== n) throw new Error(`${name}: ${got.length} elements, expected ${n}`);
  let decided = 0, maxAbsError = 0;
  for (let i = 0; i < n; i++) {
    const x = exact.value[i]!, sl = exact.slack[i]!, g = got[i]!;
    const lo = roundOnce(x - sl, dtype), hi = roundOnce(x + sl, dtype);
    if (!(lo <= g && g <= hi)) {
      throw new Error(
        `${name} [${i}] (${dtype}): got ${g}, the float64 result ${x} rounded once is ${
          roundOnce(x, dtype)
        } (allowed [${lo}, ${hi}] with slack ${sl})`,
      );
    }
    if (lo === hi) decided++;
    maxAbsError = Math.max(maxAbsError, Math.abs(g - x));
  }
  return { elements: n, decided, maxAbsError };
}

/** Decoded f32 values of tensor `name` of `sd`. */
async function values(sd: StateDict, name: string): Promise<Float32Array> {
  const r = sd.require(name);
  return decodeF32(r.dtype, await r.read());
}

/**
 * Checks every Linear LoRA module of a merged model folder against the float64 merge of the base
 * and adapter folders: each element of the merged weight is the float64 `W + s·B@A` rounded once
 * into `dtype`. Returns the stats summed over the modules, and their count.
 */
export async function checkFolderOneRounding(
  baseDir: string,
  adapterDir: string,
  outDir: string,
  dtype: MergeDType,
): Promise<OneRoundingStats & { modules: number }> {
  const base = await openModelWeights(baseDir);
  const out = await openModelWeights(outDir);
  const adapter = await loadAdapter(adapterDir);
  const total = { elements: 0, decided: 0, maxAbsError: 0, modules: 0 };
  try {
    for (const key of adapter.tensors.keys()) {
      const c = classifyAdapterKey(key);
      if (c.kind !== "lora_A") continue;
      const [rank, cols] = adapter.tensors.require(key).shape as [number, number];
      const rows = base.require(c.target).shape[0]!;
      const exact = exactLinear(
        await values(base, c.target),
        await values(adapter.tensors, key),
        await values(adapter.tensors, key.replace(".lora_A.", ".lora_B.")),
        resolveModuleScaling(adapter.config, c.module).scale,
        rows,
        cols,
        rank,
      );
      const o = out.require(c.target);
      if (o.dtype !== dtype) throw new Error(`${c.target}: ${o.dtype}, expected ${dtype}`);
      const st = checkOneRounding(c.target, dtype, await values(out, c.target), exact);
      total.elements += st.elements;
      total.decided += st.decided;
      total.maxAbsError = Math.max(total.maxAbsError, st.maxAbsError);
      total.modules++;
    }
  } finally {
    await base.close();
    await out.close();
    await adapter.tensors.close();
  }
  return total;
}
