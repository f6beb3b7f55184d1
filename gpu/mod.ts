/**
 * The WebGPU merge backend: device acquisition and limits, the dispatch planner, the WGSL kernel
 * source and the host code.
 *
 * @example
 * ```ts
 * import { foldDispatch } from "@ckpt/pipelines/gpu";
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(foldDispatch(10, 65535), [10, 1]);
 * ```
 * @module
 */
export * from "./device.ts";
export * from "./merge_plan.ts";
export * from "./merge_shader.ts";
export * from "./merge_webgpu.ts";
