/**
 * The mergeLora stage: wraps the current state dict with {@linkcode mergeLora} so that adapted
 * weights compute `W + s·B·A` (on WebGPU or the CPU) when the writer reads them. Saved PEFT
 * adapters (folder or weights file, several with weights) and PEFT-wrapped state dicts (HALOs' FSDP
 * gather: `.base_layer.`, `.lora_A.default.`; give `r` and `alpha`) are both accepted.
 *
 * Sets `ctx.adapterDir` (tokenizer files are looked up there first) and reports the merge plan, the
 * backend used and `moduleChanges`: ‖ΔW‖/‖W‖ per merged module, measured on the merged blocks as
 * the writer reads them (`MergeReport.changes`), so the manifest has them for the whole run.
 *
 * Tied embeddings (config.json's `tie_word_embeddings`; without it, a checkpoint with no
 * `lm_head.weight`) that an adapter changes differently (a LoRA or `modules_to_save` copy on
 * `embed_tokens` or on `lm_head`) are untied to export what the trained PeftModel computes: the
 * changed side merged, the other the original weight, `tie_word_embeddings: false`; a warning is
 * logged and the report gets `tiedEmbeddings` and `warnings`. `tiedEmbeddings: "refuse"` fails with
 * `LORA_TIED_EMBEDDINGS` instead (`merge/_lora_tied.ts` has the reasoning).
 *
 * @example Options as a config writes them
 * ```ts
 * import { mergeLoraStage } from "./merge_lora.ts";
 * import { parseStageOptions } from "../stage.ts";
 * import assert from "node:assert/strict";
 *
 * const opts = parseStageOptions(mergeLoraStage, {
 *   adapter: [{ path: "a", weight: 0.5 }, "b"],
 *   backend: "cpu",
 * }) as { safe: boolean };
 * assert.equal(opts.safe, false);
 * assert.equal(mergeLoraStage.options.safeParse({ adapter: "a", alhpa: 2 }).success, false);
 * ```
 * @module
 */
import { z } from "zod";
import { dirname } from "node:path";
import { CkptError } from "../../errors.ts";
import { isWrappedStateDict, loadAdapter } from "../../formats/peft.ts";
import { mergeLora } from "../../merge/lora.ts";
import { untargetedError, untargetedModules } from "../../merge/_lora_targets.ts";
import type { AdapterInput, MergeLoraOptions } from "../../merge/lora_types.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import { parseDType } from "../../formats/dtype.ts";
import type { MergeDType } from "../../kernels/types.ts";
import { defineStage, type Stage, type StageContext } from "../stage.ts";
import type { Same } from "./_options.ts";

const adapterEntry = z.union([
  z.string().min(1),
  z.strictObject({
    /** Adapter folder or weights file. */
    path: z.string().min(1),
    /** Weight of this adapter's delta. Default 1. */
    weight: z.number().finite().optional(),
    /** Name for reports. */
    name: z.string().min(1).optional(),
  }),
]);

