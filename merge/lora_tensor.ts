/**
 * `mergeLoraTensor`: one LoRA pair merged into one weight in memory, through `mergeLora`.
 * @module
 */
import type { DType } from "../formats/dtype.ts";
import { StateDict, type TensorRef } from "../formats/state_dict.ts";
import type { LoraLayoutKind } from "./layouts.ts";
import { mergeLora } from "./lora.ts";
import type { MergeLoraOptions } from "./lora_types.ts";

/** Input of {@linkcode mergeLoraTensor}. */
export interface MergeLoraTensorInput {
  /** Base weight. */
  weight: TensorRef;
  /** `lora_A` (`[r, in]`, conv `[r, in, *k]`) or `lora_embedding_A` (`[r, V]`). */
  loraA: TensorRef;
  /** `lora_B` (`[out, r]`, conv `[out, r, 1…]`) or `lora_embedding_B` (`[D, r]`). */
  loraB: TensorRef;
  /** Scaling `s` (e.g. `alpha / r`). */
  scale: number;
  /** Embedding factors (transposed delta). Default false. */
  embedding?: boolean;
  /** Decides square Conv1D weights. Default false. */
  fanInFanOut?: boolean;
  /** DoRA magnitude. */
  magnitude?: TensorRef;
  /** Name for errors and labels. Default `"weight"`. */
  name?: string;
}

/** Result of {@linkcode mergeLoraTensor}. */
export interface MergedTensor {
  /** Output dtype. */
  dtype: DType;
  /** Shape (the weight's). */
  shape: number[];
  /** Merged bytes. */
  data: Uint8Array;
  /** Layout decided. */
  layout: LoraLayoutKind;
  /** Backend that ran. */
  backend: string;
}

/**
 * Merges one LoRA pair into one weight: `W + s·ΔW` in the layout the shapes call for (Linear,
 * Conv1D, Embedding, Conv), optionally DoRA, returning the whole merged tensor in memory. For
 * library users with tensors at hand; whole models go through {@linkcode mergeLora}.
 *
 * @example
 * ```ts
 * import { mergeLoraTensor } from "./lora_tensor.ts";
 * import { tensorFromBytes } from "../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const f32 = (shape: number[], v: number[]) =>
 *   tensorFromBytes("F32", shape, new Uint8Array(new Float32Array(v).buffer));
 * const m = await mergeLoraTensor({
 *   weight: f32([2, 3], [0, 0, 0, 0, 0, 0]),
 *   loraA: f32([1, 2], [1, 2]), // Conv1D: weight is [in=2, out=3]
 *   loraB: f32([3, 1], [1, 10, 100]),
 *   scale: 1,
 * }, { backend: "cpu" });
 * assert.equal(m.layout, "conv1d");
 * assert.deepEqual([...new Float32Array(m.data.buffer, m.data.byteOffset, 6)], [1, 10, 100, 2, 20, 200]);
 * ```
 */
export async function mergeLoraTensor(
  input: MergeLoraTensorInput,
  options: Pick<MergeLoraOptions, "backend" | "safe" | "outDtype" | "blockBytes"> = {},
): Promise<MergedTensor> {
  const name = input.name ?? "weight";
  const module = name.endsWith(".weight") ? name.slice(0, -".weight".length) : name;
  const r = input.loraA.shape[0] ?? 0;
  const tensors = new StateDict([
    [`${module}.${input.embedding ? "lora_embedding_A" : "lora_A.weight"}`, input.loraA],
    [`${module}.${input.embedding ? "lora_embedding_B" : "lora_B.weight"}`, input.loraB],
  ]);
  if (input.magnitude) tensors.set(`${module}.lora_magnitude_vector`, input.magnitude);
  const config = {
    peft_type: "LORA",
    r,
    lora_alpha: r,
    use_rslora: false,
    rank_pattern: {},
    alpha_pattern: {},
    fan_in_fan_out: input.fanInFanOut ?? false,
    target_modules: null,
    modules_to_save: null,
    bias: "none" as const,
    lora_bias: false,
    use_dora: input.magnitude !== undefined,
    trainable_token_indices: null,
    init_lora_weights: true,
  };
  const base = new StateDict([[`${module}.weight`, input.weight]]);
  // weight 1 × scale 1 (alpha = r) × input.scale through the adapter weight keeps s exact.
  const { stateDict, report } = await mergeLora(
    base,
    [{ name: "lora", config, tensors, weight: input.scale }],
    options,
  );
  try {
    const ref = stateDict.require(`${module}.weight`);
    const data = await ref.read();
    return {
      dtype: ref.dtype,
      shape: [...ref.shape],
      data,
      layout: report.modules[0]!.layout,
      backend: report.backend?.description ?? "none",
    };
  } finally {
    await stateDict.close();
  }
}
