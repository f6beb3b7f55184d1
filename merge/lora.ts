/**
 * `mergeLora`: folds PEFT LoRA adapters into a lazy state dict. The result is another lazy
 * {@linkcode StateDict}: adapted weights are computed when read, row block by row block, through a
 * merge backend (WebGPU or CPU, `merge/backend.ts`); full replacements (`modules_to_save`, saved
 * biases, saved embedding copies) are swapped in; adapter keys are gone. Nothing is read up front
 * except headers (and, with `safe`, the adapter factors, which are checked before anything is
 * written).
 *
 * ## Semantics (PEFT, reference §1–§2)
 * - Linear `W' = W + s·B@A`; Conv1D and Embedding take the transposed delta (decided by shape,
 *   `merge/layouts.ts`); ConvNd as Linear on the flattened kernel; grouped convs refused.
 * - `s = alpha/r` or `alpha/√r` (rsLoRA), per module through `rank_pattern`/`alpha_pattern`
 *   (PEFT ≥ 0.15 rule); the pattern rank must equal the tensors' rank.
 * - `lora_B.bias`: `bias' = bias + s·b` (f32, one rounding). Saved base biases (`bias: all |
 *   lora_only`) and `modules_to_save` tensors replace the base ones, before any delta.
 * - Trainable tokens: rows `indices[j]` of `<emb>.weight` become the saved values, after the delta.
 * - DoRA: per output row for Linear/Conv (one pass), per column for Embedding/Conv1D (two passes),
 *   `merge/dora.ts`.
 * - Several adapters: applied to the same base in order with a weight each; their deltas are summed
 *   exactly as PEFT's `cat` combination does (ranks concatenated, `weight·s` folded into B, f32), and
 *   rounded **once** at the end (PEFT rounds after each adapter; the difference is one bf16 rounding
 *   of the intermediate). DoRA modules take exactly one adapter.
 *
 * ## Numerics
 * Factors are decoded to f32; the backend computes `f32(W) + s·Σ B·A` in f32 and rounds once (RNE)
 * into the output dtype (`kernels/reference.ts` defines the order).
 *
 * @example Merging a rank-1 adapter into a 2×2 weight
 * ```ts
 * import { mergeLora } from "./lora.ts";
 * import { parseLoraConfig } from "../formats/peft_config.ts";
 * import { StateDict, tensorFromBytes } from "../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const f32 = (shape: number[], v: number[]) =>
 *   tensorFromBytes("F32", shape, new Uint8Array(new Float32Array(v).buffer));
 * const base = new StateDict([["l.weight", f32([2, 2], [1, 2, 3, 4])]]);
 * const tensors = new StateDict([
 *   ["base_model.model.l.lora_A.weight", f32([1, 2], [1, 0])],
 *   ["base_model.model.l.lora_B.weight", f32([2, 1], [1, 2])],
 * ]);
 * const config = parseLoraConfig({ peft_type: "LORA", r: 1, lora_alpha: 2 });
 * const { stateDict, report } = await mergeLora(base, [{ name: "a", config, tensors }], { backend: "cpu" });
 * const out = await stateDict.require("l.weight").read();
 * assert.deepEqual([...new Float32Array(out.buffer, out.byteOffset, 4)], [3, 2, 7, 4]);
 * assert.equal(report.modules[0]!.adapters[0]!.scale, 2);
 * await stateDict.close();
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { decodeF32, type DType, DTYPES, encodeF32, isFloatDType } from "../formats/dtype.ts";
import {
  type AdapterKey,
  classifyAdapterKey,
  isWrappedStateDict,
  loadAdapter,
  type LoadedAdapter,
  splitWrappedStateDict,
  type WrappedLoraOptions,
} from "../formats/peft.ts";
import {
  matchesTargetModule,
  type ModuleScaling,
  resolveModuleScaling,
} from "../formats/peft_config.ts";
import { castBytes } from "../formats/cast.ts";
import { numel, rowCount, StateDict, type TensorRef } from "../formats/state_dict.ts";
import type { MergeBackend, MergeDType, MergeRowsRequest } from "../kernels/types.ts";
import type { BackendChoice } from "./backend.ts";
import { factorA, factorB, type LoraLayout, type LoraLayoutKind, planLayout } from "./layouts.ts";
import {
  applyColumnFactors,
  checkMagnitude,
  ColumnNorms,
  type DoraMode,
  doraModeFor,
} from "./dora.ts";

/** An adapter to merge: a folder/file path, a path with a weight, or an already loaded adapter. */
export type AdapterInput =
  | string
  | { path: string; weight?: number; name?: string }
  | (LoadedAdapter & { weight?: number });

/** Options of {@linkcode mergeLora}. Every field is optional. */
export interface MergeLoraOptions {
  /** Backend: `"auto"` (default), `"webgpu"`, `"cpu"`, or a backend instance (not disposed by us). */
  backend?: BackendChoice | MergeBackend;
  /** Refuse non-finite factors (checked before returning) and results (checked per block), like
   * PEFT's `safe_merge`: `LORA_NONFINITE` naming the tensor. Default false. */
  safe?: boolean;
  /** Adapter keys that match no base tensor are reported instead of refused (`LORA_NO_BASE`,
   * `LORA_UNMATCHED`); unmatched full tensors are then added as new tensors. Default false. */
  allowUnmatched?: boolean;
  /** Output dtype of the tensors this transform computes (merged weights, biases, token rows,
   * replacements). Default: each base tensor's own dtype. Untouched tensors keep theirs. */
  outDtype?: MergeDType;
  /** `base` is a PEFT-wrapped state dict (HALOs convention: `.base_layer.`, `.lora_A.default.`);
   * its LoRA part is merged with these hyper-parameters, before any `adapters`. */
  wrapped?: WrappedLoraOptions;
  /** Bytes of base weight per backend call. Default 8 MiB. */
  blockBytes?: number;
  /** Backend calls in flight per read (overlap of upload, compute, read-back). Default 3. */
  concurrency?: number;
  /** After a merged tensor's rows `[s, e)` are read, compute `[e, 2e − s)` ahead (writers read in
   * order), so that the backend works while the writer writes. Default true. */
  prefetch?: boolean;
  /** Rename rules `[regex, replacement]` applied in order to the module paths adapter keys name
   * (after `base_model.model.` is stripped), for adapters saved under other names than the base
   * checkpoint uses (e.g. transformers' `model.language_model.` vs `model.`). Default none. */
  renames?: [pattern: string, replacement: string][];
  /** The model ties `lm_head.weight` to the input embedding (`tie_word_embeddings`): trainable-token
   * rows of `embed_tokens` are applied to an `lm_head.weight` of the same shape too, as PEFT's tied
   * token adapter does, and an `lm_head` LoRA goes into `…embed_tokens.weight` when the checkpoint
   * has no `lm_head.weight` (the shared weight PEFT merges into). Default false. */
  tieWordEmbeddings?: boolean;
  /** Options passed to `createMergeBackend` when `backend` is a choice. */
  backendOptions?: Record<string, unknown>;
}

