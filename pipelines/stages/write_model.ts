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
 *   even); integer tensors are kept;
 * - tied embeddings as transformers: with `tie_word_embeddings` and an `lm_head.weight` equal to
 *   the input embedding, safetensors output omits `lm_head.weight` (a `.bin` keeps both, sharing one
 *   storage, and a tied model without `lm_head.weight` gets one, as `model.state_dict()` has it); when they differ (a LoRA merged into one of them) both are written and
 *   `tie_word_embeddings` becomes false;
 * - `config.json` from the model's, key order and number types kept, with `torch_dtype`/`dtype`
 *   set to the output dtype, `tie_word_embeddings` and `vocab_size` made consistent with the
 *   weights; `generation_config.json` copied byte for byte;
 * - never adapter files (`ADAPTER_IN_MERGED`).
 *
 * Adapter (`what: "adapter"`): `adapter_model.safetensors` + `adapter_config.json` from `adapter`
 * (a PEFT folder or weights file; default: the adapter folder of the run), or from the LoRA part of a
 * PEFT-wrapped state dict (`r` and `alpha` given; the config is generated).
 * @module
 */
import { z } from "zod";
import { join, relative } from "node:path";
import { CkptError } from "../../errors.ts";
import { type DType, DTYPES, isFloatDType, parseDType } from "../../formats/dtype.ts";
import { castRef } from "../../formats/cast.ts";
import { numel, rowCount, rowNumel, StateDict, type TensorRef } from "../../formats/state_dict.ts";
import {
  planSafetensorsShards,
  writeSafetensors,
  writeSafetensorsSharded,
} from "../../formats/safetensors.ts";
import { planShards, shardFileName, shardIndexJson } from "../../formats/shards.ts";
import { parseSize } from "../../formats/size.ts";
import { torchTensor } from "../../formats/torch/values.ts";
import { writeTorchSharded } from "../../formats/torch/state_dict.ts";
import {
  classifyAdapterKey,
  isWrappedStateDict,
  loadAdapter,
  splitWrappedStateDict,
} from "../../formats/peft.ts";
import type { Stage, StageContext } from "../stage.ts";
import { dumpPyJson, fromPlain, isObject, parsePyJson, type PyJson, toPlain } from "./_pyjson.ts";

/** The writers' `onBytes` option feeding {@linkcode StageContext.onOutputBytes} (paths made relative to `ctx.outDir`). */
function outputBytesHook(
  ctx: StageContext,
): { onBytes?: (path: string, bytes: Uint8Array) => void | Promise<void> } {
  const feed = ctx.onOutputBytes;
  if (!feed) return {};
  return { onBytes: (path, bytes) => feed(relative(ctx.outDir, path), bytes) };
}

/** transformers' name of a dtype (`"bfloat16"`). */
export function torchDtypeName(dtype: DType): string {
  return DTYPES[dtype].torch.replace(/^torch\./, "");
}

const INPUT_EMBED = /(^|\.)(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings)\.weight$/;
const OUTPUT_EMBED = ["lm_head.weight", "embed_out.weight", "output.weight"];

/** The input-embedding and output-head keys of `sd`, if present. */
export function embeddingKeys(sd: StateDict): { input?: string; output?: string } {
  const out: { input?: string; output?: string } = {};
  for (const k of sd.keys()) {
    if (INPUT_EMBED.test(k)) {
      out.input = k;
      break;
    }
  }
  for (const k of OUTPUT_EMBED) {
    if (sd.has(k)) {
      out.output = k;
      break;
    }
  }
  return out;
}

/** True when two refs hold the same bytes (same dtype and shape), compared in row blocks. */
export async function sameTensor(
  a: TensorRef,
  b: TensorRef,
  signal?: AbortSignal,
): Promise<boolean> {
  if (a === b) return true;
  if (a.dtype !== b.dtype || a.shape.length !== b.shape.length) return false;
  if (a.shape.some((d, i) => d !== b.shape[i])) return false;
  const rows = rowCount(a.shape);
  const rowBytes = Math.max(1, rowNumel(a.shape) * DTYPES[a.dtype].size);
  const step = Math.max(1, Math.floor((8 << 20) / rowBytes));
  for (let r = 0; r < rows; r += step) {
    signal?.throwIfAborted();
    const end = Math.min(rows, r + step);
    const [x, y] = await Promise.all([a.read(r, end), b.read(r, end)]);
    if (x.byteLength !== y.byteLength) return false;
    for (let i = 0; i < x.byteLength; i++) if (x[i] !== y[i]) return false;
  }
  return true;
}

