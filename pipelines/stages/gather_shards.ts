/**
 * The gatherShards stage and library function: a lazy {@linkcode StateDict} from any weights input
 * the registered input kinds read, with wrapper prefixes stripped, plus the model's `config.json`.
 *
 * Built-in kinds (see {@linkcode registerInputKind} for more):
 * - `hf-shards`: a folder with `model.safetensors.index.json`, or that index file itself;
 * - `torch-shards`: a folder with `pytorch_model.bin.index.json`, or that index file itself;
 * - `safetensors`: a `.safetensors` file, or a folder with `model.safetensors`;
 * - `torch`: a torch.save file (`.bin`, `.pt`, `.pth`, or any zip), or a folder with `pytorch_model.bin`.
 * Folder kinds are asked before file kinds; a folder holding both safetensors and `.bin` weights
 * opens the safetensors ones, as transformers does.
 *
 * Wrapper names are removed from every key: leading `module.` (DDP) and `_orig_mod.`
 * (torch.compile), and the `_fsdp_wrapped_module.`, `_checkpoint_wrapped_module.` and `_orig_mod.`
 * segments anywhere (FSDP1, activation checkpointing). Two keys that become equal are an error
 * (`GATHER_DUPLICATE`).
 *
 * @example Stripping wrapper names
 * ```ts
 * import { stripWrapperNames } from "./gather_shards.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(
 *   stripWrapperNames("module.model.layers.0._fsdp_wrapped_module.mlp.weight"),
 *   "model.layers.0.mlp.weight",
 * );
 * ```
 * @module
 */
import { z } from "zod";
import { basename, dirname, join } from "node:path";
import { CkptError } from "../../errors.ts";
import { StateDict } from "../../formats/state_dict.ts";
import { openHfShards, openSafetensors } from "../../formats/safetensors.ts";
import { openTorchShards, openTorchStateDict } from "../../formats/torch/state_dict.ts";
import {
  detectInputKind,
  getInputKind,
  type InputKind,
  registerInputKind,
} from "../input_kinds.ts";
import type { Stage, StageContext } from "../stage.ts";
import "../input_dcp.ts"; // registers the torch.distributed.checkpoint ("dcp") input kind

/** Leading prefixes removed by default (repeatedly). */
export const DEFAULT_STRIP_PREFIXES: readonly string[] = ["module.", "_orig_mod."];
/** Whole key segments removed anywhere by default. */
export const DEFAULT_STRIP_SEGMENTS: readonly string[] = [
  "_fsdp_wrapped_module",
  "_checkpoint_wrapped_module",
  "_orig_mod",
];

/** Options of {@linkcode stripWrapperNames}. */
export interface StripOptions {
  /** Leading prefixes to remove, repeatedly (default {@linkcode DEFAULT_STRIP_PREFIXES}). */
  prefixes?: readonly string[];
  /** Dot-separated segments to remove anywhere (default {@linkcode DEFAULT_STRIP_SEGMENTS}). */
  segments?: readonly string[];
}

/** Removes wrapper prefixes and segments from one key. */
export function stripWrapperNames(key: string, options: StripOptions = {}): string {
  const prefixes = options.prefixes ?? DEFAULT_STRIP_PREFIXES;
  const segments = options.segments ?? DEFAULT_STRIP_SEGMENTS;
  let k = key;
  for (let changed = true; changed;) {
    changed = false;
    for (const p of prefixes) {
      if (p.length > 0 && k.startsWith(p) && k.length > p.length) {
        k = k.slice(p.length);
        changed = true;
      }
    }
  }
  if (segments.length > 0) {
    const parts = k.split(".");
    const kept = parts.filter((s, i) => i === parts.length - 1 || !segments.includes(s));
    k = kept.join(".");
  }
  return k;
}

