/**
 * `ckpt watch` as a library: settings, checkpoint scanning, the completeness check, per-checkpoint
 * locks, the state file, one watch pass or a scheduled one, and the pipeline runner it calls.
 *
 * @example
 * ```ts
 * import { stepOf } from "@ckpt/pipelines/watch";
 * import assert from "node:assert/strict";
 *
 * assert.equal(stepOf("checkpoint-1200"), 1200);
 * ```
 * @module
 */
export * from "./config.ts";
export * from "./scan.ts";
export * from "./complete.ts";
export * from "./lock.ts";
export * from "./state.ts";
export * from "./events.ts";
export * from "./watch.ts";
export * from "./runner.ts";
export * from "./split_handoff.ts";
