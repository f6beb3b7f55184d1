/**
 * ckpt: turn the raw output of an LLM fine-tuning run (sharded weights, a LoRA adapter, optimizer
 * and scheduler state, eval metrics, a tokenizer, a PPO value head) into a finished checkpoint
 * folder that PyTorch and Hugging Face load as-is — what HALOs' `BasicTrainer.save` does, as a
 * standalone pipeline.
 *
 * - **Pipelines**: {@linkcode runPipeline} runs a config (JSONC file, preset via
 *   {@linkcode loadPreset}, or object) of stages — gatherShards, mergeLora, writeModel,
 *   writeTokenizer, writeOptim, writeMetrics, writeValueHead, writeReport, or your own {@linkcode Stage} —
 *   into a staging folder renamed into place only on success, with a sha256 manifest;
 *   {@linkcode verifyCheckpoint} checks a finished folder.
 * - **Readers and writers**: the lazy {@linkcode StateDict}, streaming safetensors
 *   ({@linkcode openSafetensors}, {@linkcode writeSafetensorsSharded}, HF shard indexes) and
 *   torch.save ({@linkcode loadTorch}, {@linkcode saveTorch}, through a restricted unpickler).
 * - **Merge**: {@linkcode mergeLora} (`W + s·B·A`, rsLoRA, DoRA) on a WebGPU compute shader or the
 *   CPU ({@linkcode createMergeBackend}).
 *
 * This root is the stable surface. The rest of the library is behind sub-paths, each the whole
 * of one layer: `@ckpt/pipelines/formats` (dtypes, DCP, PEFT, torch values, shard plans),
 * `/readers` (input kinds, `inspectPath`), `/kernels` (merge contract, reference, CPU backend),
 * `/gpu` (WebGPU backend), `/merge` (layouts, DoRA, single-tensor merge), `/pipelines` (manifest,
 * hashing, locks, every stage's building blocks), `/watch` (`ckpt watch` as a library) and `/cli`.
 *
 * Every error is a {@linkcode CkptError} with a stable `code`.
 *
 * @example A pipeline with a custom stage
 * ```ts
 * import { runPipeline, type Stage, verifyCheckpoint } from "@ckpt/pipelines";
 * import { z } from "zod";
 * import assert from "node:assert/strict";
 *
 * const note: Stage = {
 *   name: "note",
 *   summary: "writes note.txt",
 *   options: z.strictObject({ text: z.string() }),
 *   async run(ctx, options) {
 *     const text = (options as { text: string }).text;
 *     await Deno.writeTextFile(`${ctx.outDir}/note.txt`, text);
 *     ctx.report("note", { files: [{ path: "note.txt", bytes: new TextEncoder().encode(text).length }] });
 *   },
 * };
 * const dir = await Deno.makeTempDir();
 * const result = await runPipeline(
 *   { vars: { who: "ckpt" }, output: "out", stages: [{ use: "note", text: "made by ${who}" }] },
 *   { baseDir: dir, stages: { note } },
 * );
 * assert.equal(await Deno.readTextFile(`${result.output}/note.txt`), "made by ckpt");
 * assert.equal((await verifyCheckpoint(result.output)).ok, true);
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @example Errors carry stable codes
 * ```ts
 * import { CkptError } from "@ckpt/pipelines";
 * import assert from "node:assert/strict";
 *
 * assert.equal(new CkptError("ABORTED", "Cannot go on: stopped").code, "ABORTED");
 * ```
 * @module
 */
export { CkptError, type ErrorContext, isCkptError } from "./errors.ts";
export { ERROR_CODES, type ErrorCode } from "./errors/codes.ts";

// Pipelines: run a config, the stage contract, presets, progress, the manifest, verification.
export { type PlannedFile, type RunOptions, runPipeline, type RunResult } from "./pipelines/run.ts";
export {
  builtinStages,
  type ConfigOptions,
  type ConfigStage,
  loadConfig,
  parseConfig,
  type PipelineConfig,
  type RawConfig,
  validateConfig,
} from "./pipelines/config.ts";
export {
  defineStage,
  type OptionsSchema,
  type PartContext,
  type PartGather,
  type PartPlan,
  type PipelineEvent,
  type PlannedPartFile,
  type SchemaIssue,
  type SchemaResult,
  type Stage,
  type StageContext,
  type StageOptions,
  type StageSpec,
} from "./pipelines/stage.ts";
export { loadPreset, PRESETS } from "./pipelines/presets.ts";
export {
  createJsonRenderer,
  createRenderer,
  type EventRenderer,
  type LogStyle,
  type TextSink,
} from "./pipelines/progress.ts";
export {
  type Manifest,
  MANIFEST_NAME,
  type ManifestFile,
  type ManifestInput,
  type ManifestStage,
  readManifest,
} from "./pipelines/manifest.ts";
export {
  type VerifyCheck,
  verifyCheckpoint,
  type VerifyOptions,
  type VerifyResult,
} from "./pipelines/verify.ts";

