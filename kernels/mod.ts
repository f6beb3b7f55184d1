/**
 * The merge kernel contract (`MergeBackend`, `MergeRowsRequest`), request validation, the scalar
 * reference that defines the numerics, and the CPU backend (WebAssembly SIMD on workers).
 *
 * @example
 * ```ts
 * import { isMergeDType } from "@ckpt/pipelines/kernels";
 * import assert from "node:assert/strict";
 *
 * assert.equal(isMergeDType("BF16"), true);
 * ```
 * @module
 */
export * from "./types.ts";
export * from "./validate.ts";
export * from "./reference.ts";
export * from "./cpu/backend.ts";
