/**
 * The gatherShards stage and library function: a lazy {@linkcode StateDict} from any weights input
 * an input kind reads (`readers/kinds.ts`: torch.distributed.checkpoint folders, HF safetensors
 * shards, safetensors files, torch `.bin/.pt` files and shard folders, plus any kinds passed
 * explicitly), with wrapper prefixes stripped (`readers/names.ts`), plus the model's `config.json`.
 *
 * @example Gathering with an extra input kind
 * ```ts
 * import { gatherShards } from "./gather_shards.ts";
 * import type { InputKind } from "../../readers/kinds.ts";
 * import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const one: InputKind = {
 *   name: "example-one",
 *   detect: (probe) => probe.path.endsWith(".one"),
 *   open: () => Promise.resolve(new StateDict([["module.w", tensorFromBytes("U8", [1], new Uint8Array(1))]])),
 * };
 * const file = await Deno.makeTempFile({ suffix: ".one" });
 * const { stateDict, kind } = await gatherShards(file, { kinds: [one], config: false });
 * assert.equal(kind, "example-one");
 * assert.deepEqual([...stateDict.keys()], ["w"]);
 * await Deno.remove(file);
 * ```
 * @module
 */
import { z } from "zod";
import { basename, dirname, join } from "node:path";
import { CkptError } from "../../errors.ts";
import { readTextInput } from "../../formats/read_text.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import { type InputKind, resolveInput } from "../../readers/kinds.ts";
import {
  DEFAULT_STRIP_PREFIXES,
  DEFAULT_STRIP_SEGMENTS,
  stripStateDict,
} from "../../readers/names.ts";
import { defineStage, type Stage, type StageContext } from "../stage.ts";
import { parsePyJson, toPlain } from "./_pyjson.ts";

export {
  DEFAULT_STRIP_PREFIXES,
  DEFAULT_STRIP_SEGMENTS,
  type StripOptions,
  stripStateDict,
  stripWrapperNames,
} from "../../readers/names.ts";

/** Options of {@linkcode gatherShards}. */
export interface GatherOptions {
  /** Input kind name; default: detected. */
  kind?: string;
  /** Extra input kinds, asked before the built-ins (one with a built-in's name replaces it). */
  kinds?: readonly InputKind[];
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

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/**
 * Reads a model's `config.json`: `INPUT_MISSING` when it cannot be read, `CONFIG_JSON` when it is not
 * a JSON object.
 */
export async function readModelConfig(configPath: string): Promise<Record<string, unknown>> {
  const text = await readTextInput(configPath, { code: "INPUT_MISSING", what: "model config" });
  let parsed: unknown;
  try {
    // as Python's json.loads reads it (transformers writes NaN/Infinity as json.dumps does)
    parsed = toPlain(parsePyJson(text));
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
 * The model's folder and config.json for the weights at `path` (a folder when `isDirectory`), as
 * gatherShards finds them: the folder is where config.json lives, and generation_config.json and
 * the tokenizer are looked up beside it (an explicit config names a base folder, e.g. for DCP
 * shards). Opens no weights.
 */
async function locateModel(
  path: string,
  isDirectory: boolean,
  config: string | false | undefined,
): Promise<{ modelDir: string; configPath: string | undefined }> {
  const modelDir = typeof config === "string" && basename(config) === "config.json"
    ? dirname(config)
    : isDirectory
    ? path
    : dirname(path);
  let configPath: string | undefined = config === false ? undefined : config;
  if (config === undefined) {
    const candidate = join(modelDir, "config.json");
    if (await isFile(candidate) && basename(path) !== "config.json") configPath = candidate;
  }
  return { modelDir, configPath };
}

/**
 * Opens `path` (file or folder) with the named or detected input kind and strips wrapper names.
 * `INPUT_MISSING` / `INPUT_KIND` when it cannot be read; `CONFIG_JSON` when config.json is not an
 * object.
 */
export async function gatherShards(
  path: string,
  options: GatherOptions = {},
): Promise<GatherResult> {
  const { probe, kind } = await resolveInput(path, options);
  options.signal?.throwIfAborted();
  const { modelDir, configPath } = await locateModel(path, probe.isDirectory, options.config);
  let modelConfig: Record<string, unknown> | undefined;
  if (configPath !== undefined) modelConfig = await readModelConfig(configPath);
  const raw = await kind.open(probe, options.signal ? { signal: options.signal } : {});
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
  /** Input kind; default: detected (`dcp`, `dcp-hf`, `hf-shards`, `safetensors`, `torch-shards`, `torch`, or an extra kind the stage was built with). */
  kind: z.string().min(1).optional(),
  /** Leading prefixes to strip, or `false` for none (default `module.`, `_orig_mod.`). */
  stripPrefixes: z.union([z.array(z.string()), z.literal(false)]).optional(),
  /** Segments to strip anywhere, or `false` for none (default `_fsdp_wrapped_module`, `_checkpoint_wrapped_module`, `_orig_mod`). */
  stripSegments: z.union([z.array(z.string()), z.literal(false)]).optional(),
  /** config.json to use instead of the one beside the weights. */
  config: z.string().min(1).optional(),
});

/** What {@linkcode createGatherShardsStage} takes. */
export interface GatherShardsStageOptions {
  /** Extra input kinds, asked before the built-ins (one with a built-in's name replaces it). */
  kinds?: readonly InputKind[];
}

/**
 * A gatherShards stage that also reads the given extra input kinds; use it in place of the built-in
 * one (`stages: { ...await builtinStages(), gatherShards: createGatherShardsStage({ kinds }) }`).
 */
export function createGatherShardsStage(
  stageOptions: GatherShardsStageOptions = {},
): Stage {
  const kinds = stageOptions.kinds ?? [];
  return defineStage({
    name: "gatherShards",
    summary:
      "open weights (safetensors, HF shards, torch .bin/.pt, shard folders, DCP) as a lazy state dict",
    options: gatherShardsOptions,
    split: "every-part",
    /**
     * Checks, without opening any weights: the input exists and a kind recognises it (or the named
     * kind exists), and the model's config.json parses (`INPUT_MISSING`, `INPUT_KIND`,
     * `CONFIG_JSON`). Sets `ctx.modelDir` and `ctx.modelConfig` for the later stages' preflights
     * (the tokenizer's folder, the value head's width); the runner restores them before the run.
     */
    async preflight(ctx: StageContext, options): Promise<void> {
      const from = ctx.resolve(options.from);
      const { probe } = await resolveInput(from, { kind: options.kind, kinds });
      const config = options.config === undefined ? undefined : ctx.resolve(options.config);
      const { modelDir, configPath } = await locateModel(from, probe.isDirectory, config);
      ctx.modelDir = modelDir;
      if (configPath !== undefined) ctx.modelConfig = await readModelConfig(configPath);
    },
    async run(ctx: StageContext, options): Promise<void> {
      const from = ctx.resolve(options.from);
      const result = await gatherShards(from, {
        ...(options.kind === undefined ? {} : { kind: options.kind }),
        kinds,
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
  });
}

/** The gatherShards stage: sets `ctx.stateDict`, `ctx.modelConfig` and `ctx.modelDir`. */
export const gatherShardsStage: Stage = createGatherShardsStage();