// The built-in stages and their options.
export { STAGES } from "./pipelines/stages/registry.ts";
export {
  type GatherOptions,
  type GatherResult,
  gatherShards,
  gatherShardsStage,
  type GatherShardsStageOptions,
} from "./pipelines/stages/gather_shards.ts";
export {
  type MergeLoraAdapterEntry,
  mergeLoraStage,
  type MergeLoraStageOptions,
} from "./pipelines/stages/merge_lora.ts";
export { type WriteModelOptions, writeModelStage } from "./pipelines/stages/write_model.ts";
export {
  type WriteTokenizerOptions,
  writeTokenizerStage,
} from "./pipelines/stages/write_tokenizer.ts";
export { writeOptimStage, type WriteOptimStageOptions } from "./pipelines/stages/write_optim.ts";
export { type WriteMetricsOptions, writeMetricsStage } from "./pipelines/stages/write_metrics.ts";
export { writeValueHeadStage } from "./pipelines/stages/write_value_head.ts";
export { writeReportStage } from "./pipelines/stages/write_report.ts";

// The lazy tensor map and its dtypes.
export { type Closer, StateDict, tensorFromBytes, type TensorRef } from "./formats/state_dict.ts";
export { type DType, type DTypeInfo, DTYPES, parseDType } from "./formats/dtype.ts";
export type {
  PyDict,
  PyFloat,
  PyGlobal,
  PyKey,
  PyRecord,
  PyTuple,
  PyValue,
} from "./formats/torch/values.ts";
export type { StorageSource, TorchStorage, TorchTensor } from "./formats/torch/tensor.ts";
export type { UnpickleOptions } from "./formats/torch/unpickle.ts";
export type { LoadedAdapter, WrappedLoraOptions } from "./formats/peft.ts";
export type { LoraConfig } from "./formats/peft_config.ts";
export type { StorageHandle } from "./formats/torch/_storage_handle.ts";
export type { InspectFile, InspectKind, InspectReport, InspectTensor } from "./readers/report.ts";
export type { InputProbe } from "./readers/probe.ts";
export type { InputKind, InputOpenOptions, LoadedValue, OptimizerSource } from "./readers/types.ts";
export type {
  MergeBackend,
  MergeChangeSums,
  MergeDType,
  MergeRowsIntoRequest,
  MergeRowsRequest,
} from "./kernels/types.ts";
export type { CpuBackendOptions } from "./kernels/cpu/backend.ts";
export type { WebGpuBackendOptions } from "./gpu/merge_webgpu.ts";
export type { MergePlanOptions } from "./gpu/merge_plan.ts";
export type { AcquiredGpu, GpuInfo } from "./gpu/device.ts";
export type { DoraMode } from "./merge/dora.ts";
export type { LoraLayoutKind } from "./merge/layouts.ts";

// Readers and writers: safetensors (single file and HF shards) and torch.save.
export {
  type HfShardIndex,
  openHfShards,
  openSafetensors,
  type PlanSafetensorsShardsOptions,
  readSafetensorsHeader,
  type SafetensorsHeader,
  type SafetensorsTensorInfo,
  writeSafetensors,
  type WriteSafetensorsOptions,
  type WriteSafetensorsResult,
  writeSafetensorsSharded,
  type WriteSafetensorsShardedOptions,
  type WriteSafetensorsShardedResult,
} from "./formats/safetensors.ts";
export { loadTorch, type LoadTorchOptions, type TorchFile } from "./formats/torch/load.ts";
export {
  saveTorch,
  type SaveTorchOptions,
  type SaveTorchResult,
  saveTorchStateDict,
} from "./formats/torch/save.ts";
export {
  openTorchShards,
  openTorchStateDict,
  writeTorchSharded,
  type WriteTorchShardedOptions,
  type WriteTorchShardedResult,
} from "./formats/torch/state_dict.ts";

// Merge entry points: a LoRA / DoRA adapter into base weights, on a chosen backend.
export { mergeLora } from "./merge/lora.ts";
export {
  type AdapterInput,
  type MergeLoraOptions,
  type MergeLoraResult,
  type MergeReport,
  type ModuleAdapterReport,
  type ModuleChange,
  type ModuleReport,
  type TiedEmbeddingChange,
  type TiedEmbeddingsReport,
} from "./merge/lora_types.ts";
export {
  type BackendChoice,
  type Calibration,
  type CalibrationShape,
  type CreatedMergeBackend,
  createMergeBackend,
  type MergeBackendOptions,
} from "./merge/backend.ts";