/** One adapter's contribution to one module, in the report. */
export interface ModuleAdapterReport {
  /** Adapter name. */
  name: string;
  /** Rank (from the tensors, equal to the config's). */
  r: number;
  /** Alpha used. */
  alpha: number;
  /** PEFT scaling `alpha/r` (or `alpha/√r`). */
  scale: number;
  /** Adapter weight (default 1). */
  weight: number;
  /** rank_pattern key used, if any. */
  rankPattern?: string;
  /** alpha_pattern key used, if any. */
  alphaPattern?: string;
}

/** One merged module in the report. */
export interface ModuleReport {
  /** Module path `M`. */
  module: string;
  /** Output tensor (`M.weight`). */
  tensor: string;
  /** Layout decided from the shapes. */
  layout: LoraLayoutKind;
  /** Weight shape. */
  shape: number[];
  /** Output dtype. */
  dtype: DType;
  /** DoRA norm mode, or false. */
  dora: DoraMode | false;
  /** Adapters applied, in order. */
  adapters: ModuleAdapterReport[];
}

/** What {@linkcode mergeLora} did (planned; the arithmetic runs when tensors are read). */
export interface MergeReport {
  /** The backend that runs the merge (absent when nothing needs one). */
  backend?: { kind: "webgpu" | "cpu"; description: string; reason: string };
  /** The adapters, in order. */
  adapters: { name: string; path?: string; weight: number; tensors: number; useDora: boolean }[];
  /** Merged modules with the scaling used. */
  modules: ModuleReport[];
  /** Base tensors replaced by adapter copies (modules_to_save, saved biases/embeddings). */
  replaced: string[];
  /** Biases that received `lora_B.bias`. */
  biases: string[];
  /** Tensors whose rows were replaced by trainable tokens. */
  trainableTokens: { tensor: string; rows: number }[];
  /** Adapter keys that matched nothing (only non-empty with `allowUnmatched`). */
  unmatchedKeys: string[];
  /** Tensors added because the base lacked them (with `allowUnmatched`). */
  added: string[];
  /** `target_modules` entries that matched no module with LoRA tensors. */
  unusedTargetModules: { adapter: string; target: string }[];
  /** Base modules matched by `target_modules` that received no LoRA tensors. */
  targetModulesWithoutTensors: { adapter: string; module: string }[];
  /** Keys of a wrapped state dict dropped because they belong to another adapter name. */
  otherAdapterKeys: string[];
  /** With `tieWordEmbeddings`, the input embedding that received an `lm_head` LoRA because the
   * checkpoint has no separate `lm_head.weight`. */
  tiedLmHead?: string;
}

/** Result of {@linkcode mergeLora}. */
export interface MergeLoraResult {
  /** The merged lazy state dict; it owns the base's, the adapters' and the backend's resources. */
  stateDict: StateDict;
  /** What was (is being) merged. */
  report: MergeReport;
}

// ---------------------------------------------------------------------------------------------
// Planning

interface Term {
  adapter: string;
  layout: LoraLayout;
  weight: number;
  scaling: ModuleScaling;
  aKey: string;
  bKey: string;
  a: TensorRef;
  b: TensorRef;
}

interface Job {
  name: string;
  source: TensorRef; // base or replacement
  outDtype: DType;
  layout?: LoraLayout;
  terms: Term[];
  magnitude?: { key: string; ref: TensorRef; mode: DoraMode };
  biasTerms: { key: string; ref: TensorRef; factor: number }[];
  tokens?: { key: string; indices: number[]; values: TensorRef };
  modified: boolean;
}

interface Parts {
  adapter: string;
  weight: number;
  a?: AdapterKey & { ref: TensorRef };
  b?: AdapterKey & { ref: TensorRef };
  bias?: AdapterKey & { ref: TensorRef };
  mag?: AdapterKey & { ref: TensorRef };
  tokens?: AdapterKey & { ref: TensorRef };
  embedding: boolean;
}

const MERGE_DTYPES: readonly string[] = ["BF16", "F16", "F32"];

function fmtShape(s: readonly number[]): string {
  return `[${s.join(", ")}]`;
}

function normalizeInput(
  input: AdapterInput,
): { path?: string; loaded?: LoadedAdapter; weight: number; name?: string } {
  if (typeof input === "string") return { path: input, weight: 1 };
  if ("tensors" in input) return { loaded: input, weight: input.weight ?? 1 };
  const out: { path: string; weight: number; name?: string } = {
    path: input.path,
    weight: input.weight ?? 1,
  };
  if (input.name !== undefined) out.name = input.name;
  return out;
}

function tokenIndicesFor(
  config: LoadedAdapter["config"],
  module: string,
): number[] | undefined {
  const t = config.trainable_token_indices;
  if (t === null || t === undefined) return undefined;
  const map: Record<string, number[]> = Array.isArray(t) ? { embed_tokens: t } : t;
  for (const [k, ids] of Object.entries(map)) {
    if (module === k || module.endsWith(`.${k}`)) return ids;
  }
  return undefined;
}

async function scanFinite(key: string, ref: TensorRef): Promise<void> {
  if (!isFloatDType(ref.dtype)) return;
  const rows = rowCount(ref.shape);
  const rowBytes = ref.shape.length === 0 ? DTYPES[ref.dtype].size : numel(ref.shape.slice(1)) *
    DTYPES[ref.dtype].size;
  const step = Math.max(1, Math.floor((8 << 20) / Math.max(1, rowBytes)));
  for (let r = 0; r < rows; r += step) {
    const v = decodeF32(ref.dtype, await ref.read(r, Math.min(rows, r + step)));
    for (let i = 0; i < v.length; i++) {
      if (!Number.isFinite(v[i]!)) {
        throw new CkptError(
          "LORA_NONFINITE",
          `Cannot merge safely: adapter tensor "${key}" holds a non-finite value (${v[i]})`,
          { tensor: key, details: { index: r * (rowBytes / DTYPES[ref.dtype].size) + i } },
        );
      }
    }
  }
}

