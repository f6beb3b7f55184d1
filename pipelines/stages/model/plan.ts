/**
 * The merged model writeModel writes, decided before any byte is: every float tensor cast lazily
 * to the output dtype, tied embeddings resolved as transformers does, `config.json` made
 * consistent with the weights (dtype, `tie_word_embeddings`, `vocab_size`), `generation_config.json`
 * taken as is. Reads the embeddings only to compare them.
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../../../errors.ts";
import { castRef } from "../../../formats/cast.ts";
import { type DType, DTYPES, isFloatDType } from "../../../formats/dtype.ts";
import { rowCount, rowNumel, StateDict, type TensorRef } from "../../../formats/state_dict.ts";
import { torchTensor } from "../../../formats/torch/values.ts";
import { dumpPyJson, fromPlain, isObject, parsePyJson, type PyJson, toPlain } from "../_pyjson.ts";
import { inputReadError } from "../../../formats/read_text.ts";

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

/** Bytes of each tensor {@linkcode sameTensor} reads first: most different tensors differ at once. */
const FIRST_COMPARE_BYTES = 64 << 10;
/** The most it reads of each at a time. */
const MAX_COMPARE_BYTES = 8 << 20;

/**
 * True when two refs hold the same bytes (same dtype and shape), compared in row blocks that start
 * at about 64 KiB and double up to 8 MiB: an untied head that differs from the embedding is told
 * apart after a few rows, not after two 8 MiB reads into fresh memory.
 */
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
  const maxStep = Math.max(1, Math.floor(MAX_COMPARE_BYTES / rowBytes));
  let step = Math.max(1, Math.floor(FIRST_COMPARE_BYTES / rowBytes));
  for (let r = 0; r < rows; r += step, step = Math.min(maxStep, step * 2)) {
    signal?.throwIfAborted();
    const end = Math.min(rows, r + step);
    const [x, y] = await Promise.all([a.read(r, end), b.read(r, end)]);
    if (x.byteLength !== y.byteLength) return false;
    for (let i = 0; i < x.byteLength; i++) if (x[i] !== y[i]) return false;
  }
  return true;
}

/** The config object holding `key`: the top level, else `text_config` when only it has it. */
function configHolder(config: Map<string, PyJson>, key: string): Map<string, PyJson> {
  if (config.has(key)) return config;
  const text = config.get("text_config");
  if (isObject(text) && text.has(key)) return text;
  return config;
}

/**
 * The bytes of `path`, undefined when it does not exist; any other failure (no permission, a
 * folder, an I/O error) is `FS_PERMISSION` or `CONFIG_JSON` naming the file, never taken for
 * absence: a config that cannot be read must not silently go missing from the output.
 */
async function readFileIfAny(path: string, what: string): Promise<Uint8Array | undefined> {
  try {
    return await Deno.readFile(path);
  } catch (cause) {
    if (cause instanceof Deno.errors.NotFound) return undefined;
    throw inputReadError(cause, "CONFIG_JSON", what, path);
  }
}

/**
 * The model folder's `generation_config.json` as it is (it is copied byte for byte), or undefined
 * when there is none: `JSON_PARSE` when it is not JSON, `CONFIG_JSON` when not a JSON object (the
 * output must not carry a file transformers cannot read).
 */
export async function readGenerationConfig(modelDir: string): Promise<Uint8Array | undefined> {
  const path = join(modelDir, "generation_config.json");
  const bytes = await readFileIfAny(path, "generation config");
  if (bytes === undefined) return undefined;
  if (!isObject(parsePyJson(new TextDecoder().decode(bytes), path))) {
    throw new CkptError("CONFIG_JSON", `Cannot use "${path}": it is not a JSON object`, {
      file: path,
    });
  }
  return bytes;
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
  /** Computed tensors (merged weights, replacements) that `dtype` recomputes straight into it
   * (one rounding) instead of casting their values (`TensorRef.cast`). */
  recomputedInDtype: number;
}

/** What {@linkcode planModel} takes besides the weights. */
export interface PlanModelOptions {
  /** Output dtype of float tensors; default: kept. */
  dtype?: DType;
  /** Output format (a `.bin` keeps tied keys, sharing one storage). */
  format: "safetensors" | "bin";
  /** Tied embeddings rule. */
  tied: "auto" | "keep-both" | "drop";
  /** The model config the stages hold (applied over the file's text). */
  modelConfig?: Record<string, unknown> | undefined;
  /** Folder with the model's `config.json` and `generation_config.json`. */
  modelDir?: string | undefined;
  /** Write `config.json`. */
  writeConfig: boolean;
  /** Aborts the embedding comparison. */
  signal?: AbortSignal;
}