/** Renames every key of `sd` with {@linkcode stripWrapperNames}; the result owns `sd`'s files. */
export function stripStateDict(sd: StateDict, options: StripOptions = {}): StateDict {
  const out = new StateDict();
  const from = new Map<string, string>();
  for (const [name, ref] of sd) {
    const k = stripWrapperNames(name, options);
    const prior = from.get(k);
    if (prior !== undefined) {
      throw new CkptError(
        "GATHER_DUPLICATE",
        `Cannot strip wrapper names: "${prior}" and "${name}" both become "${k}"`,
        { tensor: k, details: { keys: [prior, name] } },
      );
    }
    from.set(k, name);
    out.set(k, ref);
  }
  out.metadata = { ...sd.metadata };
  out.adopt(sd);
  return out;
}

async function statOf(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch {
    return undefined;
  }
}

async function sniff(path: string, n: number): Promise<Uint8Array> {
  const f = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const r = await f.read(buf.subarray(got));
      if (r === null || r === 0) break;
      got += r;
    }
    return buf.subarray(0, got);
  } finally {
    f.close();
  }
}

/** True when `path` starts like a safetensors file (u64 header length, then `{`). */
async function looksLikeSafetensors(path: string, size: number): Promise<boolean> {
  if (size < 10) return false;
  const head = await sniff(path, 9);
  if (head.length < 9) return false;
  const n = new DataView(head.buffer, head.byteOffset).getBigUint64(0, true);
  return n > 1n && n + 8n <= BigInt(size) && head[8] === 0x7b;
}

const HF_INDEX = "model.safetensors.index.json";
const TORCH_INDEX = "pytorch_model.bin.index.json";

/** Built-in input kinds (registered when this module loads). */
export const BUILTIN_INPUT_KINDS: readonly InputKind[] = [
  {
    name: "hf-shards",
    summary: "Hugging Face safetensors shards (model.safetensors.index.json)",
    priority: 20,
    async detect(path) {
      const st = await statOf(path);
      if (st?.isDirectory) return (await statOf(join(path, HF_INDEX)))?.isFile === true;
      return st?.isFile === true && path.endsWith(".safetensors.index.json");
    },
    open: (path) => openHfShards(path),
  },
  {
    name: "torch-shards",
    summary: "torch .bin shards (pytorch_model.bin.index.json)",
    priority: 19,
    async detect(path) {
      const st = await statOf(path);
      if (st?.isDirectory) {
        if ((await statOf(join(path, HF_INDEX)))?.isFile) return false;
        if ((await statOf(join(path, "model.safetensors")))?.isFile) return false;
        return (await statOf(join(path, TORCH_INDEX)))?.isFile === true;
      }
      return st?.isFile === true && path.endsWith(".bin.index.json");
    },
    open: (path) => openTorchShards(path),
  },
  {
    name: "safetensors",
    summary: "one safetensors file (or a folder with model.safetensors)",
    priority: 10,
    async detect(path) {
      const st = await statOf(path);
      if (st?.isDirectory) return (await statOf(join(path, "model.safetensors")))?.isFile === true;
      if (!st?.isFile) return false;
      return path.endsWith(".safetensors") || await looksLikeSafetensors(path, st.size);
    },
    async open(path) {
      const st = await statOf(path);
      return await openSafetensors(st?.isDirectory ? join(path, "model.safetensors") : path);
    },
  },
  {
    name: "torch",
    summary: "one torch.save file (.bin/.pt/.pth, or a folder with pytorch_model.bin)",
    priority: 9,
    async detect(path) {
      const st = await statOf(path);
      if (st?.isDirectory) return (await statOf(join(path, "pytorch_model.bin")))?.isFile === true;
      if (!st?.isFile) return false;
      if (/\.(bin|pt|pth)$/.test(path)) return true;
      const head = await sniff(path, 4);
      return head.length === 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 3 &&
        head[3] === 4;
    },
    async open(path) {
      const st = await statOf(path);
      return await openTorchStateDict(st?.isDirectory ? join(path, "pytorch_model.bin") : path);
    },
  },
];
for (const kind of BUILTIN_INPUT_KINDS) registerInputKind(kind);