/**
 * Folds LoRA adapters into `base` (see the module doc). Adapters are merged in order with their
 * weights. Plans everything (shapes, ranks, layouts, replacements) before returning, so bad input
 * fails here with a coded error, before any data is written:
 * `LORA_SHAPE`, `LORA_RANK_MISMATCH`, `LORA_FACTOR_MISSING`, `LORA_NO_BASE`, `LORA_UNMATCHED`,
 * `LORA_CONV_GROUPS`, `LORA_DTYPE`, `LORA_BIAS_MISSING`, `LORA_DORA`, `LORA_CONFLICT`,
 * `LORA_TOKENS`, `LORA_WRAPPED`, `LORA_WEIGHT`, `LORA_RENAME`, `LORA_NONFINITE` (with `safe`), `PEFT_CONFIG`, `PEFT_UNSUPPORTED`,
 * `PEFT_ADAPTER_MISSING`. With `safe`, a non-finite merged value raises `LORA_NONFINITE` from the
 * tensor's `read()`.
 */
export async function mergeLora(
  base: StateDict,
  adapters: readonly AdapterInput[],
  options: MergeLoraOptions = {},
): Promise<MergeLoraResult> {
  const opened: StateDict[] = [];
  let ownedBackend: MergeBackend | undefined;
  let baseDict = base;
  try {
    const report: MergeReport = {
      adapters: [],
      modules: [],
      replaced: [],
      biases: [],
      trainableTokens: [],
      unmatchedKeys: [],
      added: [],
      unusedTargetModules: [],
      targetModulesWithoutTensors: [],
      otherAdapterKeys: [],
    };
    const loaded: { adapter: LoadedAdapter; weight: number }[] = [];
    if (!options.wrapped && isWrappedStateDict(base)) {
      throw new CkptError(
        "LORA_WRAPPED",
        "Cannot merge into a PEFT-wrapped state dict (it has .base_layer. / .lora_A.<name>. keys) without `wrapped: { r, alpha }`",
        {
          tensor: [...base.keys()].find((k) =>
            k.includes(".base_layer.") || k.includes(".lora_")
          ) ?? "",
        },
      );
    }
    if (options.wrapped) {
      const split = splitWrappedStateDict(base, options.wrapped);
      baseDict = split.base;
      report.otherAdapterKeys = split.otherAdapterKeys;
      if (split.otherAdapterKeys.length > 0 && !options.allowUnmatched) {
        throw new CkptError(
          "LORA_UNMATCHED",
          `Cannot merge wrapped state dict: ${split.otherAdapterKeys.length} keys belong to another adapter name than "${
            options.wrapped.adapterName ?? "default"
          }" (first: "${split.otherAdapterKeys[0]}")`,
          { tensor: split.otherAdapterKeys[0]! },
        );
      }
      loaded.push({ adapter: split.adapter, weight: 1 });
    }
    for (const input of adapters) {
      const n = normalizeInput(input);
      if (!Number.isFinite(n.weight)) {
        throw new CkptError(
          "LORA_WEIGHT",
          `Cannot merge adapter: weight ${n.weight} is not finite`,
        );
      }
      if (n.loaded) loaded.push({ adapter: n.loaded, weight: n.weight });
      else {
        const a = await loadAdapter(n.path!, n.name);
        opened.push(a.tensors);
        loaded.push({ adapter: a, weight: n.weight });
      }
    }
    const names = new Set<string>();
    for (const l of loaded) {
      let name = l.adapter.name;
      for (let i = 2; names.has(name); i++) name = `${l.adapter.name}#${i}`;
      names.add(name);
      l.adapter = { ...l.adapter, name };
      const entry: MergeReport["adapters"][number] = {
        name,
        weight: l.weight,
        tensors: l.adapter.tensors.size,
        useDora: l.adapter.config.use_dora,
      };
      if (l.adapter.path !== undefined) entry.path = l.adapter.path;
      report.adapters.push(entry);
    }

    const plan = planMerge(baseDict, loaded, options, report);
    if (options.safe) {
      for (const job of plan.jobs.values()) {
        for (const t of job.terms) {
          await scanFinite(t.aKey, t.a);
          await scanFinite(t.bKey, t.b);
        }
        if (job.magnitude) await scanFinite(job.magnitude.key, job.magnitude.ref);
        for (const bt of job.biasTerms) await scanFinite(bt.key, bt.ref);
        if (job.tokens) await scanFinite(job.tokens.key, job.tokens.values);
      }
    }

    let backend: MergeBackend | undefined;
    const needsBackend = [...plan.jobs.values()].some((j) => j.terms.length > 0);
    if (needsBackend) {
      const choice = options.backend ?? "auto";
      if (typeof choice === "object") {
        backend = choice;
        report.backend = {
          kind: choice.kind,
          description: choice.description,
          reason: "backend given by the caller",
        };
      } else {
        const { createMergeBackend } = await import("./backend.ts");
        const created = await createMergeBackend(choice, options.backendOptions ?? {});
        backend = ownedBackend = created.backend;
        report.backend = {
          kind: backend.kind,
          description: backend.description,
          reason: created.reason,
        };
      }
    }

    const out = new StateDict();
    out.metadata = { ...baseDict.metadata };
    const ctx: ReadContext = {
      backend,
      safe: options.safe ?? false,
      blockBytes: Math.max(1, options.blockBytes ?? 8 << 20),
      concurrency: Math.max(1, options.concurrency ?? 3),
      cache: new Map(),
      prefetch: options.prefetch ?? true,
      ahead: new Map(),
      pending: new Set(),
    };
    for (const name of plan.order) {
      const job = plan.jobs.get(name);
      if (job) out.set(name, job.modified ? jobRef(job, ctx) : job.source);
      else out.set(name, baseDict.require(name));
    }
    out.adopt(baseDict);
    if (baseDict !== base) out.adopt(base);
    for (const l of loaded) out.adopt(l.adapter.tensors);
    if (ownedBackend) {
      const b = ownedBackend;
      out.own({ close: () => b.dispose() });
    }
    // closers run last-registered first: let computed-ahead work finish before anything closes
    out.own({
      close: async () => {
        ctx.ahead.clear();
        await Promise.all([...ctx.pending]);
      },
    });
    return { stateDict: out, report };
  } catch (e) {
    for (const sd of opened) await sd.close().catch(() => {});
    if (baseDict !== base) base.adopt(baseDict); // the caller still owns (and closes) the base
    if (ownedBackend) await ownedBackend.dispose().catch(() => {});
    throw e;
  }
}

