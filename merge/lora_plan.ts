/**
 * Planning a LoRA merge: from the base's keys and the adapters' keys and shapes (no tensor data) to
 * one {@linkcode Job} per output tensor an adapter touches. Everything is checked here, so bad input
 * fails before any data is read or written. Two passes: full replacements of every adapter first
 * (a saved `modules_to_save` copy, a saved bias or embedding, replaces the base before any delta),
 * then each adapter's LoRA parts grouped by module. Private to `mergeLora` (`merge/lora.ts`).
 * @module
 */
import { CkptError } from "../errors.ts";
import { type DType, isFloatDType } from "../formats/dtype.ts";
import { type AdapterKey, classifyAdapterKey, type LoadedAdapter } from "../formats/peft.ts";
import { matchesTargetModule } from "../formats/peft_config.ts";
import type { StateDict, TensorRef } from "../formats/state_dict.ts";
import {
  fmtShape,
  type Job,
  type Part,
  type Parts,
  type Plan,
  type Planner,
  type WeightedAdapter,
} from "./_lora_job.ts";
import { planLoraBias, planLoraTerm, planTokens } from "./_lora_terms.ts";
import { findTiedPair, settleTiedPair, type TiedPair } from "./_lora_tied.ts";
import { dropUntargeted, warnNegativeAlpha } from "./_lora_targets.ts";
import type { MergeLoraOptions, MergeReport } from "./lora_types.ts";

/**
 * Plans the merge of `loaded` (in order) into `base`, filling `report` with the modules, the
 * replacements, biases and tokens it plans. Throws the coded `LORA_*` errors `mergeLora` lists.
 */
export function planLoraMerge(
  base: StateDict,
  loaded: readonly WeightedAdapter[],
  options: MergeLoraOptions,
  report: MergeReport,
): Plan {
  const pair = findTiedPair(base, options);
  const planner = createPlanner(base, options, report, pair);
  // Pass 1: replacements, per adapter in order.
  const replacedBy = new Map<string, string>();
  for (const { adapter } of loaded) planReplacements(planner, adapter, replacedBy);
  // Pass 2: LoRA parts, grouped by adapter and module.
  for (const { adapter, weight } of loaded) planAdapter(planner, adapter, weight);
  // Tied embeddings changed differently: untie them (merge/_lora_tied.ts).
  if (pair) settleTiedPair(planner, pair, loaded, replacedBy);
  return { order: planner.order, jobs: planner.jobs };
}

/** The rename rules as regular expressions (`LORA_RENAME` for a pattern that does not compile). */
function compileRenames(
  renames: MergeLoraOptions["renames"],
): (readonly [RegExp, string])[] {
  return (renames ?? []).map(([p, r]) => {
    try {
      return [new RegExp(p), r] as const;
    } catch (cause) {
      throw new CkptError("LORA_RENAME", `Cannot compile rename pattern "${p}": ${cause}`, {
        cause,
      });
    }
  });
}

function createPlanner(
  base: StateDict,
  options: MergeLoraOptions,
  report: MergeReport,
  pair: TiedPair | undefined,
): Planner {
  const allowUnmatched = options.allowUnmatched ?? false;
  const order = [...base.keys()];
  const jobs = new Map<string, Job>();
  const outDtypeFor = (d: DType): DType => options.outDtype ?? d;
  const renames = compileRenames(options.renames);
  return {
    base,
    options,
    report,
    order,
    jobs,
    classify(key: string): AdapterKey {
      const c = classifyAdapterKey(key);
      if (renames.length === 0) return c;
      let module = c.module;
      for (const [re, r] of renames) module = module.replace(re, r);
      if (module === c.module) return c;
      return { ...c, module, target: module + c.target.slice(c.module.length) };
    },
    jobFor(name: string): Job | undefined {
      let job = jobs.get(name);
      if (job) return job;
      let src = base.get(name);
      if (!src && pair?.implicit && name === pair.output) {
        // a checkpoint that stores tied embeddings once: the output starts as the input's weight
        src = base.require(pair.input);
        order.push(name);
      }
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
    },
    unmatched(key: string, what: string, code: "LORA_NO_BASE" | "LORA_UNMATCHED"): void {
      if (allowUnmatched) {
        report.unmatchedKeys.push(key);
        return;
      }
      const message = `Cannot merge adapter key "${key}": ${what} (pass allowUnmatched to skip it)`;
      throw code === "LORA_NO_BASE"
        ? new CkptError("LORA_NO_BASE", message, { tensor: key })
        : new CkptError("LORA_UNMATCHED", message, { tensor: key });
    },
  };
}