/** Options of {@linkcode gatherShards}. */
export interface GatherOptions {
  /** Input kind name; default: detected. */
  kind?: string;
  /** Leading prefixes to strip, or `false` to strip none (default {@linkcode DEFAULT_STRIP_PREFIXES}). */
  stripPrefixes?: readonly string[] | false;
  /** Segments to strip anywhere, or `false` (default {@linkcode DEFAULT_STRIP_SEGMENTS}). */
  stripSegments?: readonly string[] | false;
  /** `config.json` to use, or `false` for none; default: `config.json` in the input folder (or beside the input file). */
  config?: string | false;
  /** Aborts opening. */
  signal?: AbortSignal;
}

/** What {@linkcode gatherShards} returns. */
export interface GatherResult {
  /** The lazy state dict (close it when done). */
  stateDict: StateDict;
  /** The parsed `config.json`, when one was found. */
  modelConfig?: Record<string, unknown>;
  /** Path of the config.json read, if any. */
  configPath?: string;
  /** The model's folder: an explicit `config.json`'s folder, else the input folder (or the input
   * file's folder). `generation_config.json` and tokenizer fallbacks come from there. */
  modelDir: string;
  /** The input kind used. */
  kind: string;
}

/**
 * Reads a model's `config.json`: `INPUT_MISSING` when it cannot be read, `CONFIG_JSON` when it is not
 * a JSON object.
 */
