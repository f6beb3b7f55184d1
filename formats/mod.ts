/**
 * Byte-level codecs: dtypes and float conversions, the lazy `StateDict`, safetensors, torch.save
 * (zip, restricted unpickler, pickle writer), HF shard plans, torch.distributed.checkpoint, PEFT
 * adapters. No GPU, no CLI.
 *
 * @example
 * ```ts
 * import { parseSize } from "@ckpt/pipelines/formats";
 * import assert from "node:assert/strict";
 *
 * assert.equal(parseSize("5GB"), 5_000_000_000);
 * ```
 * @module
 */
export * from "./dtype.ts";
export * from "./cast.ts";
export * from "./phase_clock.ts";
export * from "./state_dict.ts";
export * from "./safetensors.ts";
export * from "./shards.ts";
export * from "./size.ts";
export * from "./peft.ts";
export * from "./peft_config.ts";
export * from "./torch/values.ts";
export * from "./torch/tensor.ts";
export * from "./torch/unpickle.ts";
export * from "./torch/pickle.ts";
export * from "./torch/load.ts";
export * from "./torch/save.ts";
export * from "./torch/state_dict.ts";
export * from "./torch/legacy.ts";
export * from "./dcp.ts";
export * from "./dcp_optim.ts";
