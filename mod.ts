/**
 * ckpt: turn the raw output of an LLM fine-tuning run (sharded weights, a LoRA adapter, optimizer
 * and scheduler state, eval metrics, a tokenizer, a PPO value head) into a finished checkpoint
 * folder that PyTorch and Hugging Face load as-is — what HALOs' `BasicTrainer.save` does, as a
 * standalone pipeline.
 *
 * - **Pipelines**: {@linkcode runPipeline} runs a config (JSONC file, preset via
 *   {@linkcode loadPreset}, or object) of stages — gatherShards, mergeLora, writeModel,
 *   writeTokenizer, writeOptim, writeMetrics, writeValueHead, or your own {@linkcode Stage} —
 *   into a staging folder renamed into place only on success, with a sha256 manifest;
 *   {@linkcode verifyCheckpoint} checks a finished folder.
 * - **Formats**: streaming safetensors (`openSafetensors`, `writeSafetensorsSharded`), torch.save
 *   (`loadTorch`, `saveTorch`, restricted unpickler), HF shard indexes, DCP, PEFT adapters — all
 *   through the lazy {@linkcode StateDict}.
 * - **Merge**: `mergeLora` (`W + s·B·A`, rsLoRA, DoRA) on a WebGPU compute shader or the CPU.
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
export * from "./errors.ts";
export * from "./formats/dtype.ts";
export * from "./formats/cast.ts";
export * from "./formats/state_dict.ts";
export * from "./formats/safetensors.ts";
export * from "./formats/shards.ts";
export * from "./formats/size.ts";
export * from "./formats/peft.ts";
export * from "./formats/peft_config.ts";
export * from "./merge/layouts.ts";
export * from "./merge/dora.ts";
export * from "./merge/lora.ts";
export * from "./merge/lora_types.ts";
export * from "./merge/lora_tensor.ts";
export * from "./formats/torch/values.ts";
export * from "./formats/torch/unpickle.ts";
export * from "./formats/torch/pickle.ts";
export * from "./formats/torch/load.ts";
export * from "./formats/torch/save.ts";
export * from "./formats/torch/state_dict.ts";
export * from "./formats/torch/legacy.ts";
export * from "./pipelines/stage.ts";
export * from "./pipelines/config.ts";
export * from "./pipelines/run.ts";
export * from "./pipelines/manifest.ts";
export * from "./pipelines/hashing.ts";
export * from "./pipelines/progress.ts";
export * from "./pipelines/verify.ts";
export * from "./pipelines/presets.ts";
export * from "./readers/inspect.ts";
export * from "./kernels/types.ts";
export * from "./kernels/validate.ts";
export * from "./kernels/reference.ts";
export * from "./kernels/cpu/backend.ts";
export * from "./merge/backend.ts";
export * from "./gpu/device.ts";
export * from "./gpu/merge_plan.ts";
export * from "./gpu/merge_shader.ts";
export * from "./gpu/merge_webgpu.ts";
export * from "./pipelines/watch/config.ts";
export * from "./pipelines/watch/scan.ts";
export * from "./pipelines/watch/complete.ts";
export * from "./pipelines/watch/lock.ts";
export * from "./pipelines/watch/state.ts";
export * from "./pipelines/watch/watch.ts";
export * from "./pipelines/watch/runner.ts";
export * from "./readers/kinds.ts";
export * from "./readers/optimizer.ts";
export * from "./readers/probe.ts";
export * from "./pipelines/stages/registry.ts";
export * from "./pipelines/stages/gather_shards.ts";
export * from "./pipelines/stages/merge_lora.ts";
export * from "./pipelines/stages/write_model.ts";
export * from "./pipelines/stages/write_tokenizer.ts";
export * from "./pipelines/stages/write_optim.ts";
export * from "./pipelines/stages/write_metrics.ts";
export * from "./pipelines/stages/write_value_head.ts";
export * from "./formats/dcp.ts";
export * from "./formats/dcp_optim.ts";
export * from "./readers/dcp.ts";
