/**
 * The writeModel stage, the weights sink: writes the current state dict as a Hugging Face model
 * folder the way `save_pretrained` does, or (`what: "adapter"`) the adapter alone as HALOs'
 * intermediate saves do.
 *
 * Merged model (`what: "model"`, the default):
 * - `format: "safetensors"` (default): `model.safetensors` or `model-0000i-of-0000N.safetensors` +
 *   `model.safetensors.index.json`; `format: "bin"`: `pytorch_model.bin` (+ shards and index) as
 *   `save_pretrained(safe_serialization=False)` (HALOs' final save) writes;
 * - `maxShardSize` (default `"5GB"`, decimal units as transformers);
 * - `dtype`: floating-point tensors are cast on the fly (lazy converting refs, round to nearest
 *   even); merged tensors are computed straight into it (one rounding, `TensorRef.cast`); integer
 *   tensors are kept;
 * - tied embeddings as transformers: with `tie_word_embeddings` and an `lm_head.weight` equal to
 *   the input embedding, safetensors output omits `lm_head.weight` (a `.bin` keeps both, sharing one
 *   storage, and a tied model without `lm_head.weight` gets one, as `model.state_dict()` has it); when they differ (a LoRA merged into one of them) both are written and
 *   `tie_word_embeddings` becomes false;
 * - `config.json` from the model's, key order and number types kept, with `torch_dtype`/`dtype`
 *   set to the output dtype, `tie_word_embeddings` and `vocab_size` made consistent with the
 *   weights; `generation_config.json` copied byte for byte;
 * - never adapter files (`ADAPTER_IN_MERGED`).
 *
 * In a split export (`ckpt run --part I/N`) each part writes the shards the byte-balanced plan
 * gives it (`ctx.part`), the lead part also `config.json` and `generation_config.json`, and the
 * finish writes the index from the plan recorded here.
 *
 * Adapter (`what: "adapter"`): `adapter_model.safetensors` + `adapter_config.json` from `adapter`
 * (a PEFT folder or weights file; default: the adapter folder of the run), or from the LoRA part of a
 * PEFT-wrapped state dict (`r` and `alpha` given; the config is generated).
 * The work happens in `model/`: `plan.ts` decides the merged model (casts, tied embeddings,
 * config.json), `files.ts` lists and writes its files, `adapter.ts` writes the adapter alone,
 * `options.ts` holds the options.
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../../errors.ts";
import { type DType, isFloatDType, parseDType } from "../../formats/dtype.ts";
import { isWrappedStateDict, loadAdapter } from "../../formats/peft.ts";
import { parseSize } from "../../formats/size.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import { defineStage, type PartContext, type Stage, type StageContext } from "../stage.ts";
import { parsePyJson, toPlain } from "./_pyjson.ts";
import { writeAdapter } from "./model/adapter.ts";
import {
  plannedFiles,
  refuseAdapterFiles,
  type WeightFiles,
  weightFiles,
  writeModelFiles,
  writtenSizes,
} from "./model/files.ts";
import { writeModelOptions } from "./model/options.ts";
import { planModel, readGenerationConfig } from "./model/plan.ts";

export { checkAdapterFits } from "./model/adapter.ts";
export type { WriteModelOptions } from "./model/options.ts";
export {
  embeddingKeys,
  type ModelPlan,
  planModel,
  type PlanModelOptions,
  sameTensor,
  torchDtypeName,
} from "./model/plan.ts";

/** The output dtype option, parsed (`DTYPE_UNKNOWN`) and checked to be a float (`DTYPE_NOT_FLOAT`). */
function outputDType(options: { dtype?: string | undefined }): DType | undefined {
  const dtype = options.dtype === undefined ? undefined : parseDType(options.dtype);
  if (dtype !== undefined && !isFloatDType(dtype)) {
    throw new CkptError(
      "DTYPE_NOT_FLOAT",
      `Cannot write weights as ${dtype}: not a floating-point dtype`,
    );
  }
  return dtype;
}

/** The weights to write as a model: `STAGE_ORDER` without any, `MODEL_WRAPPED` for PEFT-wrapped ones. */
function modelWeights(ctx: StageContext): StateDict {
  const sd = ctx.stateDict;
  if (!sd) {
    throw new CkptError(
      "STAGE_ORDER",
      "Cannot write the model: no weights yet (put gatherShards before writeModel)",
    );
  }
  if (isWrappedStateDict(sd)) {
    throw new CkptError(
      "MODEL_WRAPPED",
      'Cannot write PEFT-wrapped weights (.base_layer./.lora_A.) as a model: merge them first (mergeLora with r and alpha) or write the adapter (what: "adapter")',
    );
  }
  return sd;
}