interface Plan {
  order: string[];
  jobs: Map<string, Job>;
}

function planMerge(
  base: StateDict,
  loaded: { adapter: LoadedAdapter; weight: number }[],
  options: MergeLoraOptions,
  report: MergeReport,
): Plan {
  const allowUnmatched = options.allowUnmatched ?? false;
  const order = [...base.keys()];
  const jobs = new Map<string, Job>();
  const outDtypeFor = (d: DType): DType => options.outDtype ?? d;
  const replacedBy = new Map<string, string>();
  const renames = (options.renames ?? []).map(([p, r]) => {
    try {
      return [new RegExp(p), r] as const;
    } catch (cause) {
      throw new CkptError("LORA_RENAME", `Cannot compile rename pattern "${p}": ${cause}`, {
        cause,
      });
    }
  });
  const classify = (key: string): AdapterKey => {
    const c = classifyAdapterKey(key);
    if (renames.length === 0) return c;
    let module = c.module;
    for (const [re, r] of renames) module = module.replace(re, r);
    if (module === c.module) return c;
    return { ...c, module, target: module + c.target.slice(c.module.length) };
  };

  const jobFor = (name: string): Job | undefined => {
    let job = jobs.get(name);
    if (job) return job;
    const src = base.get(name);
    if (!src) return undefined;
    job = {
      name,
      source: src,
      outDtype: isFloatDType(src.dtype) ? outDtypeFor(src.dtype) : src.dtype,
      terms: [],
      biasTerms: [],
      modified: false,
    };
    jobs.set(name, job);
    return job;
  };
  const unmatched = (
    key: string,
    what: string,
    code: "LORA_NO_BASE" | "LORA_UNMATCHED",
  ): void => {
    if (allowUnmatched) {
      report.unmatchedKeys.push(key);
      return;
    }
    const message = `Cannot merge adapter key "${key}": ${what} (pass allowUnmatched to skip it)`;
    throw code === "LORA_NO_BASE"
      ? new CkptError("LORA_NO_BASE", message, { tensor: key })
      : new CkptError("LORA_UNMATCHED", message, { tensor: key });
  };

  // Pass 1: replacements, per adapter in order.
  for (const { adapter } of loaded) {
    for (const [key, ref] of adapter.tensors) {
      const c = classify(key);
      if (c.kind !== "replacement") continue;
      const prev = replacedBy.get(c.target);
      if (prev !== undefined) {
        throw new CkptError(
          "LORA_CONFLICT",
          `Cannot merge "${c.target}": both "${prev}" and "${key}" replace it`,
          { tensor: c.target },
        );
      }
      replacedBy.set(c.target, key);
      const job = jobFor(c.target);
      if (!job) {
        unmatched(key, `the base has no tensor "${c.target}"`, "LORA_UNMATCHED");
        report.added.push(c.target);
        order.push(c.target);
        jobs.set(c.target, {
          name: c.target,
          source: ref,
          outDtype: isFloatDType(ref.dtype) && options.outDtype ? options.outDtype : ref.dtype,
          terms: [],
          biasTerms: [],
          modified: options.outDtype !== undefined && isFloatDType(ref.dtype) &&
            ref.dtype !== options.outDtype,
        });
        continue;
      }
      job.source = ref;
      job.modified = job.modified || ref.dtype !== job.outDtype;
      if (!isFloatDType(ref.dtype) && ref.dtype !== job.outDtype) job.outDtype = ref.dtype;
      report.replaced.push(c.target);
    }
  }

  // Pass 2: LoRA parts, grouped by adapter and module.
  for (const { adapter, weight } of loaded) {
    const parts = new Map<string, Parts>();
    for (const [key, ref] of adapter.tensors) {
      const c = classify(key);
      if (c.kind === "replacement") continue;
      let p = parts.get(c.module);
      if (!p) {
        p = { adapter: adapter.name, weight, embedding: false };
        parts.set(c.module, p);
      }
      const entry = { ...c, ref };
      switch (c.kind) {
        case "lora_A":
        case "lora_embedding_A":
          if (p.a) {
            throw new CkptError("LORA_CONFLICT", `Cannot merge "${c.module}": two A factors`, {
              tensor: key,
            });
          }
          p.a = entry;
          p.embedding = c.kind === "lora_embedding_A";
          break;
        case "lora_B":
        case "lora_embedding_B":
          if (p.b) {
            throw new CkptError("LORA_CONFLICT", `Cannot merge "${c.module}": two B factors`, {
              tensor: key,
            });
          }
          p.b = entry;
          p.embedding = c.kind === "lora_embedding_B";
          break;
        case "lora_B_bias":
          p.bias = entry;
          break;
        case "magnitude":
          p.mag = entry;
          break;
        case "trainable_tokens":
          p.tokens = entry;
          break;
      }
    }
    const loraModules: string[] = [];
    for (const [module, p] of parts) {
      if (p.tokens) {
        planTokens(
          module,
          p,
          adapter,
          jobFor,
          unmatched,
          report,
          options.tieWordEmbeddings ?? false,
        );
      }
      if (!p.a && !p.b) {
        for (const e of [p.bias, p.mag]) {
          if (e) {
            throw new CkptError(
              "LORA_FACTOR_MISSING",
              `Cannot merge "${module}": "${e.key}" has no lora_A/lora_B pair`,
              { tensor: e.key },
            );
          }
        }
        continue;
      }
      if (!p.a || !p.b) {
        const have = (p.a ?? p.b)!;
        throw new CkptError(
          "LORA_FACTOR_MISSING",
          `Cannot merge "${module}": "${have.key}" ${fmtShape(have.ref.shape)} has no ${
            p.a ? "B" : "A"
          } factor`,
          { tensor: have.key, details: { module, shape: [...have.ref.shape] } },
        );
      }
      if (p.a.kind === "lora_A" !== (p.b.kind === "lora_B")) {
        throw new CkptError(
          "LORA_FACTOR_MISSING",
          `Cannot merge "${module}": "${p.a.key}" and "${p.b.key}" are not a pair`,
          { tensor: p.a.key },
        );
      }
      let target = `${module}.weight`;
      let job = jobFor(target);
      if (!job && options.tieWordEmbeddings && module === "lm_head") {
        // A tied checkpoint stores the output embedding once, as the input embedding: PEFT merges
        // the lm_head delta into that shared weight.
        const emb = [...base.keys()].find((k) => /(^|\.)embed_tokens\.weight$/.test(k));
        if (emb !== undefined) {
          target = emb;
          job = jobFor(emb);
          report.tiedLmHead = emb;
        }
      }
      if (!job) {
        unmatched(p.a.key, `the base has no weight "${target}"`, "LORA_NO_BASE");
        report.unmatchedKeys.push(p.b.key);
        for (const e of [p.bias, p.mag]) if (e) report.unmatchedKeys.push(e.key);
        continue;
      }
      loraModules.push(module);
      planLoraTerm(module, job, p, adapter, weight, report);
      if (p.bias) planLoraBias(module, p, adapter, weight, jobFor, report);
    }
    reportTargets(adapter, loraModules, base, report);
  }
  return { order, jobs };
}

