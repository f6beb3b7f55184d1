/**
 * The LoRA / DoRA / PEFT merge beyond its entry point: backend choice, layouts, DoRA helpers and
 * the single-tensor merge.
 *
 * @example
 * ```ts
 * import { doraModeFor } from "@ckpt/pipelines/merge";
 * import assert from "node:assert/strict";
 *
 * // DoRA normalises per output row for Linear weights, per column for transposed (Conv1D) ones.
 * assert.equal(doraModeFor(false), "row");
 * assert.equal(doraModeFor(true), "column");
 * ```
 * @module
 */
export * from "./backend.ts";
export * from "./layouts.ts";
export * from "./dora.ts";
export * from "./lora.ts";
export * from "./lora_types.ts";
export * from "./lora_tensor.ts";