/**
 * One part's share of the weights in a split export: the shards the byte-balanced plan gives it
 * (the configs go with the lead part), after recording the whole plan for the finish.
 */
function splitShare(
  ctx: StageContext,
  part: PartContext,
  weights: WeightFiles,
  files: readonly { path: string }[],
): { only: Set<string>; configs: boolean } {
  part.record({
    files: files.map((f) => f.path),
    shared: weights.shards,
    ...(weights.index ? { index: weights.index } : {}),
  });
  if (weights.shards.length < part.count) {
    ctx.emit({
      type: "log",
      level: "warn",
      stage: "writeModel",
      message: `${weights.shards.length} weight files for ${part.count} parts: ${
        part.count - weights.shards.length
      } parts write no weights (a smaller maxShardSize gives more files)`,
    });
  }
  return { only: part.mine(weights.shards), configs: part.lead };
}

/** The writeModel stage (config name `writeModel`). */
export const writeModelStage: Stage = defineStage({
  name: "writeModel",
  summary:
    "write the weights as an HF folder (safetensors or .bin, shards, dtype, tied, config.json) or the adapter",
  options: writeModelOptions,
  split: "every-part",
  /**
   * Checks the options that need no weights (`dtype` is a float dtype, `maxShardSize` parses), for
   * a model that the model folder's `generation_config.json`, copied as it is, is a JSON object
   * (`JSON_PARSE`, `CONFIG_JSON`), and for `what: "adapter"` with an explicit `adapter`, that the
   * adapter's config and weights header read (`DTYPE_UNKNOWN`, `DTYPE_NOT_FLOAT`, `SIZE_INVALID`,
   * `PEFT_ADAPTER_MISSING`, `PEFT_CONFIG`).
   */
  async preflight(ctx, options) {
    outputDType(options);
    if (options.what === "model") {
      parseSize(options.maxShardSize);
      // copied as it is: one transformers cannot read fails before any stage runs
      if (ctx.modelDir !== undefined) await readGenerationConfig(ctx.modelDir);
    } else if (options.adapter !== undefined) {
      const adapter = await loadAdapter(ctx.resolve(options.adapter));
      await adapter.tensors.close();
    }
  },
  async run(ctx, options) {
    const dtype = outputDType(options);
    if (options.what === "adapter") {
      if (ctx.part && !ctx.part.lead) return; // the adapter is small: the lead part writes it
      return await writeAdapter(ctx, options, dtype);
    }
    const sd = modelWeights(ctx);
    const maxShardSize = parseSize(options.maxShardSize);
    await refuseAdapterFiles(ctx.outDir, "before");
    const plan = await planModel(sd, {
      ...(dtype === undefined ? {} : { dtype }),
      format: options.format,
      tied: options.tied,
      modelConfig: ctx.modelConfig,
      modelDir: ctx.modelDir,
      writeConfig: options.config,
      signal: ctx.signal,
    });
    if (plan.config && ctx.modelConfig && options.config) {
      const text = new TextDecoder().decode(plan.config);
      ctx.modelConfig = toPlain(parsePyJson(text)) as Record<string, unknown>;
    }
    const files = plannedFiles(plan, options.format, maxShardSize);
    if (plan.generationConfig) {
      ctx.addInput(join(ctx.modelDir!, "generation_config.json"), "generation-config");
    }
    const report = {
      what: "model",
      format: options.format,
      dtype: plan.dtype ?? null,
      tied: plan.tied,
      tensors: plan.stateDict.size,
      recomputedInDtype: plan.recomputedInDtype,
    };
    const share = ctx.part &&
      splitShare(ctx, ctx.part, weightFiles(plan, options.format, maxShardSize), files);
    if (ctx.dryRun) {
      // a part's plan: its shards, and the configs in the lead part (the finish writes the index)
      const planned = share
        ? files.filter((f) =>
          share.only.has(f.path) ||
          (share.configs && (f.path === "config.json" || f.path === "generation_config.json"))
        )
        : files;
      ctx.report("writeModel", { ...report, files: planned, estimated: options.format === "bin" });
      return;
    }
    const written = await writeModelFiles(ctx, plan, options.format, maxShardSize, share);
    await refuseAdapterFiles(ctx.outDir, "after");
    ctx.report("writeModel", { ...report, files: await writtenSizes(ctx.outDir, written) });
  },
});