export async function readModelConfig(configPath: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(configPath);
  } catch (cause) {
    throw new CkptError("INPUT_MISSING", `Cannot read "${configPath}": it does not exist`, {
      file: configPath,
      cause,
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new CkptError(
      "CONFIG_JSON",
      `Cannot parse "${configPath}": ${(cause as Error).message}`,
      {
        file: configPath,
        cause,
      },
    );
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new CkptError("CONFIG_JSON", `Cannot use "${configPath}": it is not a JSON object`, {
      file: configPath,
    });
  }
  return parsed as Record<string, unknown>;
}

/**
 * Opens `path` (file or folder) with the matching input kind and strips wrapper names.
 * `INPUT_MISSING` / `INPUT_KIND` when it cannot be read; `CONFIG_JSON` when config.json is not an
 * object.
 */
export async function gatherShards(
  path: string,
  options: GatherOptions = {},
): Promise<GatherResult> {
  const kind = options.kind !== undefined
    ? getInputKind(options.kind)
    : await detectInputKind(path);
  options.signal?.throwIfAborted();
  const st = await statOf(path);
  if (!st) {
    throw new CkptError("INPUT_MISSING", `Cannot read weights from "${path}": it does not exist`, {
      file: path,
    });
  }
  // The model's folder is where its config.json lives: generation_config.json and the tokenizer
  // are looked up beside it (an explicit config names a base folder, e.g. for DCP shards).
  const modelDir = typeof options.config === "string" && basename(options.config) === "config.json"
    ? dirname(options.config)
    : st.isDirectory
    ? path
    : dirname(path);
  let modelConfig: Record<string, unknown> | undefined;
  let configPath: string | undefined = options.config === false ? undefined : options.config;
  if (options.config === undefined) {
    const candidate = join(modelDir, "config.json");
    if ((await statOf(candidate))?.isFile && basename(path) !== "config.json") {
      configPath = candidate;
    }
  }
  if (configPath !== undefined) modelConfig = await readModelConfig(configPath);
  const raw = await kind.open(path, options.signal ? { signal: options.signal } : {});
  let stateDict: StateDict;
  try {
    stateDict = stripStateDict(raw, {
      prefixes: options.stripPrefixes === false
        ? []
        : options.stripPrefixes ?? DEFAULT_STRIP_PREFIXES,
      segments: options.stripSegments === false
        ? []
        : options.stripSegments ?? DEFAULT_STRIP_SEGMENTS,
    });
  } catch (err) {
    await raw.close();
    throw err;
  }
  return {
    stateDict,
    ...(modelConfig === undefined ? {} : { modelConfig }),
    ...(configPath === undefined ? {} : { configPath }),
    modelDir,
    kind: kind.name,
  };
}

/** The gatherShards options schema (unknown keys rejected). */
const gatherShardsOptions = z.strictObject({
  /** Weights file or folder (relative to the config). */
  from: z.string().min(1),
  /** Input kind; default: detected (`hf-shards`, `torch-shards`, `safetensors`, `torch`, or a registered kind). */
  kind: z.string().min(1).optional(),
  /** Leading prefixes to strip, or `false` for none. */
  stripPrefixes: z.union([z.array(z.string()), z.literal(false)]).optional(),
  /** Segments to strip anywhere, or `false` for none. */
  stripSegments: z.union([z.array(z.string()), z.literal(false)]).optional(),
  /** config.json to use instead of the one beside the weights. */
  config: z.string().min(1).optional(),
});

/** Options of the gatherShards stage, as a config writes them. */
export interface GatherShardsOptions {
  /** Weights file or folder (relative to the config). */
  from: string;
  /** Input kind; default: detected (`hf-shards`, `torch-shards`, `safetensors`, `torch`, `dcp`, or a registered kind). */
  kind?: string | undefined;
  /** Leading prefixes to strip, or `false` for none (default `module.`, `_orig_mod.`). */
  stripPrefixes?: string[] | false | undefined;
  /** Segments to strip anywhere, or `false` for none (default `_fsdp_wrapped_module`, `_checkpoint_wrapped_module`, `_orig_mod`). */
  stripSegments?: string[] | false | undefined;
  /** config.json to use instead of the one beside the weights. */
  config?: string | undefined;
}

/** The gatherShards stage: sets `ctx.stateDict`, `ctx.modelConfig` and `ctx.modelDir`. */
export const gatherShardsStage: Stage = {
  name: "gatherShards",
  summary:
    "open weights (safetensors, HF shards, torch .bin/.pt, shard folders, DCP) as a lazy state dict",
  options: gatherShardsOptions,
  /**
   * Checks, without opening any weights: the input exists and a kind recognises it (or the named
   * kind exists), and an explicit `config` parses (`INPUT_MISSING`, `INPUT_KIND`, `CONFIG_JSON`).
   */
  async preflight(ctx: StageContext, options: z.output<typeof gatherShardsOptions>): Promise<void> {
    const from = ctx.resolve(options.from);
    if (options.kind !== undefined) getInputKind(options.kind);
    else await detectInputKind(from);
    if (!(await statOf(from))) {
      throw new CkptError(
        "INPUT_MISSING",
        `Cannot read weights from "${from}": it does not exist`,
        {
          file: from,
        },
      );
    }
    if (options.config !== undefined) await readModelConfig(ctx.resolve(options.config));
  },
  async run(ctx: StageContext, options: z.output<typeof gatherShardsOptions>): Promise<void> {
    const from = ctx.resolve(options.from);
    const result = await gatherShards(from, {
      ...(options.kind === undefined ? {} : { kind: options.kind }),
      ...(options.stripPrefixes === undefined ? {} : { stripPrefixes: options.stripPrefixes }),
      ...(options.stripSegments === undefined ? {} : { stripSegments: options.stripSegments }),
      ...(options.config === undefined ? {} : { config: ctx.resolve(options.config) }),
      signal: ctx.signal,
    });
    if (ctx.stateDict && ctx.stateDict !== result.stateDict) await ctx.stateDict.close();
    ctx.stateDict = result.stateDict;
    ctx.modelDir = result.modelDir;
    if (result.modelConfig) ctx.modelConfig = result.modelConfig;
    ctx.addInput(from, "weights");
    if (result.configPath) ctx.addInput(result.configPath, "config");
    ctx.report("gatherShards", {
      kind: result.kind,
      tensors: result.stateDict.size,
      bytes: result.stateDict.totalBytes(),
      config: result.configPath ?? null,
    });
    ctx.emit({
      type: "log",
      level: "info",
      stage: "gatherShards",
      message:
        `${result.kind}: ${result.stateDict.size} tensors, ${result.stateDict.totalBytes()} bytes`,
    });
  },
};
