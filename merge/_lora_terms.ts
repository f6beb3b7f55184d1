/**
 * The planning steps of one module's parts: trainable-token rows, the LoRA term (with its DoRA
 * magnitude) and the `lora_B.bias` term, each checked against the job it lands in. Private to
 * `merge/lora_plan.ts`.
 * @module
 */
import { CkptError } from "../errors.ts";
import { isFloatDType } from "../formats/dtype.ts";
import type { LoadedAdapter } from "../formats/peft.ts";
import { type ModuleScaling, resolveModuleScaling } from "../formats/peft_config.ts";
import { numel } from "../formats/state_dict.ts";
import { isMergeDType } from "../kernels/types.ts";
import { fmtShape, type Job, type Part, type Parts, type Planner } from "./_lora_job.ts";
import { checkMagnitude, doraModeFor } from "./dora.ts";
import { type LoraLayout, planLayout } from "./layouts.ts";
import type { MergeReport, ModuleAdapterReport } from "./lora_types.ts";

/** The token ids `trainable_token_indices` gives for `module`, if any. */
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

/**
 * Trainable-token rows of `<module>.weight` (a tied `lm_head.weight` gets the embedding's rows in
 * `merge/_lora_tied.ts`). `LORA_TOKENS` for missing indices or rows that do not fit, `LORA_CONFLICT`
 * when the weight already has token rows, `LORA_DTYPE` for non-float tensors.
 */