/** The mergeLora options schema (unknown keys rejected). */
const mergeLoraOptions = z.strictObject({
  /** Adapter(s): a path, or a list of paths / `{ path, weight, name }`, merged in order. */
  adapter: z.union([adapterEntry, z.array(adapterEntry).min(1)]).optional(),
  /** Merge backend; default: the run's `--backend`, else `"auto"`. */
  backend: z.enum(["auto", "webgpu", "cpu"]).optional(),
  /** Refuse non-finite merged values (PEFT's `safe_merge`). Default false. */
  safe: z.boolean().default(false),
  /** Report adapter keys that match nothing instead of failing. Default false. */
  allowUnmatched: z.boolean().default(false),
  /** LoRA tensors of modules the adapter's config would not adapt (PEFT ignores them): `"refuse"`
   * (default, `LORA_UNTARGETED`) or `"skip"` them as PEFT does. */
  untargeted: z.enum(["refuse", "skip"]).default("refuse"),
  /** Dtype of merged tensors (`bf16`, `f16`, `f32`, ...; one rounding); default: each base tensor's
   * dtype. The spellings are read by `formats/dtype.ts`'s `parseDType`. */
  outDtype: z.enum(["BF16", "F16", "F32", "bf16", "f16", "f32", "bfloat16", "float16", "float32"])
    .optional(),
  /** Rank of a PEFT-wrapped state dict's LoRA (HALOs `lora_r`); a numeric string (`--var`) too. */
  r: z.union([
    z.number().int().positive(),
    z.string().regex(/^[1-9]\d*$/, "a positive integer").transform(Number),
  ]).optional(),
  /** Alpha of a PEFT-wrapped state dict's LoRA (HALOs `lora_alpha`); a numeric string too. */
  alpha: z.union([
    z.number().positive(),
    z.string().regex(/^(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/, "a positive number").transform(Number)
      .refine((n) => n > 0, "a positive number"),
  ]).optional(),
  /** rsLoRA scaling for a wrapped state dict. Default false. */
  useRslora: z.boolean().default(false),
  /** Tied embeddings the adapter changes differently: `"untie"` them (default; a warning) or
   * `"refuse"` (`LORA_TIED_EMBEDDINGS`). */
  tiedEmbeddings: z.enum(["untie", "refuse"]).default("untie"),
});

/** One adapter of the mergeLora stage: a path, or a path with a weight and a name. */
export type MergeLoraAdapterEntry = string | {
  /** Adapter folder or weights file. */
  path: string;
  /** Weight of this adapter's delta. Default 1. */
  weight?: number | undefined;
  /** Name for reports. */
  name?: string | undefined;
};

/** Options of the mergeLora stage, as a config writes them (the schema's input type). */
export interface MergeLoraStageOptions {
  /** Adapter(s): a path, or a list of paths / `{ path, weight, name }`, merged in order. */
  adapter?: MergeLoraAdapterEntry | MergeLoraAdapterEntry[] | undefined;
  /** Merge backend; default: the run's `--backend`, else `"auto"`. */
  backend?: "auto" | "webgpu" | "cpu" | undefined;
  /** Refuse non-finite merged values (PEFT's `safe_merge`). Default false. */
  safe?: boolean | undefined;
  /** Report adapter keys that match nothing instead of failing. Default false. */
  allowUnmatched?: boolean | undefined;
  /** LoRA tensors of modules the config would not adapt: refuse (default) or skip as PEFT does. */
  untargeted?: "refuse" | "skip" | undefined;
  /** Dtype of merged tensors (one rounding); default: each base tensor's dtype. */
  outDtype?:
    | "BF16"
    | "F16"
    | "F32"
    | "bf16"
    | "f16"
    | "f32"
    | "bfloat16"
    | "float16"
    | "float32"
    | undefined;
  /** Rank of a PEFT-wrapped state dict's LoRA (HALOs `lora_r`); a numeric string (from `--var`) too. */
  r?: number | string | undefined;
  /** Alpha of a PEFT-wrapped state dict's LoRA (HALOs `lora_alpha`); a numeric string too. */
  alpha?: number | string | undefined;
  /** rsLoRA scaling for a wrapped state dict. Default false. */
  useRslora?: boolean | undefined;
  /** Tied embeddings the adapter changes differently: `"untie"` them (default; a warning) or
   * `"refuse"` (`LORA_TIED_EMBEDDINGS`). */
  tiedEmbeddings?: "untie" | "refuse" | undefined;
}

const _sameOptions: Same<z.input<typeof mergeLoraOptions>, MergeLoraStageOptions> = true;

/** `tie_word_embeddings` of a config.json (top level, else `text_config`), if it says. */
function tieFlag(config: Record<string, unknown> | undefined): boolean | undefined {
  const text = config?.text_config;
  for (const holder of [config, text]) {
    if (holder && typeof holder === "object") {
      const v = (holder as Record<string, unknown>).tie_word_embeddings;
      if (typeof v === "boolean") return v;
    }
  }
  return undefined;
}

/**
 * Whether the model ties its output head to the input embedding: as config.json says; without a
 * word on it, when the checkpoint has no `lm_head` tensor (a causal LM without one loads only
 * tied).
 */
export function tiesEmbeddings(
  config: Record<string, unknown> | undefined,
  weights: StateDict,
): boolean {
  return tieFlag(config) ?? ![...weights.keys()].some((k) => k.startsWith("lm_head."));
}

/**
 * After untying: a config.json that does not say `tie_word_embeddings` gets `false` (one that says
 * `true` is set to false by writeModel, which sees the two tensors differ).
 */
function untieConfig(ctx: StageContext): void {
  if (!ctx.modelConfig || tieFlag(ctx.modelConfig) !== undefined) return;
  ctx.modelConfig = { ...ctx.modelConfig, tie_word_embeddings: false };
}

/** The folder of an adapter given as a folder or as its weights file. */
async function adapterFolder(path: string): Promise<string> {
  try {
    return (await Deno.stat(path)).isFile ? dirname(path) : path;
  } catch {
    return dirname(path);
  }
}

/** The mergeLora stage (config name `mergeLora`). */
export const mergeLoraStage: Stage = defineStage({
  name: "mergeLora",
  summary: "merge LoRA adapter(s) into the weights (W + s·B·A), lazily, on WebGPU or CPU",
  options: mergeLoraOptions,
  split: "every-part",
  /**
   * Checks every adapter before any stage runs: it exists, has a weights file whose header reads,
   * a valid `adapter_config.json`, and no LoRA tensors its config would not adapt unless
   * `untargeted: "skip"` (`PEFT_ADAPTER_MISSING`, `PEFT_CONFIG`, `PEFT_UNSUPPORTED`,
   * `LORA_UNTARGETED`).
   * Whether the weights are PEFT-wrapped is only known once gathered, so `r`/`alpha` are checked then.
   */
  async preflight(ctx, options) {
    const entries = options.adapter === undefined
      ? []
      : Array.isArray(options.adapter)
      ? options.adapter
      : [options.adapter];
    for (const e of entries) {
      const path = ctx.resolve(typeof e === "string" ? e : e.path);
      const adapter = await loadAdapter(path, typeof e === "string" ? undefined : e.name);
      try {
        // tensors the adapter's own config would not adapt: refused before anything is merged
        const found = options.untargeted === "skip" ? [] : untargetedModules(adapter);
        if (found.length > 0) throw untargetedError(adapter, found);
      } finally {
        await adapter.tensors.close();
      }
    }
    // where writeTokenizer's preflight looks first, as in the run
    const first = entries[0];
    if (first !== undefined) {
      ctx.adapterDir = await adapterFolder(
        ctx.resolve(typeof first === "string" ? first : first.path),
      );
    }
  },
  async run(ctx, options) {
    const base = ctx.stateDict;
    if (!base) {
      throw new CkptError(
        "STAGE_ORDER",
        "Cannot merge LoRA: no weights yet (put gatherShards before mergeLora)",
      );
    }
    const entries = options.adapter === undefined
      ? []
      : Array.isArray(options.adapter)
      ? options.adapter
      : [options.adapter];
    const adapters: AdapterInput[] = entries.map((e) => {
      if (typeof e === "string") return ctx.resolve(e);
      return {
        path: ctx.resolve(e.path),
        ...(e.weight === undefined ? {} : { weight: e.weight }),
        ...(e.name === undefined ? {} : { name: e.name }),
      };
    });
    for (const a of adapters) {
      ctx.addInput(typeof a === "string" ? a : (a as { path: string }).path, "adapter");
    }
    const wrapped = isWrappedStateDict(base);
    if (wrapped && (options.r === undefined || options.alpha === undefined)) {
      throw new CkptError(
        "LORA_WRAPPED_OPTIONS",
        "Cannot merge a PEFT-wrapped state dict: give `r` and `alpha` (HALOs' lora_r and lora_alpha)",
      );
    }
    if (!wrapped && adapters.length === 0) {
      throw new CkptError(
        "LORA_NO_ADAPTER",
        "Cannot merge LoRA: no `adapter` given and the weights hold no PEFT-wrapped LoRA",
      );
    }
    const mergeOptions: MergeLoraOptions = {
      backend: options.backend ?? ctx.backend ?? "auto",
      safe: options.safe,
      allowUnmatched: options.allowUnmatched,
      untargeted: options.untargeted,
      // the schema admits only spellings of BF16, F16 and F32
      ...(options.outDtype === undefined
        ? {}
        : { outDtype: parseDType(options.outDtype) as MergeDType }),
      ...(wrapped
        ? { wrapped: { r: options.r!, alpha: options.alpha!, useRslora: options.useRslora } }
        : {}),
      tieWordEmbeddings: tiesEmbeddings(ctx.modelConfig, base),
      tiedEmbeddings: options.tiedEmbeddings,
    };
    const { stateDict, report } = await mergeLora(base, adapters, mergeOptions);
    ctx.stateDict = stateDict;
    ctx.mergeReport = report;
    const first = adapters[0];
    if (first !== undefined) {
      ctx.adapterDir = await adapterFolder(
        typeof first === "string" ? first : (first as { path: string }).path,
      );
    }
    const warnings = [
      ...(report.tiedEmbeddings ? [report.tiedEmbeddings.message] : []),
      ...report.warnings,
    ];
    ctx.report("mergeLora", {
      backend: report.backend?.kind ?? "none",
      ...(report.backend
        ? { backendDescription: report.backend.description, backendReason: report.backend.reason }
        : {}),
      ...(report.backend?.calibration
        ? { backendCalibration: { ...report.backend.calibration, unit: "M weights/s" } }
        : {}),
      adapters: report.adapters,
      modules: report.modules.length,
      // merged values are rounded once, into writeModel's dtype when it asks for one, else this
      outDtype: mergeOptions.outDtype ?? "base",
      scaling: [...new Set(report.modules.flatMap((m) => m.adapters.map((a) => a.scale)))],
      replaced: report.replaced,
      biases: report.biases.length,
      unmatchedKeys: report.unmatchedKeys,
      added: report.added,
      targetModulesWithoutTensors: report.targetModulesWithoutTensors.length,
      // ‖ΔW‖/‖W‖ per merged module: the live list, filled while writeModel reads the merged
      // tensors (no second pass); the manifest is written after the last stage, with it complete
      moduleChanges: report.changes,
      ...(report.untargeted.length > 0 ? { untargeted: report.untargeted } : {}),
      ...(report.tiedEmbeddings ? { tiedEmbeddings: report.tiedEmbeddings } : {}),
      ...(warnings.length > 0 ? { warnings } : {}),
    });
    if (report.tiedEmbeddings) untieConfig(ctx);
    // In a split export each part measures the modules of its own shards; the finish joins them.
    ctx.part?.gather({
      key: "moduleChanges",
      by: "tensor",
      order: report.modules.map((m) => m.tensor),
    });
    ctx.emit({
      type: "log",
      level: "info",
      stage: "mergeLora",
      message: `${report.modules.length} modules to merge on ${
        report.backend?.kind ?? "no backend"
      }`,
      data: { backend: report.backend ?? null },
    });
    if (report.tiedEmbeddings) {
      ctx.emit({
        type: "log",
        level: "warn",
        stage: "mergeLora",
        message: report.tiedEmbeddings.message,
        data: { tiedEmbeddings: report.tiedEmbeddings },
      });
    }
    for (const message of report.warnings) {
      ctx.emit({ type: "log", level: "warn", stage: "mergeLora", message });
    }
    if (report.unmatchedKeys.length > 0) {
      ctx.emit({
        type: "log",
        level: "warn",
        stage: "mergeLora",
        message: `${report.unmatchedKeys.length} adapter keys matched no base tensor`,
        data: { keys: report.unmatchedKeys.slice(0, 20) },
      });
    }
  },
});