function planTokens(
  module: string,
  p: Parts,
  adapter: LoadedAdapter,
  jobFor: (name: string) => Job | undefined,
  unmatched: (key: string, what: string, code: "LORA_NO_BASE" | "LORA_UNMATCHED") => void,
  report: MergeReport,
  tied: boolean,
): void {
  const tokens = p.tokens!;
  const target = `${module}.weight`;
  const job = jobFor(target);
  if (!job) {
    unmatched(tokens.key, `the base has no embedding "${target}"`, "LORA_NO_BASE");
    return;
  }
  const indices = tokenIndicesFor(adapter.config, module);
  if (!indices) {
    throw new CkptError(
      "LORA_TOKENS",
      `Cannot merge "${tokens.key}": adapter_config.json has no trainable_token_indices for "${module}"`,
      { tensor: tokens.key },
    );
  }
  const w = job.source.shape;
  const v = tokens.ref.shape;
  if (w.length !== 2 || v.length !== 2 || v[0] !== indices.length || v[1] !== w[1]) {
    throw new CkptError(
      "LORA_TOKENS",
      `Cannot merge "${tokens.key}": values ${
        fmtShape(v)
      } do not fit ${indices.length} rows of ${target} ${fmtShape(w)}`,
      { tensor: tokens.key, details: { values: [...v], weight: [...w] } },
    );
  }
  for (const i of indices) {
    if (!Number.isInteger(i) || i < 0 || i >= w[0]!) {
      throw new CkptError(
        "LORA_TOKENS",
        `Cannot merge "${tokens.key}": token index ${i} is outside ${target} ${fmtShape(w)}`,
        { tensor: tokens.key },
      );
    }
  }
  if (job.tokens) {
    const prev = new Set(job.tokens.indices);
    const overlap = indices.find((i) => prev.has(i));
    if (overlap !== undefined) {
      throw new CkptError(
        "LORA_CONFLICT",
        `Cannot merge "${tokens.key}": token ${overlap} is also trained by "${job.tokens.key}"`,
        { tensor: tokens.key },
      );
    }
    throw new CkptError(
      "LORA_CONFLICT",
      `Cannot merge "${tokens.key}": "${target}" already has trainable tokens from "${job.tokens.key}"`,
      { tensor: tokens.key },
    );
  }
  if (!isFloatDType(job.outDtype) || !isFloatDType(tokens.ref.dtype)) {
    throw new CkptError("LORA_DTYPE", `Cannot merge "${tokens.key}": not a float tensor`, {
      tensor: tokens.key,
    });
  }
  job.tokens = { key: tokens.key, indices: [...indices], values: tokens.ref };
  job.modified = true;
  report.trainableTokens.push({ tensor: target, rows: indices.length });
  // A tied lm_head shares the rows (PEFT's tied token adapter saves nothing for it).
  if (tied && module.endsWith("embed_tokens") && target !== "lm_head.weight") {
    const head = jobFor("lm_head.weight");
    if (head && head.source.shape.join() === w.join() && !head.tokens) {
      head.tokens = { key: tokens.key, indices: [...indices], values: tokens.ref };
      head.modified = true;
      report.trainableTokens.push({ tensor: "lm_head.weight", rows: indices.length });
    }
  }
}

