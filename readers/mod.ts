/**
 * The closed table of input kinds (safetensors, HF shards, torch files, DCP folders): detect,
 * open and inspect (`ckpt inspect`), the optimizer-state sources, wrapper-prefix stripping.
 *
 * @example
 * ```ts
 * import { BUILTIN_INPUT_KINDS } from "@ckpt/pipelines/readers";
 * import assert from "node:assert/strict";
 *
 * assert.ok(BUILTIN_INPUT_KINDS.some((k) => k.name === "safetensors"));
 * ```
 * @module
 */
export * from "./types.ts";
export * from "./report.ts";
export * from "./probe.ts";
export * from "./kinds.ts";
export * from "./optimizer.ts";
export * from "./inspect.ts";
export * from "./dcp.ts";
export * from "./names.ts";