function configHolder(config: Map<string, PyJson>, key: string): Map<string, PyJson> {
  if (config.has(key)) return config;
  const text = config.get("text_config");
  if (isObject(text) && text.has(key)) return text;
  return config;
}

/** The writeModel options schema (unknown keys rejected). */
const writeModelOptions = z.strictObject({
  /** `"model"` (merged weights, default) or `"adapter"` (adapter only). */
  what: z.enum(["model", "adapter"]).default("model"),
  /** `"safetensors"` (default) or `"bin"` (pytorch_model.bin). */
  format: z.enum(["safetensors", "bin"]).default("safetensors"),
  /** Largest shard (`"5GB"`, `"500MB"`, bytes). Default `"5GB"` as transformers 4.x. */
  maxShardSize: z.union([z.string().min(1), z.number().int().positive()]).default("5GB"),
  /** Output dtype of floating-point tensors (`bfloat16`, `float16`, `float32`, ...). Default: kept. */
  dtype: z.string().min(1).optional(),
  /** Tied embeddings: `"auto"` (transformers' rule, default), `"keep-both"`, `"drop"` (drop lm_head, must be equal). */
  tied: z.enum(["auto", "keep-both", "drop"]).default("auto"),
  /** Write `config.json` (default true when the model has one). */
  config: z.boolean().default(true),
  /** Adapter mode: adapter folder or weights file (default: the run's adapter folder). */
  adapter: z.string().min(1).optional(),
  /** Adapter mode, PEFT-wrapped weights: LoRA rank. */
  r: z.number().int().positive().optional(),
  /** Adapter mode, PEFT-wrapped weights: LoRA alpha. */
  alpha: z.number().positive().optional(),
  /** Adapter mode, generated config: `base_model_name_or_path`. */
  baseModel: z.string().optional(),
});