function planLoraTerm(
  module: string,
  job: Job,
  p: Parts,
  adapter: LoadedAdapter,
  weight: number,
  report: MergeReport,
): void {
  const a = p.a!;
  const b = p.b!;
  const w = job.source;
  if (!MERGE_DTYPES.includes(w.dtype) || !MERGE_DTYPES.includes(job.outDtype)) {
    throw new CkptError(
      "LORA_DTYPE",
      `Cannot merge "${module}": weight dtype ${w.dtype} -> ${job.outDtype} is not among BF16, F16, F32`,
      { tensor: job.name },
    );
  }
  for (const f of [a, b]) {
    if (!isFloatDType(f.ref.dtype)) {
      throw new CkptError(
        "LORA_DTYPE",
        `Cannot merge "${module}": factor "${f.key}" has dtype ${f.ref.dtype}`,
        { tensor: f.key },
      );
    }
  }
  const layout = planLayout({
    module,
    factorKind: p.embedding ? "embedding" : "lora",
    weightShape: w.shape,
    aShape: a.ref.shape,
    bShape: b.ref.shape,
    fanInFanOut: adapter.config.fan_in_fan_out,
  });
  const scaling = resolveModuleScaling(adapter.config, module);
  if (scaling.r !== layout.rank) {
    throw new CkptError(
      "LORA_RANK_MISMATCH",
      `Cannot merge "${module}": the config gives rank ${scaling.r}${
        scaling.rankPattern ? ` (rank_pattern "${scaling.rankPattern}")` : ""
      }, the tensors have rank ${layout.rank} (lora_A ${fmtShape(a.ref.shape)}, lora_B ${
        fmtShape(b.ref.shape)
      })`,
      { tensor: a.key, details: { module, configRank: scaling.r, tensorRank: layout.rank } },
    );
  }
  if (job.layout && (job.layout.rows !== layout.rows || job.layout.cols !== layout.cols)) {
    throw new CkptError(
      "LORA_SHAPE",
      `Cannot merge "${module}": adapters disagree on its layout (${job.layout.layout} [${job.layout.rows}, ${job.layout.cols}] vs ${layout.layout} [${layout.rows}, ${layout.cols}])`,
      { tensor: job.name },
    );
  }
  const useDora = adapter.config.use_dora;
  if (p.mag && !useDora) {
    throw new CkptError(
      "LORA_DORA",
      `Cannot merge "${module}": "${p.mag.key}" is a DoRA magnitude but use_dora is false`,
      { tensor: p.mag.key },
    );
  }
  if (useDora && !p.mag) {
    throw new CkptError(
      "LORA_DORA",
      `Cannot merge "${module}": use_dora is true but the adapter has no lora_magnitude_vector for it`,
      { tensor: job.name },
    );
  }
  if (job.magnitude || (p.mag && job.terms.length > 0)) {
    throw new CkptError(
      "LORA_DORA",
      `Cannot merge "${module}": a DoRA module takes exactly one adapter (PEFT's sequential multi-DoRA merge is version-dependent, peft #3608)`,
      { tensor: job.name },
    );
  }
  if (p.mag) {
    const mode = doraModeFor(layout.transposed);
    checkMagnitude(module, mode, p.mag.ref.shape, w.shape, layout.rows, layout.cols);
    job.magnitude = { key: p.mag.key, ref: p.mag.ref, mode };
  }
  job.layout = layout;
  job.terms.push({
    adapter: adapter.name,
    layout,
    weight,
    scaling,
    aKey: a.key,
    bKey: b.key,
    a: a.ref,
    b: b.ref,
  });
  job.modified = true;
  const adapterReport: ModuleAdapterReport = {
    name: adapter.name,
    r: scaling.r,
    alpha: scaling.alpha,
    scale: scaling.scale,
    weight,
  };
  if (scaling.rankPattern !== undefined) adapterReport.rankPattern = scaling.rankPattern;
  if (scaling.alphaPattern !== undefined) adapterReport.alphaPattern = scaling.alphaPattern;
  const existing = report.modules.find((m) => m.tensor === job.name);
  if (existing) existing.adapters.push(adapterReport);
  else {
    report.modules.push({
      module,
      tensor: job.name,
      layout: layout.layout,
      shape: [...w.shape],
      dtype: job.outDtype,
      dora: job.magnitude ? job.magnitude.mode : false,
      adapters: [adapterReport],
    });
  }
}

function planLoraBias(
  module: string,
  p: Parts,
  adapter: LoadedAdapter,
  weight: number,
  jobFor: (name: string) => Job | undefined,
  report: MergeReport,
): void {
  const bias = p.bias!;
  const target = `${module}.bias`;
  const job = jobFor(target);
  if (!job) {
    throw new CkptError(
      "LORA_BIAS_MISSING",
      `Cannot merge "${bias.key}" ${
        fmtShape(bias.ref.shape)
      }: the base layer has no bias "${target}" (PEFT refuses lora_bias on bias-less layers too)`,
      { tensor: bias.key },
    );
  }
  if (numel(job.source.shape) !== numel(bias.ref.shape) || job.source.shape.length !== 1) {
    throw new CkptError(
      "LORA_SHAPE",
      `Cannot merge "${bias.key}": lora_B.bias ${
        fmtShape(bias.ref.shape)
      } does not fit "${target}" ${fmtShape(job.source.shape)}`,
      { tensor: bias.key },
    );
  }
  if (!isFloatDType(job.source.dtype) || !isFloatDType(bias.ref.dtype)) {
    throw new CkptError("LORA_DTYPE", `Cannot merge "${bias.key}": not a float tensor`, {
      tensor: bias.key,
    });
  }
  const scaling = resolveModuleScaling(adapter.config, module);
  job.biasTerms.push({ key: bias.key, ref: bias.ref, factor: scaling.scale * weight });
  job.modified = true;
  if (!report.biases.includes(target)) report.biases.push(target);
}

