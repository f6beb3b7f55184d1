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
 * ```
 * @module
 */
import type { Stage } from "../stage.ts";
import { mergeLoraStage } from "./merge_lora.ts";
import { writeMetricsStage } from "./write_metrics.ts";
import { writeTokenizerStage } from "./write_tokenizer.ts";

/** Every built-in stage by its config name. */
export const STAGES: Record<string, Stage> = {
  mergeLora: mergeLoraStage,
  writeTokenizer: writeTokenizerStage,
  writeMetrics: writeMetricsStage,
};