/** Pass 1 for one adapter: its full tensors replace (or, unmatched, add) base tensors. */
function planReplacements(
  planner: Planner,
  adapter: LoadedAdapter,
  replacedBy: Map<string, string>,
): void {
  for (const [key, ref] of adapter.tensors) {
    const c = planner.classify(key);
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
    const job = planner.jobFor(c.target);
    if (!job) {
      planner.unmatched(key, `the base has no tensor "${c.target}"`, "LORA_UNMATCHED");
      addTensor(planner, c.target, ref);
      continue;
    }
    job.source = ref;
    job.modified = job.modified || ref.dtype !== job.outDtype;
    if (!isFloatDType(ref.dtype) && ref.dtype !== job.outDtype) job.outDtype = ref.dtype;
    planner.report.replaced.push(c.target);
  }
}

/** An adapter tensor the base lacks, added (with `allowUnmatched`) after the base's tensors. */
function addTensor(planner: Planner, name: string, ref: TensorRef): void {
  const { outDtype } = planner.options;
  planner.report.added.push(name);
  planner.order.push(name);
  planner.jobs.set(name, {
    name,
    source: ref,
    outDtype: isFloatDType(ref.dtype) && outDtype ? outDtype : ref.dtype,
    terms: [],
    biasTerms: [],
    modified: outDtype !== undefined && isFloatDType(ref.dtype) && ref.dtype !== outDtype,
  });
}

/** Pass 2 for one adapter: its LoRA parts, module by module, then the target-module report. */
function planAdapter(planner: Planner, adapter: LoadedAdapter, weight: number): void {
  const loraModules: string[] = [];
  const parts = groupParts(planner, adapter, weight);
  dropUntargeted(planner, adapter, parts);
  warnNegativeAlpha(adapter, planner.report);
  for (const [module, p] of parts) {
    if (planModule(planner, module, p, adapter, weight)) loraModules.push(module);
  }
  reportTargets(adapter, loraModules, planner.base, planner.report);
}

/** The adapter's LoRA tensors (everything but replacements) grouped by module. */
function groupParts(planner: Planner, adapter: LoadedAdapter, weight: number): Map<string, Parts> {
  const parts = new Map<string, Parts>();
  for (const [key, ref] of adapter.tensors) {
    const c = planner.classify(key);
    if (c.kind === "replacement") continue;
    let p = parts.get(c.module);
    if (!p) {
      p = { adapter: adapter.name, weight, embedding: false };
      parts.set(c.module, p);
    }
    addPart(p, { ...c, ref });
  }
  return parts;
}

/** Files one tensor under its kind (`LORA_CONFLICT` for a second A or B factor). */
function addPart(p: Parts, entry: Part): void {
  switch (entry.kind) {
    case "lora_A":
    case "lora_embedding_A":
      if (p.a) {
        throw new CkptError("LORA_CONFLICT", `Cannot merge "${entry.module}": two A factors`, {
          tensor: entry.key,
        });
      }
      p.a = entry;
      p.embedding = entry.kind === "lora_embedding_A";
      break;
    case "lora_B":
    case "lora_embedding_B":
      if (p.b) {
        throw new CkptError("LORA_CONFLICT", `Cannot merge "${entry.module}": two B factors`, {
          tensor: entry.key,
        });
      }
      p.b = entry;
      p.embedding = entry.kind === "lora_embedding_B";
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

/**
 * Plans one module of one adapter: its trainable tokens, its LoRA pair (with DoRA magnitude) and
 * its `lora_B.bias`. True when the module has a LoRA pair on a base weight.
 */
function planModule(
  planner: Planner,
  module: string,
  p: Parts,
  adapter: LoadedAdapter,
  weight: number,
): boolean {
  if (p.tokens) planTokens(planner, module, p.tokens, adapter);
  const pair = factorPair(module, p);
  if (!pair) return false;
  const job = planner.jobFor(`${module}.weight`);
  if (!job) {
    planner.unmatched(pair.a.key, `the base has no weight "${module}.weight"`, "LORA_NO_BASE");
    planner.report.unmatchedKeys.push(pair.b.key);
    for (const e of [p.bias, p.mag]) if (e) planner.report.unmatchedKeys.push(e.key);
    return false;
  }
  planLoraTerm(module, job, p, pair, adapter, weight, planner.report);
  if (p.bias) planLoraBias(planner, module, p.bias, adapter, weight);
  return true;
}

/**
 * The module's A and B factors, or undefined when it has neither (tokens only);
 * `LORA_FACTOR_MISSING` for half a pair, a bias or magnitude without a pair, or mixed kinds.
 */
function factorPair(module: string, p: Parts): { a: Part; b: Part } | undefined {
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
    return undefined;
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
  return { a: p.a, b: p.b };
}

/** Reports `target_modules` entries that matched nothing and targeted modules without tensors. */
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
