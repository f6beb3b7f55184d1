/**
 * The stage registry: every stage a config can `"use"`, by name. The runner looks stages up here
 * and validates each config entry against the stage's own options schema.
 *
 * @example Looking a stage up
 * ```ts
 * import { STAGES } from "./registry.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(STAGES.writeMetrics?.name, "writeMetrics");
 * assert.ok(STAGES.gatherShards?.options.safeParse({ from: "model" }).success);
 * ```
 * @module
 */
import type { Stage } from "../stage.ts";
import { gatherShardsStage } from "./gather_shards.ts";
import { mergeLoraStage } from "./merge_lora.ts";
import { writeModelStage } from "./write_model.ts";
import { writeTokenizerStage } from "./write_tokenizer.ts";
import { writeOptimStage } from "./write_optim.ts";
import { writeMetricsStage } from "./write_metrics.ts";
import { writeValueHeadStage } from "./write_value_head.ts";
import { writeReportStage } from "./write_report.ts";

/** Every built-in stage by its config name, in the order a pipeline usually uses them. */
export const STAGES: Record<string, Stage> = {
  gatherShards: gatherShardsStage,
  mergeLora: mergeLoraStage,
  writeModel: writeModelStage,
  writeTokenizer: writeTokenizerStage,
  writeOptim: writeOptimStage,
  writeMetrics: writeMetricsStage,
  writeValueHead: writeValueHeadStage,
  writeReport: writeReportStage,
};