/**
 * `config.json` as an order-keeping tree: the file's exact text (key order, int/float) with the
 * values of `modelConfig` that differ applied over it. Undefined when there is neither.
 */
function readModelConfig(
  fileText: Uint8Array | undefined,
  options: PlanModelOptions,
): Map<string, PyJson> | undefined {
  let config: Map<string, PyJson> | undefined;
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
  return config;
}

/** `input` and `output` share one storage (torch.save keeps both keys). */
function shareStorage(out: StateDict, input: string, output: string): void {
  const shared = torchTensor(out.require(input));
  out.set(input, shared);
  out.set(output, shared);
}

/**
 * Resolves tied embeddings as transformers does: equal and tied, safetensors drops the head (a
 * `.bin` shares one storage); different but tied, `tie_word_embeddings` becomes false; `TIED_WEIGHTS`
 * when `drop` is asked of different tensors or the config says untied without a head.
 */
async function resolveTied(
  sd: StateDict,
  out: StateDict,
  config: Map<string, PyJson> | undefined,
  options: PlanModelOptions,
): Promise<ModelPlan["tied"]> {
  const { input, output } = embeddingKeys(out);
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
        return "dropped-lm-head";
      }
      shareStorage(out, input, output); // torch.save keeps both keys, sharing one storage
      return "kept-both";
    }
    if (!equal && tieFlag === true) {
      tieHolder!.set("tie_word_embeddings", false);
      return "untied";
    }
    return "kept-both";
  }
  if (input && !output && tieFlag === true && options.format === "bin") {
    // model.state_dict() (what save_pretrained(safe_serialization=False) pickles) holds both keys
    shareStorage(out, input, "lm_head.weight");
    return "kept-both";
  }
  if (input && !output && tieFlag === false) {
    throw new CkptError(
      "TIED_WEIGHTS",
      `Cannot write the model: config.json says tie_word_embeddings is false but there is no lm_head weight`,
      { tensor: "lm_head.weight" },
    );
  }
  return "none";
}

/** The output dtype: the one asked for, else that of the input embedding or first float weight. */
function outputDtype(out: StateDict, dtype: DType | undefined): DType | undefined {
  if (dtype) return dtype;
  const { input } = embeddingKeys(out);
  const ref = (input ? out.get(input) : undefined) ??
    [...out].map(([, r]) => r).find((r) => isFloatDType(r.dtype));
  return ref?.dtype;
}

/**
 * The `config.json` bytes: `torch_dtype`/`dtype` set to the output dtype, `vocab_size` to the
 * embedding rows; the file's own bytes when nothing changed.
 */
function configBytes(
  config: Map<string, PyJson>,
  out: StateDict,
  dtype: DType | undefined,
  fileText: Uint8Array | undefined,
): Uint8Array {
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
  const { input } = embeddingKeys(out);
  if (input) {
    const rows = out.require(input).shape[0]!;
    const holder = configHolder(config, "vocab_size");
    const v = holder.get("vocab_size");
    if (typeof v === "number" && v !== rows) holder.set("vocab_size", rows);
  }
  const original = fileText ? new TextDecoder().decode(fileText) : undefined;
  const unchanged = original !== undefined &&
    JSON.stringify(toPlain(parsePyJson(original))) === JSON.stringify(toPlain(config));
  if (unchanged) return fileText!;
  return new TextEncoder().encode(dumpPyJson(config, { indent: 2, ensureAscii: false }) + "\n");
}

/**
 * Prepares a merged model: casts (a computed tensor is recomputed in the output dtype, one
 * rounding), tie decision, config.json text. Reads the embeddings only to compare them.
 */
export async function planModel(sd: StateDict, options: PlanModelOptions): Promise<ModelPlan> {
  const out = new StateDict();
  out.metadata = { ...sd.metadata };
  let recomputedInDtype = 0;
  for (const [k, r] of sd) {
    const cast = options.dtype ? castRef(r, options.dtype) : r;
    if (cast !== r && r.cast) recomputedInDtype++;
    out.set(k, cast);
  }
  const fileText = options.modelDir
    ? await readFileIfAny(join(options.modelDir, "config.json"), "model config")
    : undefined;
  const config = readModelConfig(fileText, options);
  const tied = await resolveTied(sd, out, config, options);
  const dtype = outputDtype(out, options.dtype);
  const cfgBytes = config && options.writeConfig
    ? configBytes(config, out, dtype, fileText)
    : undefined;
  const generationConfig = options.modelDir
    ? await readGenerationConfig(options.modelDir)
    : undefined;
  return {
    stateDict: out,
    dtype,
    ...(cfgBytes ? { config: cfgBytes } : {}),
    ...(generationConfig ? { generationConfig } : {}),
    tied,
    recomputedInDtype,
  };
}