/** Options of the writeModel stage, as a config writes them. */
export interface WriteModelOptions {
  /** `"model"` (merged weights, default) or `"adapter"` (the adapter alone). */
  what?: "model" | "adapter" | undefined;
  /** `"safetensors"` (default) or `"bin"` (pytorch_model.bin). */
  format?: "safetensors" | "bin" | undefined;
  /** Largest shard (`"5GB"`, `"500MB"`, or bytes). Default `"5GB"` as transformers 4.x. */
  maxShardSize?: string | number | undefined;
  /** Output dtype of floating-point tensors (`bfloat16`, `float16`, `float32`, ...). Default: kept. */
  dtype?: string | undefined;
  /** Tied embeddings: `"auto"` (transformers' rule, default), `"keep-both"`, `"drop"` (must be equal). */
  tied?: "auto" | "keep-both" | "drop" | undefined;
  /** Write `config.json` when the model has one. Default true. */
  config?: boolean | undefined;
  /** Adapter mode: adapter folder or weights file (default: the run's adapter folder). */
  adapter?: string | undefined;
  /** Adapter mode from PEFT-wrapped weights: LoRA rank. */
  r?: number | undefined;
  /** Adapter mode from PEFT-wrapped weights: LoRA alpha. */
  alpha?: number | undefined;
  /** Adapter mode, generated config: `base_model_name_or_path`. */
  baseModel?: string | undefined;
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

async function readFileIfAny(path: string): Promise<Uint8Array | undefined> {
  try {
    return await Deno.readFile(path);
  } catch {
    return undefined;
  }
}

/** The planned merged-model output (validated; nothing written). */
export interface ModelPlan {
  /** The state dict to write (cast, tied keys resolved). */
  stateDict: StateDict;
  /** Output dtype name written into config.json. */
  dtype: DType | undefined;
  /** config.json bytes, if one is written. */
  config?: Uint8Array;
  /** generation_config.json bytes, if copied. */
  generationConfig?: Uint8Array;
  /** What happened to tied embeddings. */
  tied: "none" | "dropped-lm-head" | "kept-both" | "untied";
}

/** Prepares a merged model: casts, tie decision, config.json text. Reads the embeddings only to compare them. */
export async function planModel(
  sd: StateDict,
  options: {
    dtype?: DType;
    format: "safetensors" | "bin";
    tied: "auto" | "keep-both" | "drop";
    modelConfig?: Record<string, unknown> | undefined;
    modelDir?: string | undefined;
    writeConfig: boolean;
    signal?: AbortSignal;
  },
): Promise<ModelPlan> {
  const out = new StateDict();
  out.metadata = { ...sd.metadata };
  const cast = (r: TensorRef) => (options.dtype ? castRef(r, options.dtype) : r);
  for (const [k, r] of sd) out.set(k, cast(r));

  // config.json: prefer the file's exact text (key order, int/float), apply ctx changes over it.
  let config: Map<string, PyJson> | undefined;
  const fileText = options.modelDir
    ? await readFileIfAny(join(options.modelDir, "config.json"))
    : undefined;
  if (fileText) {
    const parsed = parsePyJson(
      new TextDecoder().decode(fileText),
      join(options.modelDir!, "config.json"),
    );
    if (isObject(parsed)) config = parsed;
  }
  if (options.modelConfig) {
    config ??= new Map();
    for (const [k, v] of Object.entries(options.modelConfig)) {
      const cur = config.get(k);
      if (cur === undefined || JSON.stringify(toPlain(cur)) !== JSON.stringify(v)) {
        config.set(k, fromPlain(v));
      }
    }
  }

  // tied embeddings
  const { input, output } = embeddingKeys(out);
  let tied: ModelPlan["tied"] = "none";
  const tieHolder = config ? configHolder(config, "tie_word_embeddings") : undefined;
  const tieFlag = tieHolder?.get("tie_word_embeddings");
  if (input && output) {
    const want = options.tied;
    const equal = want === "keep-both" && tieFlag !== true
      ? false
      : await sameTensor(sd.require(input), sd.require(output), options.signal);
    if (want === "drop" && !equal) {
      throw new CkptError(
        "TIED_WEIGHTS",
        `Cannot drop "${output}": it differs from "${input}" (a merge changed one of them)`,
        { tensor: output },
      );
    }
    if (equal && (tieFlag === true || want === "drop") && want !== "keep-both") {
      if (options.format === "safetensors") {
        out.delete(output);
        tied = "dropped-lm-head";
      } else {
        // torch.save keeps both keys, sharing one storage
        const shared = torchTensor(out.require(input));
        out.set(input, shared);
        out.set(output, shared);
        tied = "kept-both";
      }
    } else if (!equal && tieFlag === true) {
      tieHolder!.set("tie_word_embeddings", false);
      tied = "untied";
    } else tied = "kept-both";
  } else if (input && !output && tieFlag === true && options.format === "bin") {
    // model.state_dict() (what save_pretrained(safe_serialization=False) pickles) holds both keys
    const shared = torchTensor(out.require(input));
    out.set(input, shared);
    out.set("lm_head.weight", shared);
    tied = "kept-both";
  } else if (input && !output && tieFlag === false) {
    throw new CkptError(
      "TIED_WEIGHTS",
      `Cannot write the model: config.json says tie_word_embeddings is false but there is no lm_head weight`,
      { tensor: "lm_head.weight" },
    );
  }

  // dtype: the output dtype, else the dtype of the float weights
  let dtype = options.dtype;
  if (!dtype) {
    const ref = (input ? out.get(input) : undefined) ??
      [...out].map(([, r]) => r).find((r) => isFloatDType(r.dtype));
    dtype = ref?.dtype;
  }
  let configBytes: Uint8Array | undefined;
  if (config && options.writeConfig) {
    if (dtype) {
      const name = torchDtypeName(dtype);
      const holders = [config];
      const text = config.get("text_config");
      if (isObject(text) && (text.has("torch_dtype") || text.has("dtype"))) holders.push(text);
      for (const h of holders) {
        h.set("torch_dtype", name);
        h.set("dtype", name);
      }
    }
    if (input) {
      const rows = out.require(input).shape[0]!;
      const holder = configHolder(config, "vocab_size");
      const v = holder.get("vocab_size");
      if (typeof v === "number" && v !== rows) holder.set("vocab_size", rows);
    }
    const original = fileText ? new TextDecoder().decode(fileText) : undefined;
    const text = dumpPyJson(config, { indent: 2, ensureAscii: false }) + "\n";
    const unchanged = original !== undefined &&
      JSON.stringify(toPlain(parsePyJson(original))) === JSON.stringify(toPlain(config));
    configBytes = unchanged ? fileText : new TextEncoder().encode(text);
  }
  const generationConfig = options.modelDir
    ? await readFileIfAny(join(options.modelDir, "generation_config.json"))
    : undefined;
  return {
    stateDict: out,
    dtype,
    ...(configBytes ? { config: configBytes } : {}),
    ...(generationConfig ? { generationConfig } : {}),
    tied,
  };
}

/**
 * Checks that an adapter's tensors fit a base model (every LoRA factor's module exists with
 * matching dims, replacements keep the trailing dims): `ADAPTER_MISMATCH` names the first misfit.
 * Reads no tensor data.
 */
export function checkAdapterFits(adapter: StateDict, base: StateDict): number {
  let checked = 0;
  for (const [key, ref] of adapter) {
    const c = classifyAdapterKey(key);
    const w = base.get(c.target);
    const fail = (why: string): never => {
      throw new CkptError(
        "ADAPTER_MISMATCH",
        `Cannot use adapter tensor "${key}" [${ref.shape.join(", ")}] with this base model: ${why}`,
        { tensor: key, details: { target: c.target, base: w ? [...w.shape] : null } },
      );
    };
    if (c.kind === "replacement") {
      if (
        w &&
        (w.shape.length !== ref.shape.length || w.shape.some((d, i) => i > 0 && d !== ref.shape[i]))
      ) {
        fail(`it replaces "${c.target}" [${w.shape.join(", ")}]`);
      }
      continue;
    }
    if (c.kind === "trainable_tokens") {
      if (!w || w.shape[1] !== ref.shape[1]) {
        fail(`"${c.target}" is missing or not ${ref.shape[1]} wide`);
      }
      continue;
    }
    if (!w) fail(`the base has no "${c.target}"`);
    const [o, i] = [w!.shape[0], w!.shape[1]];
    const s = ref.shape;
    const fits = c.kind === "lora_A"
      ? s[1] === i || s[1] === o
      : c.kind === "lora_B" || c.kind === "lora_B_bias"
      ? s[0] === o || s[0] === i
      : c.kind === "lora_embedding_A"
      ? s[1] === o
      : c.kind === "lora_embedding_B"
      ? s[0] === i
      : s.reduce((a, b) => a * b, 1) === o || s.reduce((a, b) => a * b, 1) === i;
    if (!fits) fail(`"${c.target}" is [${w!.shape.join(", ")}]`);
    checked++;
  }
  return checked;
}

function peftSavedKey(key: string): string {
  let k = key.replace(/\.(lora_A|lora_B)\.[^.]+\.(weight|bias)$/, ".$1.$2");
  k = k.replace(/\.(lora_embedding_A|lora_embedding_B)\.[^.]+$/, ".$1");
  k = k.replace(/\.lora_magnitude_vector\.[^.]+\.weight$/, ".lora_magnitude_vector");
  k = k.replace(/\.modules_to_save\.[^.]+\.([^.]+)$/, ".$1");
  return `base_model.model.${k}`;
}

async function runAdapter(
  ctx: StageContext,
  options: z.output<typeof writeModelOptions>,
  dtype: DType | undefined,
): Promise<void> {
  const cast = (r: TensorRef) => (dtype ? castRef(r, dtype) : r);
  let tensors: StateDict;
  let configBytes: Uint8Array;
  let release: (() => Promise<void>) | undefined;
  let fitCheck: StateDict | undefined;
  const adapterPath = options.adapter !== undefined ? ctx.resolve(options.adapter) : undefined;
  if (adapterPath !== undefined || (ctx.adapterDir !== undefined && options.r === undefined)) {
    const path = adapterPath ?? ctx.adapterDir!;
    ctx.addInput(path, "adapter");
    const adapter = await loadAdapter(path);
    release = () => adapter.tensors.close();
    tensors = new StateDict();
    for (const [k, r] of adapter.tensors) tensors.set(k, cast(r));
    const info = await Deno.stat(path);
    const dir = info.isFile ? join(path, "..") : path;
    configBytes = await Deno.readFile(join(dir, "adapter_config.json"));
    fitCheck = adapter.tensors;
    ctx.adapterDir = dir;
  } else {
    const sd = ctx.stateDict;
    if (!sd || options.r === undefined || options.alpha === undefined) {
      throw new CkptError(
        "ADAPTER_MISSING",
        "Cannot write the adapter: give `adapter`, or PEFT-wrapped weights with `r` and `alpha`",
      );
    }
    const split = splitWrappedStateDict(new StateDict(sd.entries()), {
      r: options.r,
      alpha: options.alpha,
    });
    tensors = new StateDict();
    const modules = new Set<string>();
    for (const [k, r] of split.adapter.tensors) {
      tensors.set(peftSavedKey(k), cast(r));
      const m = /\.([^.]+)\.lora_(A|B|embedding_A|embedding_B)\b/.exec(k);
      if (m) modules.add(m[1]!);
    }
    if (tensors.size === 0) {
      throw new CkptError(
        "ADAPTER_MISSING",
        "Cannot write the adapter: the weights hold no LoRA tensors",
      );
    }
    const cfg = fromPlain({
      base_model_name_or_path: options.baseModel ??
        (typeof ctx.modelConfig?._name_or_path === "string" ? ctx.modelConfig._name_or_path : null),
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      init_lora_weights: true,
      lora_alpha: options.alpha,
      lora_dropout: 0,
      modules_to_save: null,
      peft_type: "LORA",
      r: options.r,
      target_modules: [...modules].sort(),
      task_type: "CAUSAL_LM",
      use_dora: false,
      use_rslora: false,
    });
    configBytes = new TextEncoder().encode(dumpPyJson(cfg, { indent: 2, sortKeys: true }));
  }
  try {
    if (fitCheck && ctx.stateDict) checkAdapterFits(fitCheck, ctx.stateDict);
    const plan = planSafetensorsShards(tensors, Number.MAX_SAFE_INTEGER);
    const bytes = plan.files[0]?.fileBytes ?? 0;
    const files = [
      { path: "adapter_model.safetensors", bytes },
      { path: "adapter_config.json", bytes: configBytes.byteLength },
    ];
    ctx.report("writeModel", {
      what: "adapter",
      files,
      tensors: tensors.size,
      dtype: dtype ?? null,
    });
    if (ctx.dryRun) return;
    await writeSafetensors(join(ctx.outDir, "adapter_model.safetensors"), tensors, {
      signal: ctx.signal,
      ...outputBytesHook(ctx),
      onProgress: (done, total) =>
        ctx.emit({ type: "progress", stage: "writeModel", done, total, unit: "bytes" }),
    });
    await Deno.writeFile(join(ctx.outDir, "adapter_config.json"), configBytes);
  } finally {
    await release?.();
  }
}

/** The output dtype option, parsed (`DTYPE_UNKNOWN`) and checked to be a float (`DTYPE_NOT_FLOAT`). */
function outputDType(options: z.output<typeof writeModelOptions>): DType | undefined {
  const dtype = options.dtype === undefined ? undefined : parseDType(options.dtype);
  if (dtype !== undefined && !isFloatDType(dtype)) {
    throw new CkptError(
      "DTYPE_NOT_FLOAT",
      `Cannot write weights as ${dtype}: not a floating-point dtype`,
    );
  }
  return dtype;
}

/** The writeModel stage (config name `writeModel`). */
export const writeModelStage: Stage = {
  name: "writeModel",
  summary:
    "write the weights as an HF folder (safetensors or .bin, shards, dtype, tied, config.json) or the adapter",
  options: writeModelOptions,
  /**
   * Checks the options that need no weights (`dtype` is a float dtype, `maxShardSize` parses) and,
   * for `what: "adapter"` with an explicit `adapter`, that the adapter's config and weights header
   * read (`DTYPE_UNKNOWN`, `DTYPE_NOT_FLOAT`, `SIZE_INVALID`, `PEFT_ADAPTER_MISSING`, `PEFT_CONFIG`).
   */
  async preflight(ctx: StageContext, options: z.output<typeof writeModelOptions>): Promise<void> {
    outputDType(options);
    if (options.what === "model") parseSize(options.maxShardSize);
    else if (options.adapter !== undefined) {
      const adapter = await loadAdapter(ctx.resolve(options.adapter));
      await adapter.tensors.close();
    }
  },
  async run(ctx: StageContext, options: z.output<typeof writeModelOptions>): Promise<void> {
    const dtype = outputDType(options);
    if (options.what === "adapter") return await runAdapter(ctx, options, dtype);
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
    const maxShardSize = parseSize(options.maxShardSize);
    const before = await adapterFilesIn(ctx.outDir);
    if (before.length > 0) {
      throw new CkptError(
        "ADAPTER_IN_MERGED",
        `Cannot write merged weights beside adapter files (${
          before.join(", ")
        }): transformers would load the adapter instead`,
        { file: join(ctx.outDir, before[0]!) },
      );
    }
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
      ctx.modelConfig = toPlain(parsePyJson(new TextDecoder().decode(plan.config))) as Record<
        string,
        unknown
      >;
    }
    const files: { path: string; bytes: number }[] = [];
    // transformers 4.57+ writes the parameter count beside total_size in the shard index
    let parameters = 0;
    for (const [, r] of plan.stateDict) if (isFloatDType(r.dtype)) parameters += numel(r.shape);
    const indexMetadata = { total_parameters: parameters };
    if (options.format === "safetensors") {
      const p = planSafetensorsShards(plan.stateDict, maxShardSize, { indexMetadata });
      for (const f of p.files) files.push({ path: f.file, bytes: f.fileBytes });
      if (p.indexText) {
        files.push({ path: p.indexFile, bytes: new TextEncoder().encode(p.indexText).byteLength });
      }
    } else {
      const entries = [...plan.stateDict].map(([name, r]) => ({
        name,
        bytes: r.shape.reduce((a, b) => a * b, 1) * DTYPES[r.dtype].size,
      }));
      const p = planShards(entries, maxShardSize);
      const names = p.shards.map((_, i) =>
        shardFileName("pytorch_model", ".bin", i, p.shards.length)
      );
      p.shards.forEach((s, i) => files.push({ path: names[i]!, bytes: s.bytes }));
      if (p.shards.length > 1) {
        const { text } = shardIndexJson(p, names);
        files.push({
          path: "pytorch_model.bin.index.json",
          bytes: new TextEncoder().encode(text).byteLength,
        });
      }
    }
    if (plan.config) files.push({ path: "config.json", bytes: plan.config.byteLength });
    if (plan.generationConfig) {
      files.push({ path: "generation_config.json", bytes: plan.generationConfig.byteLength });
      ctx.addInput(join(ctx.modelDir!, "generation_config.json"), "generation-config");
    }
    const report = {
      what: "model",
      format: options.format,
      dtype: plan.dtype ?? null,
      tied: plan.tied,
      tensors: plan.stateDict.size,
    };
    if (ctx.dryRun) {
      ctx.report("writeModel", { ...report, files, estimated: options.format === "bin" });
      return;
    }
    const onProgress = (done: number, total: number) =>
      ctx.emit({ type: "progress", stage: "writeModel", done, total, unit: "bytes" });
    let written: string[];
    if (options.format === "safetensors") {
      written = (await writeSafetensorsSharded(ctx.outDir, plan.stateDict, {
        maxShardSize,
        indexMetadata,
        signal: ctx.signal,
        onProgress,
        ...outputBytesHook(ctx),
      })).files;
    } else {
      const r = await writeTorchSharded(ctx.outDir, plan.stateDict, {
        maxShardSize,
        signal: ctx.signal,
        onProgress,
        ...outputBytesHook(ctx),
      });
      written = [...r.files];
      if (r.index && !written.some((f) => f.endsWith("pytorch_model.bin.index.json"))) {
        written.push("pytorch_model.bin.index.json");
      }
    }
    if (plan.config) await Deno.writeFile(join(ctx.outDir, "config.json"), plan.config);
    if (plan.generationConfig) {
      await Deno.writeFile(join(ctx.outDir, "generation_config.json"), plan.generationConfig);
    }
    const after = await adapterFilesIn(ctx.outDir);
    if (after.length > 0) {
      throw new CkptError(
        "ADAPTER_IN_MERGED",
        `Cannot finish the merged folder: adapter files appeared (${after.join(", ")})`,
        { file: join(ctx.outDir, after[0]!) },
      );
    }
    const sizes: { path: string; bytes: number }[] = [];
    for (
      const p of [
        ...written,
        ...(plan.config ? ["config.json"] : []),
        ...(plan.generationConfig ? ["generation_config.json"] : []),
      ]
    ) {
      const name = p.startsWith(ctx.outDir) ? p.slice(ctx.outDir.length).replace(/^\/+/, "") : p;
      sizes.push({ path: name, bytes: (await Deno.stat(join(ctx.outDir, name))).size });
    }
    ctx.report("writeModel", { ...report, files: sizes });
  },
};
