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
 * into the output dtype (`kernels/reference.ts` defines the order). The output dtype is
 * `outDtype` (default: the base tensor's), or the dtype a later cast asks for: the merged refs
 * implement `TensorRef.cast`, so `castRef(ref, "F32")` (writeModel's `dtype`) computes the merge
 * again straight into F32 instead of widening the bf16-rounded values. One rounding, to the final
 * dtype, whatever the entry point.
 *
 * ## Where the parts live
 * `merge/lora_load.ts` (unwrapping a PEFT-wrapped base, loading and naming adapters),
 * `merge/lora_plan.ts` (keys and shapes to one job per output tensor, every check),
 * `merge/lora_run.ts` (the lazy merged tensors), `merge/lora_types.ts` (options and report),
 * `merge/lora_tensor.ts` (`mergeLoraTensor`, one pair in memory).
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
import { StateDict } from "../formats/state_dict.ts";
import type { MergeBackend } from "../kernels/types.ts";
import { ChangeTracker } from "./_lora_change.ts";
import type { Plan, WeightedAdapter } from "./_lora_job.ts";
import { loadAdapters, unwrapBase } from "./lora_load.ts";
import { planLoraMerge } from "./lora_plan.ts";
import { checkPlanFinite, createReadContext, jobRef, type ReadContext } from "./lora_run.ts";
import type {
  AdapterInput,
  MergeLoraOptions,
  MergeLoraResult,
  MergeReport,
  ModuleChange,
} from "./lora_types.ts";

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
    const report = emptyReport();
    const split = unwrapBase(base, options);
    if (split) baseDict = split.base;
    const loaded = await loadAdapters(adapters, split, options, report, opened);
    const plan = planLoraMerge(baseDict, loaded, options, report);
    if (options.safe) await checkPlanFinite(plan);
    const chosen = await chooseBackend(plan, options, report);
    if (chosen?.owned) ownedBackend = chosen.backend;
    const ctx = createReadContext(chosen?.backend, options, changeTracker(report));
    const stateDict = mergedStateDict(plan, ctx, { base, baseDict, loaded, ownedBackend });
    return { stateDict, report };
  } catch (e) {
    for (const sd of opened) await sd.close().catch(() => {});
    if (baseDict !== base) base.adopt(baseDict); // the caller still owns (and closes) the base
    if (ownedBackend) await ownedBackend.dispose().catch(() => {});
    throw e;
  }
}

/** Records each merged tensor's change in `report.changes`, in `report.modules` order. */
function changeTracker(report: MergeReport): ChangeTracker {
  return new ChangeTracker(({ tensor, dtype, change }) => {
    const order = report.modules.findIndex((m) => m.tensor === tensor);
    const module = report.modules[order]?.module ?? tensor.replace(/\.weight$/, "");
    const normW = Math.sqrt(change.sumSqW);
    const normDelta = Math.sqrt(change.sumSqDelta);
    const entry: ModuleChange = {
      module,
      tensor,
      dtype,
      normW,
      normDelta,
      relNorm: normDelta === 0 ? 0 : normW === 0 ? Infinity : normDelta / normW,
      maxAbs: change.maxAbs,
    };
    const at = report.changes.findIndex((c) => c.tensor === tensor);
    if (at >= 0) report.changes[at] = entry;
    else {
      report.changes.push(entry);
      const rank = (c: ModuleChange) => report.modules.findIndex((m) => m.tensor === c.tensor);
      report.changes.sort((a, b) => rank(a) - rank(b));
    }
  });
}

function emptyReport(): MergeReport {
  return {
    adapters: [],
    modules: [],
    changes: [],
    replaced: [],
    biases: [],
    trainableTokens: [],
    unmatchedKeys: [],
    added: [],
    unusedTargetModules: [],
    targetModulesWithoutTensors: [],
    otherAdapterKeys: [],
    untargeted: [],
    warnings: [],
  };
}

/** Merged weights from which `auto` calibrates the backends instead of deciding by adapter kind:
 * 64 M (a model of a few hundred MB), where a second's calibration, once, is worth it. */
const CALIBRATE_ABOVE = 2 ** 26;

/**
 * The backend the plan needs (none when no job has a LoRA term): the caller's instance, or one
 * created for `options.backend` (default `"auto"`), which the merged state dict then owns.
 */
async function chooseBackend(
  plan: Plan,
  options: MergeLoraOptions,
  report: MergeReport,
): Promise<{ backend: MergeBackend; owned: boolean } | undefined> {
  if (![...plan.jobs.values()].some((j) => j.terms.length > 0)) return undefined;
  const choice = options.backend ?? "auto";
  if (typeof choice === "object") {
    report.backend = {
      kind: choice.kind,
      description: choice.description,
      reason: "backend given by the caller",
    };
    return { backend: choice, owned: false };
  }
  const { createMergeBackend } = await import("./backend.ts");
  // auto calibrates (once per machine, GPU adapter and rank: cached) on blocks like the largest
  // merged weight's, when the merge is large enough for the choice to matter
  let shape = { rank: 1, cols: 1, size: 0 };
  let total = 0;
  for (const j of plan.jobs.values()) {
    if (!j.layout || j.terms.length === 0) continue;
    const size = j.layout.rows * j.layout.cols;
    total += size;
    const rank = j.terms.reduce((r, t) => r + t.layout.rank, 0);
    if (size > shape.size) shape = { rank, cols: j.layout.cols, size };
  }
  const created = await createMergeBackend(choice, {
    ...(total >= CALIBRATE_ABOVE ? { calibrate: { rank: shape.rank, cols: shape.cols } } : {}),
    ...(options.backendOptions ?? {}),
  });
  const backend = created.backend;
  report.backend = { kind: backend.kind, description: backend.description, reason: created.reason };
  if (created.calibration) report.backend.calibration = created.calibration;
  return { backend, owned: true };
}

/**
 * The merged state dict: planned jobs as lazy merged refs, every other tensor from the base. It
 * owns the base's, the adapters' and an owned backend's resources.
 */
function mergedStateDict(
  plan: Plan,
  ctx: ReadContext,
  own: {
    base: StateDict;
    baseDict: StateDict;
    loaded: readonly WeightedAdapter[];
    ownedBackend: MergeBackend | undefined;
  },
): StateDict {
  const { base, baseDict, loaded, ownedBackend } = own;
  const out = new StateDict();
  out.metadata = { ...baseDict.metadata };
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
  return out;
}