function reportTargets(
  adapter: LoadedAdapter,
  loraModules: string[],
  base: StateDict,
  report: MergeReport,
): void {
  const t = adapter.config.target_modules;
  if (t === null || t === undefined || t === "all-linear") return;
  const entries = typeof t === "string" ? [t] : t;
  for (const entry of entries) {
    if (!loraModules.some((m) => matchesTargetModule(typeof t === "string" ? t : [entry], m))) {
      report.unusedTargetModules.push({ adapter: adapter.name, target: entry });
    }
  }
  const have = new Set(loraModules);
  const saved = adapter.config.modules_to_save ?? [];
  for (const key of base.keys()) {
    if (!key.endsWith(".weight")) continue;
    const module = key.slice(0, -".weight".length);
    if (have.has(module) || !matchesTargetModule(t, module)) continue;
    if (saved.some((s) => module === s || module.endsWith(`.${s}`))) continue;
    report.targetModulesWithoutTensors.push({ adapter: adapter.name, module });
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

interface Prepared {
  rank: number;
  a: Float32Array; // rank × cols
  b: Float32Array; // rows × rank
  scale: number;
  rowMagnitude?: Float32Array;
  colFactors?: Float32Array;
}

interface ReadContext {
  backend: MergeBackend | undefined;
  safe: boolean;
  blockBytes: number;
  concurrency: number;
  cache: Map<string, Promise<Prepared>>;
  prefetch: boolean;
  /** Row ranges computed ahead of the reader, per tensor. */
  ahead: Map<string, { s: number; e: number; p: Promise<Uint8Array> }>;
  /** Work in flight that nobody awaits yet (waited for on close). */
  pending: Set<Promise<unknown>>;
}

async function decodeAll(ref: TensorRef): Promise<Float32Array> {
  return decodeF32(ref.dtype, await ref.read());
}

async function prepareFactors(job: Job, ctx: ReadContext): Promise<Prepared> {
  const layout = job.layout!;
  const { rows, cols } = layout;
  const decoded: { a: Float32Array; b: Float32Array; factor: number; rank: number }[] = [];
  for (const t of job.terms) {
    const ra = await decodeAll(t.a);
    const rb = await decodeAll(t.b);
    decoded.push({
      a: factorA(t.layout, ra, rb),
      b: factorB(t.layout, ra, rb),
      factor: t.scaling.scale * t.weight,
      rank: t.layout.rank,
    });
  }
  let prepared: Prepared;
  if (decoded.length === 1) {
    const d = decoded[0]!;
    prepared = { rank: d.rank, a: d.a, b: d.b, scale: d.factor };
  } else {
    const rank = decoded.reduce((s, d) => s + d.rank, 0);
    const a = new Float32Array(rank * cols);
    const b = new Float32Array(rows * rank);
    let off = 0;
    for (const d of decoded) {
      a.set(d.a, off * cols);
      const f = Math.fround(d.factor);
      for (let i = 0; i < rows; i++) {
        for (let k = 0; k < d.rank; k++) b[i * rank + off + k] = f * d.b[i * d.rank + k]!;
      }
      off += d.rank;
    }
    prepared = { rank, a, b, scale: 1 };
  }
  if (job.magnitude) {
    const m = await decodeAll(job.magnitude.ref);
    if (job.magnitude.mode === "row") prepared.rowMagnitude = m;
    else {
      const norms = new ColumnNorms(cols);
      await runBlocks(job, ctx, prepared, 0, rows, "F32", (_start, blockRows, bytes) => {
        norms.add(new Float32Array(bytes.buffer, bytes.byteOffset, blockRows * cols), blockRows);
      });
      prepared.colFactors = norms.factors(m);
    }
  }
  return prepared;
}

function getPrepared(job: Job, ctx: ReadContext): Promise<Prepared> {
  let p = ctx.cache.get(job.name);
  if (!p) {
    p = prepareFactors(job, ctx);
    ctx.cache.set(job.name, p);
    p.catch(() => ctx.cache.delete(job.name));
    while (ctx.cache.size > 2) ctx.cache.delete(ctx.cache.keys().next().value!);
  }
  return p;
}

/** Runs row blocks of `[r0, r1)` through the backend with bounded concurrency, in any order. */
async function runBlocks(
  job: Job,
  ctx: ReadContext,
  prep: Prepared,
  r0: number,
  r1: number,
  outDtype: MergeDType,
  sink: (rowStart: number, rows: number, bytes: Uint8Array) => void,
): Promise<void> {
  const layout = job.layout!;
  const { cols } = layout;
  const wSize = DTYPES[job.source.dtype].size;
  const step = Math.max(1, Math.floor(ctx.blockBytes / Math.max(1, cols * wSize)));
  const starts: number[] = [];
  for (let r = r0; r < r1; r += step) starts.push(r);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < starts.length) {
      const s = starts[next++]!;
      const e = Math.min(r1, s + step);
      const w = await job.source.read(s, e);
      const req: MergeRowsRequest = {
        name: job.name,
        w,
        wDtype: job.source.dtype as MergeDType,
        outDtype,
        rows: e - s,
        cols,
        rank: prep.rank,
        a: prep.a,
        b: prep.b.subarray(s * prep.rank, e * prep.rank),
        scale: prep.scale,
      };
      if (prep.rowMagnitude) req.magnitude = prep.rowMagnitude.subarray(s, e);
      sink(s, e - s, await ctx.backend!.mergeRows(req));
    }
  };
  const n = Math.min(ctx.concurrency, starts.length);
  await Promise.all(Array.from({ length: n }, worker));
}

function firstNonFinite(dtype: DType, bytes: Uint8Array): number {
  const n = bytes.byteLength / DTYPES[dtype].size;
  if (dtype === "BF16" || dtype === "F16") {
    const u = bytes.byteOffset % 2 === 0
      ? new Uint16Array(bytes.buffer, bytes.byteOffset, n)
      : new Uint16Array(bytes.slice().buffer);
    const mask = dtype === "BF16" ? 0x7f80 : 0x7c00;
    for (let i = 0; i < n; i++) if ((u[i]! & mask) === mask) return i;
    return -1;
  }
  const v = decodeF32(dtype, bytes);
  for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i]!)) return i;
  return -1;
}

function checkFinite(job: Job, bytes: Uint8Array, rowStart: number): void {
  if (!isFloatDType(job.outDtype)) return;
  const i = firstNonFinite(job.outDtype, bytes);
  if (i < 0) return;
  const per = job.source.shape.length <= 1 ? 1 : numel(job.source.shape.slice(1));
  const row = rowStart + Math.floor(i / per);
  throw new CkptError(
    "LORA_NONFINITE",
    `Cannot merge "${job.name}" safely: the result has a non-finite value at row ${row}, column ${
      i % per
    }`,
    { tensor: job.name, details: { row, column: i % per } },
  );
}

async function readJob(job: Job, ctx: ReadContext, r0: number, r1: number): Promise<Uint8Array> {
  const outSize = DTYPES[job.outDtype].size;
  const per = job.source.shape.length <= 1 ? 1 : numel(job.source.shape.slice(1));
  let out: Uint8Array;
  let owned = true; // false while `out` may be a view of the source's bytes
  if (job.terms.length > 0) {
    const prep = await getPrepared(job, ctx);
    out = new Uint8Array((r1 - r0) * per * outSize);
    const outDtype = job.outDtype as MergeDType;
    if (prep.colFactors) {
      const f = prep.colFactors;
      await runBlocks(job, ctx, prep, r0, r1, "F32", (s, rows, bytes) => {
        const v = new Float32Array(bytes.buffer, bytes.byteOffset, rows * per).slice();
        applyColumnFactors(v, rows, f);
        out.set(encodeF32(outDtype, v), (s - r0) * per * outSize);
      });
    } else {
      await runBlocks(job, ctx, prep, r0, r1, outDtype, (s, _rows, bytes) => {
        out.set(bytes, (s - r0) * per * outSize);
      });
    }
  } else {
    const src = await job.source.read(r0, r1);
    out = castBytes(job.source.dtype, job.outDtype, src);
    owned = out !== src;
    if (job.biasTerms.length > 0) {
      const v = decodeF32(job.source.dtype, src).slice();
      for (const t of job.biasTerms) {
        const bb = decodeF32(t.ref.dtype, await t.ref.read(r0, r1));
        const f = Math.fround(t.factor);
        for (let i = 0; i < v.length; i++) v[i] = v[i]! + Math.fround(bb[i]! * f);
      }
      out = encodeF32(job.outDtype, v);
    }
  }
  if (job.tokens) {
    const { indices, values } = job.tokens;
    if (!owned) out = out.slice(); // never write into someone else's bytes
    for (let j = 0; j < indices.length; j++) {
      const row = indices[j]!;
      if (row < r0 || row >= r1) continue;
      const v = decodeF32(values.dtype, await values.read(j, j + 1));
      out.set(encodeF32(job.outDtype, v), (row - r0) * per * outSize);
    }
  }
  if (ctx.safe) checkFinite(job, out, r0);
  return out;
}

