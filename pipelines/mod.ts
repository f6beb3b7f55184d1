/**
 * The pipeline layer in full: the stage contract, configs, the runner, presets, progress renderers,
 * the manifest and its hashing, output locks, verification, split exports (`runPart`,
 * `finishParts`), the comparison behind `ckpt diff`, and
 * each built-in stage with its building blocks (the curated subset is the package root).
 *
 * @example
 * ```ts
 * import { formatBytes } from "@ckpt/pipelines/pipelines";
 * import assert from "node:assert/strict";
 *
 * assert.equal(formatBytes(1_500_000), "1.50 MB");
 * ```
 * @module
 */
export * from "./stage.ts";
export * from "./config.ts";
export * from "./run.ts";
export * from "./split.ts";
export * from "./run_part.ts";
export * from "./finish_parts.ts";
export * from "./presets.ts";
export * from "./progress.ts";
export * from "./manifest.ts";
export * from "./hashing.ts";
export * from "./hash_file.ts";
export * from "./lock.ts";
export * from "./verify.ts";
export * from "./diff/diff.ts";
export * from "./diff/open.ts";
export * from "./stages/registry.ts";
export * from "./stages/gather_shards.ts";
export * from "./stages/merge_lora.ts";
export * from "./stages/write_model.ts";
export * from "./stages/write_tokenizer.ts";
export * from "./stages/write_optim.ts";
export * from "./stages/write_metrics.ts";
export * from "./stages/write_value_head.ts";
export * from "./stages/write_report.ts";
export * from "./report/html.ts";
export * from "./report/pages.ts";
