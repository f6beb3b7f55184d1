/**
 * The files of a merged model folder: the list a dry run plans (shards, index, configs, with their
 * sizes), the writing itself (safetensors or `.bin` shards, hashed while written), and the guard
 * that keeps adapter files out of a merged folder (`ADAPTER_IN_MERGED`).
 * @module
 */
import { join, relative } from "node:path";
import { CkptError } from "../../../errors.ts";
import { isFloatDType } from "../../../formats/dtype.ts";
import { planSafetensorsShards, writeSafetensorsSharded } from "../../../formats/safetensors.ts";
import { numel } from "../../../formats/state_dict.ts";
import { planTorchShards, writeTorchSharded } from "../../../formats/torch/state_dict.ts";
import type { StageContext } from "../../stage.ts";
import type { ModelPlan } from "./plan.ts";

/**
 * The weights files start an `fdatasync` every 16 MiB while they are written (direct I/O too: a
 * disk's write cache holds direct writes until a flush; `formats/_file_sink.ts` says when), so the
 * disk drains while the merge and the hash run and the runner's fsync before the rename has little
 * left to wait for. 16 MiB against 64: `ckpt merge` of the 1 GB e2e model 2.49 s against 2.80 s
 * median (alternating runs), page-cache writes unchanged.
 */
const EARLY_SYNC_BYTES = 16 * 2 ** 20;

/** One file of the output, with its size. */
export type OutputFile = { path: string; bytes: number };

/** The writers' `onBytes` option feeding {@linkcode StageContext.onOutputBytes} (paths made relative to `ctx.outDir`). */
export function outputBytesHook(
  ctx: StageContext,
): { onBytes?: (path: string, bytes: Uint8Array) => void | Promise<void> } {
  const feed = ctx.onOutputBytes;
  if (!feed) return {};
  return { onBytes: (path, bytes) => feed(relative(ctx.outDir, path), bytes) };
}

const ADAPTER_FILE = /^adapter_(config\.json|model\.(safetensors|bin))$/;

async function adapterFilesIn(dir: string): Promise<string[]> {
  const found: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) if (ADAPTER_FILE.test(e.name)) found.push(e.name);
  } catch {
    // folder missing: nothing there
  }
  return found;
}

/** `ADAPTER_IN_MERGED` when `dir` holds adapter files (transformers would load the adapter). */
export async function refuseAdapterFiles(dir: string, when: "before" | "after"): Promise<void> {
  const found = await adapterFilesIn(dir);
  if (found.length === 0) return;
  throw new CkptError(
    "ADAPTER_IN_MERGED",
    when === "before"
      ? `Cannot write merged weights beside adapter files (${
        found.join(", ")
      }): transformers would load the adapter instead`
      : `Cannot finish the merged folder: adapter files appeared (${found.join(", ")})`,
    { file: join(dir, found[0]!) },
  );
}

/** The shard index metadata transformers 4.57+ writes: the parameter count beside total_size. */
export function indexMetadata(plan: ModelPlan): { total_parameters: number } {
  let parameters = 0;
  for (const [, r] of plan.stateDict) if (isFloatDType(r.dtype)) parameters += numel(r.shape);
  return { total_parameters: parameters };
}

/** The weight files of a model folder (shards, sizes planned) and its index (exact text). */
export interface WeightFiles {
  /** Shard files in order, with their planned sizes (`.bin` sizes are estimates). */
  shards: OutputFile[];
  /** The shard index, when there is more than one shard. */
  index?: { path: string; text: string };
}

/** Plans the weight files as the writers will write them (nothing read, nothing written). */
export function weightFiles(
  plan: ModelPlan,
  format: "safetensors" | "bin",
  maxShardSize: number,
): WeightFiles {
  if (format === "safetensors") {
    const p = planSafetensorsShards(plan.stateDict, maxShardSize, {
      indexMetadata: indexMetadata(plan),
    });
    const shards = p.files.map((f) => ({ path: f.file, bytes: f.fileBytes }));
    return p.indexText === undefined
      ? { shards }
      : { shards, index: { path: p.indexFile, text: p.indexText } };
  }
  const p = planTorchShards(plan.stateDict, maxShardSize);
  const shards = p.files.map((file, i) => ({ path: file, bytes: p.plan.shards[i]!.bytes }));
  return p.index ? { shards, index: { path: p.index.file, text: p.index.text } } : { shards };
}

/** The files a model folder will have, with their sizes (`.bin` sizes are estimates). */
export function plannedFiles(
  plan: ModelPlan,
  format: "safetensors" | "bin",
  maxShardSize: number,
): OutputFile[] {
  const weights = weightFiles(plan, format, maxShardSize);
  const files: OutputFile[] = [...weights.shards];
  if (weights.index) {
    files.push({
      path: weights.index.path,
      bytes: new TextEncoder().encode(weights.index.text).byteLength,
    });
  }
  if (plan.config) files.push({ path: "config.json", bytes: plan.config.byteLength });
  if (plan.generationConfig) {
    files.push({ path: "generation_config.json", bytes: plan.generationConfig.byteLength });
  }
  return files;
}

/**
 * Writes the weights (shards and index) and the configs; returns the paths written. With `only`
 * (one part of a split export), writes those shards and no index, and the configs only when
 * `configs` is true.
 */
export async function writeModelFiles(
  ctx: StageContext,
  plan: ModelPlan,
  format: "safetensors" | "bin",
  maxShardSize: number,
  part?: { only: ReadonlySet<string>; configs: boolean },
): Promise<string[]> {
  const onProgress = (done: number, total: number) =>
    ctx.emit({ type: "progress", stage: "writeModel", done, total, unit: "bytes" });
  let written: string[];
  if (format === "safetensors") {
    written = (await writeSafetensorsSharded(ctx.outDir, plan.stateDict, {
      maxShardSize,
      indexMetadata: indexMetadata(plan),
      signal: ctx.signal,
      syncEvery: EARLY_SYNC_BYTES,
      onProgress,
      ...outputBytesHook(ctx),
      ...(part ? { only: part.only } : {}),
    })).files;
  } else {
    const r = await writeTorchSharded(ctx.outDir, plan.stateDict, {
      maxShardSize,
      signal: ctx.signal,
      syncEvery: EARLY_SYNC_BYTES,
      onProgress,
      ...outputBytesHook(ctx),
      ...(part ? { only: part.only } : {}),
    });
    written = [...r.files];
    if (r.index && !written.some((f) => f.endsWith("pytorch_model.bin.index.json"))) {
      written.push("pytorch_model.bin.index.json");
    }
  }
  if (part && !part.configs) return written;
  if (plan.config) {
    await Deno.writeFile(join(ctx.outDir, "config.json"), plan.config);
    written.push("config.json");
  }
  if (plan.generationConfig) {
    await Deno.writeFile(join(ctx.outDir, "generation_config.json"), plan.generationConfig);
    written.push("generation_config.json");
  }
  return written;
}

/** The sizes on disk of `paths` (absolute or relative to `outDir`), as output-relative files. */
export async function writtenSizes(outDir: string, paths: string[]): Promise<OutputFile[]> {
  const sizes: OutputFile[] = [];
  for (const p of paths) {
    const name = p.startsWith(outDir) ? p.slice(outDir.length).replace(/^\/+/, "") : p;
    sizes.push({ path: name, bytes: (await Deno.stat(join(outDir, name))).size });
  }
  return sizes;
}