function jobRef(job: Job, ctx: ReadContext): TensorRef {
  const shape = [...job.source.shape];
  const note = job.terms.length > 0
    ? `merged ${job.terms.map((t) => t.adapter).join("+")} into ${job.source.source ?? "base"}`
    : `from ${job.source.source ?? "adapter"}`;
  return {
    dtype: job.outDtype,
    shape,
    source: note,
    async read(rowStart?: number, rowEnd?: number): Promise<Uint8Array> {
      const rows = rowCount(shape);
      const s = rowStart ?? 0;
      const e = rowEnd ?? rows;
      if (!Number.isInteger(s) || !Number.isInteger(e) || s < 0 || e < s || e > rows) {
        throw new CkptError(
          "ROW_RANGE",
          `Cannot read rows [${s}, ${e}) of "${job.name}": it has ${rows} rows`,
          { tensor: job.name },
        );
      }
      const ahead = ctx.ahead.get(job.name);
      let p: Promise<Uint8Array>;
      if (ahead && ahead.s === s && ahead.e === e) {
        ctx.ahead.delete(job.name);
        p = ahead.p;
      } else p = readJob(job, ctx, s, e);
      // A writer reads row ranges in order: compute the next range of the same size while this
      // one is finished and written (queued behind it, so it does not delay it).
      if (ctx.prefetch && job.terms.length > 0 && e > s && e < rows) {
        const next = ctx.ahead.get(job.name);
        if (!next || next.s !== e) {
          const ne = Math.min(rows, e + (e - s));
          const np = readJob(job, ctx, e, ne);
          const settled = np.then(() => {}, () => {});
          ctx.pending.add(settled);
          void settled.then(() => ctx.pending.delete(settled));
          ctx.ahead.set(job.name, { s: e, e: ne, p: np });
        }
      }
      return await p;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// One tensor

/** Input of {@linkcode mergeLoraTensor}. */
export interface MergeLoraTensorInput {
  /** Base weight. */
  weight: TensorRef;
  /** `lora_A` (`[r, in]`, conv `[r, in, *k]`) or `lora_embedding_A` (`[r, V]`). */
  loraA: TensorRef;
  /** `lora_B` (`[out, r]`, conv `[out, r, 1…]`) or `lora_embedding_B` (`[D, r]`). */
  loraB: TensorRef;
  /** Scaling `s` (e.g. `alpha / r`). */
  scale: number;
  /** Embedding factors (transposed delta). Default false. */
  embedding?: boolean;
  /** Decides square Conv1D weights. Default false. */
  fanInFanOut?: boolean;
  /** DoRA magnitude. */
  magnitude?: TensorRef;
  /** Name for errors and labels. Default `"weight"`. */
  name?: string;
}

/** Result of {@linkcode mergeLoraTensor}. */
export interface MergedTensor {
  /** Output dtype. */
  dtype: DType;
  /** Shape (the weight's). */
  shape: number[];
  /** Merged bytes. */
  data: Uint8Array;
  /** Layout decided. */
  layout: LoraLayoutKind;
  /** Backend that ran. */
  backend: string;
}

/**
 * Merges one LoRA pair into one weight: `W + s·ΔW` in the layout the shapes call for (Linear,
 * Conv1D, Embedding, Conv), optionally DoRA, returning the whole merged tensor in memory. For
 * library users with tensors at hand; whole models go through {@linkcode mergeLora}.
 *
 * @example
 * ```ts
 * import { mergeLoraTensor } from "./lora.ts";
 * import { tensorFromBytes } from "../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const f32 = (shape: number[], v: number[]) =>
 *   tensorFromBytes("F32", shape, new Uint8Array(new Float32Array(v).buffer));
 * const m = await mergeLoraTensor({
 *   weight: f32([2, 3], [0, 0, 0, 0, 0, 0]),
 *   loraA: f32([1, 2], [1, 2]), // Conv1D: weight is [in=2, out=3]
 *   loraB: f32([3, 1], [1, 10, 100]),
 *   scale: 1,
 * }, { backend: "cpu" });
 * assert.equal(m.layout, "conv1d");
 * assert.deepEqual([...new Float32Array(m.data.buffer, m.data.byteOffset, 6)], [1, 10, 100, 2, 20, 200]);
 * ```
 */
export async function mergeLoraTensor(
  input: MergeLoraTensorInput,
  options: Pick<MergeLoraOptions, "backend" | "safe" | "outDtype" | "blockBytes"> = {},
): Promise<MergedTensor> {
  const name = input.name ?? "weight";
  const module = name.endsWith(".weight") ? name.slice(0, -".weight".length) : name;
  const r = input.loraA.shape[0] ?? 0;
  const tensors = new StateDict([
    [`${module}.${input.embedding ? "lora_embedding_A" : "lora_A.weight"}`, input.loraA],
    [`${module}.${input.embedding ? "lora_embedding_B" : "lora_B.weight"}`, input.loraB],
  ]);
  if (input.magnitude) tensors.set(`${module}.lora_magnitude_vector`, input.magnitude);
  const config = {
    peft_type: "LORA",
    r,
    lora_alpha: r,
    use_rslora: false,
    rank_pattern: {},
    alpha_pattern: {},
    fan_in_fan_out: input.fanInFanOut ?? false,
    target_modules: null,
    modules_to_save: null,
    bias: "none" as const,
    lora_bias: false,
    use_dora: input.magnitude !== undefined,
    trainable_token_indices: null,
    init_lora_weights: true,
  };
  const base = new StateDict([[`${module}.weight`, input.weight]]);
  // weight 1 × scale 1 (alpha = r) × input.scale through the adapter weight keeps s exact.
  const { stateDict, report } = await mergeLora(
    base,
    [{ name: "lora", config, tensors, weight: input.scale }],
    options,
  );
  try {
    const ref = stateDict.require(`${module}.weight`);
    const data = await ref.read();
    return {
      dtype: ref.dtype,
      shape: [...ref.shape],
      data,
      layout: report.modules[0]!.layout,
      backend: report.backend?.description ?? "none",
    };
  } finally {
    await stateDict.close();
  }
}