export function planTokens(
  planner: Planner,
  module: string,
  tokens: Part,
  adapter: LoadedAdapter,
): void {
  const target = `${module}.weight`;
  const job = planner.jobFor(target);
  if (!job) {
    planner.unmatched(tokens.key, `the base has no embedding "${target}"`, "LORA_NO_BASE");
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
  checkTokenRows(tokens, target, job, indices);
  if (job.tokens) throw tokenConflict(tokens, target, job.tokens, indices);
  if (!isFloatDType(job.outDtype) || !isFloatDType(tokens.ref.dtype)) {
    throw new CkptError("LORA_DTYPE", `Cannot merge "${tokens.key}": not a float tensor`, {
      tensor: tokens.key,
    });
  }
  job.tokens = { key: tokens.key, indices: [...indices], values: tokens.ref };
  job.modified = true;
  planner.report.trainableTokens.push({ tensor: target, rows: indices.length });
}

/** `LORA_TOKENS` unless the values are `[indices, hidden]` rows of a 2-D weight, indices in range. */
function checkTokenRows(tokens: Part, target: string, job: Job, indices: number[]): void {
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
}

/** The `LORA_CONFLICT` of a second set of token rows on one weight (naming an overlap if any). */
function tokenConflict(
  tokens: Part,
  target: string,
  prev: NonNullable<Job["tokens"]>,
  indices: number[],
): CkptError {
  const before = new Set(prev.indices);
  const overlap = indices.find((i) => before.has(i));
  if (overlap !== undefined) {
    return new CkptError(
      "LORA_CONFLICT",
      `Cannot merge "${tokens.key}": token ${overlap} is also trained by "${prev.key}"`,
      { tensor: tokens.key },
    );
  }
  return new CkptError(
    "LORA_CONFLICT",
    `Cannot merge "${tokens.key}": "${target}" already has trainable tokens from "${prev.key}"`,
    { tensor: tokens.key },
  );
}

/**
 * Adds one adapter's LoRA pair to `job`: layout from the shapes, scaling from the config (its rank
 * must equal the tensors'), DoRA magnitude, and the module's report entry. `LORA_DTYPE`,
 * `LORA_RANK_MISMATCH`, `LORA_SHAPE` (adapters disagree on the layout), `LORA_DORA`.
 */
export function planLoraTerm(
  module: string,
  job: Job,
  p: Parts,
  pair: { a: Part; b: Part },
  adapter: LoadedAdapter,
  weight: number,
  report: MergeReport,
): void {
  const { a, b } = pair;
  const w = job.source;
  checkTermDtypes(module, job, pair);
  const layout = planLayout({
    module,
    factorKind: p.embedding ? "embedding" : "lora",
    weightShape: w.shape,
    aShape: a.ref.shape,
    bShape: b.ref.shape,
    fanInFanOut: adapter.config.fan_in_fan_out,
  });
  const scaling = resolveModuleScaling(adapter.config, module);
  checkRank(module, scaling, layout, pair);
  if (job.layout && (job.layout.rows !== layout.rows || job.layout.cols !== layout.cols)) {
    throw new CkptError(
      "LORA_SHAPE",
      `Cannot merge "${module}": adapters disagree on its layout (${job.layout.layout} [${job.layout.rows}, ${job.layout.cols}] vs ${layout.layout} [${layout.rows}, ${layout.cols}])`,
      { tensor: job.name },
    );
  }
  planMagnitude(module, job, p.mag, adapter.config.use_dora, layout);
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
  reportModule(report, module, job, layout, adapter.name, scaling, weight);
}

/** `LORA_DTYPE` unless the weight is BF16/F16/F32 in and out and both factors are float. */
function checkTermDtypes(module: string, job: Job, pair: { a: Part; b: Part }): void {
  const w = job.source;
  if (!isMergeDType(w.dtype) || !isMergeDType(job.outDtype)) {
    throw new CkptError(
      "LORA_DTYPE",
      `Cannot merge "${module}": weight dtype ${w.dtype} -> ${job.outDtype} is not among BF16, F16, F32`,
      { tensor: job.name },
    );
  }
  for (const f of [pair.a, pair.b]) {
    if (!isFloatDType(f.ref.dtype)) {
      throw new CkptError(
        "LORA_DTYPE",
        `Cannot merge "${module}": factor "${f.key}" has dtype ${f.ref.dtype}`,
        { tensor: f.key },
      );
    }
  }
}

/** `LORA_RANK_MISMATCH` when the config's rank for the module is not the tensors' rank. */
function checkRank(
  module: string,
  scaling: ModuleScaling,
  layout: LoraLayout,
  { a, b }: { a: Part; b: Part },
): void {
  if (scaling.r === layout.rank) return;
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

/**
 * The DoRA magnitude of the term, checked: present exactly when `use_dora`, and a DoRA module takes
 * exactly one adapter (`LORA_DORA`); its shape must fit the layout.
 */
function planMagnitude(
  module: string,
  job: Job,
  mag: Part | undefined,
  useDora: boolean,
  layout: LoraLayout,
): void {
  if (mag && !useDora) {
    throw new CkptError(
      "LORA_DORA",
      `Cannot merge "${module}": "${mag.key}" is a DoRA magnitude but use_dora is false`,
      { tensor: mag.key },
    );
  }
  if (useDora && !mag) {
    throw new CkptError(
      "LORA_DORA",
      `Cannot merge "${module}": use_dora is true but the adapter has no lora_magnitude_vector for it`,
      { tensor: job.name },
    );
  }
  if (job.magnitude || (mag && job.terms.length > 0)) {
    throw new CkptError(
      "LORA_DORA",
      `Cannot merge "${module}": a DoRA module takes exactly one adapter (PEFT's sequential multi-DoRA merge is version-dependent, peft #3608)`,
      { tensor: job.name },
    );
  }
  if (mag) {
    const mode = doraModeFor(layout.transposed);
    checkMagnitude(module, mode, mag.ref.shape, job.source.shape, layout.rows, layout.cols);
    job.magnitude = { key: mag.key, ref: mag.ref, mode };
  }
}

/** Adds the adapter to the module's report entry (created for the module's first adapter). */
function reportModule(
  report: MergeReport,
  module: string,
  job: Job,
  layout: LoraLayout,
  adapter: string,
  scaling: ModuleScaling,
  weight: number,
): void {
  const adapterReport: ModuleAdapterReport = {
    name: adapter,
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
      shape: [...job.source.shape],
      dtype: job.outDtype,
      dora: job.magnitude ? job.magnitude.mode : false,
      adapters: [adapterReport],
    });
  }
}

/**
 * Adds `lora_B.bias` (× scale × adapter weight) to `<module>.bias`. `LORA_BIAS_MISSING` when the
 * base layer has no bias, `LORA_SHAPE`, `LORA_DTYPE`.
 */
export function planLoraBias(
  planner: Planner,
  module: string,
  bias: Part,
  adapter: LoadedAdapter,
  weight: number,
): void {
  const target = `${module}.bias`;
  const job = planner.jobFor(target);
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
  if (!planner.report.biases.includes(target)) planner.report.biases.push(target);
}
