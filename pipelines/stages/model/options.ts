/**
 * The writeModel options: the schema a config entry is checked against, and the same options as
 * the documented type library users write.
 * @module
 */
import { z } from "zod";
import type { Same } from "../_options.ts";

/** The writeModel options schema (unknown keys rejected). */
export const writeModelOptions = z.strictObject({
  /** `"model"` (merged weights, default) or `"adapter"` (adapter only). */
  what: z.enum(["model", "adapter"]).default("model"),
  /** `"safetensors"` (default) or `"bin"` (pytorch_model.bin). */
  format: z.enum(["safetensors", "bin"]).default("safetensors"),
  /** Largest shard (`"5GB"`, `"500MB"`, bytes). Default `"5GB"` as transformers 4.x. */
  maxShardSize: z.union([z.string().min(1), z.number().int().positive()]).default("5GB"),
  /** Output dtype of floating-point tensors (`bfloat16`, `float16`, `float32`, ...). Default: kept. */
  dtype: z.string().min(1).optional(),
  /** Tied embeddings: `"auto"` (transformers' rule, default), `"keep-both"`, `"drop"` (drop lm_head, must be equal). */
  tied: z.enum(["auto", "keep-both", "drop"]).default("auto"),
  /** Write `config.json` (default true when the model has one). */
  config: z.boolean().default(true),
  /** Adapter mode: adapter folder or weights file (default: the run's adapter folder). */
  adapter: z.string().min(1).optional(),
  /** Adapter mode, PEFT-wrapped weights: LoRA rank. */
  r: z.number().int().positive().optional(),
  /** Adapter mode, PEFT-wrapped weights: LoRA alpha. */
  alpha: z.number().positive().optional(),
  /** Adapter mode, generated config: `base_model_name_or_path`. */
  baseModel: z.string().optional(),
});

/** Options of the writeModel stage, as a config writes them (the schema's input type). */
export interface WriteModelOptions {
  /** `"model"` (merged weights, default) or `"adapter"` (the adapter alone). */
  what?: "model" | "adapter" | undefined;
  /** `"safetensors"` (default) or `"bin"` (pytorch_model.bin). */
  format?: "safetensors" | "bin" | undefined;
  /** Largest shard (`"5GB"`, `"500MB"`, or bytes). Default `"5GB"` as transformers 4.x. */
  maxShardSize?: string | number | undefined;
  /** Output dtype of floating-point tensors (`bfloat16`, `float16`, `float32`, ...). Default: kept. */
  dtype?: string | undefined;
  /** Tied embeddings: `"auto"` (transformers' rule, default), `"keep-both"`, `"drop"` (must be equal). */
  tied?: "auto" | "keep-both" | "drop" | undefined;
  /** Write `config.json` when the model has one. Default true. */
  config?: boolean | undefined;
  /** Adapter mode: adapter folder or weights file (default: the run's adapter folder). */
  adapter?: string | undefined;
  /** Adapter mode from PEFT-wrapped weights: LoRA rank. */
  r?: number | undefined;
  /** Adapter mode from PEFT-wrapped weights: LoRA alpha. */
  alpha?: number | undefined;
  /** Adapter mode, generated config: `base_model_name_or_path`. */
  baseModel?: string | undefined;
}

const _sameOptions: Same<z.input<typeof writeModelOptions>, WriteModelOptions> = true;
