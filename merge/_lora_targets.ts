/**
 * Private: an adapter's LoRA tensors held against its own config, as PEFT holds them
 * (`formats/peft_targets.ts`): modules the config would not adapt are refused
 * (`LORA_UNTARGETED`) or, with `untargeted: "skip"`, left out as PEFT leaves them; and a
 * negative `lora_alpha`, which PEFT accepts, is said in the report. Used by `merge/lora_plan.ts`.
 * @module
 */
import { CkptError } from "../errors.ts";
import { classifyAdapterKey, type LoadedAdapter } from "../formats/peft.ts";
import { untargetedReason } from "../formats/peft_targets.ts";
import type { Parts, Planner } from "./_lora_job.ts";
import type { MergeReport } from "./lora_types.ts";

/** How many modules an error message names. */
const NAMED = 8;

/** A module with LoRA tensors its adapter's config would not adapt, and the field that rules it out. */
export interface UntargetedModule {
  /** The module as the adapter names it (without `base_model.model.`). */
  module: string;
  /** The config field that rules it out. */
  reason: string;
}

/**
 * The modules of `adapter` that hold LoRA factors, a DoRA magnitude or a `lora_B.bias` and that
 * its config would not adapt (trainable tokens are governed by `trainable_token_indices`, full
 * copies by `modules_to_save`: neither counts). Reads key names only.
 */
export function untargetedModules(adapter: LoadedAdapter): UntargetedModule[] {
  const embedding = new Map<string, boolean>();
  for (const key of adapter.tensors.keys()) {
    const c = classifyAdapterKey(key);
    if (
      c.kind === "lora_A" || c.kind === "lora_B" || c.kind === "lora_embedding_A" ||
      c.kind === "lora_embedding_B" || c.kind === "magnitude" || c.kind === "lora_B_bias"
    ) {
      const emb = c.kind === "lora_embedding_A" || c.kind === "lora_embedding_B";
      embedding.set(c.module, (embedding.get(c.module) ?? false) || emb);
    }
  }
  const found: UntargetedModule[] = [];
  for (const [module, emb] of embedding) {
    const reason = untargetedReason(adapter.config, module, emb);
    if (reason !== undefined) found.push({ module, reason });
  }
  return found.sort((a, b) => (a.module < b.module ? -1 : a.module > b.module ? 1 : 0));
}

/** `LORA_UNTARGETED` for `adapter`'s untargeted modules `found` (non-empty). */
export function untargetedError(adapter: LoadedAdapter, found: UntargetedModule[]): CkptError {
  const named = found.slice(0, NAMED).map((f) => `${f.module} (${f.reason})`).join(", ");
  return new CkptError(
    "LORA_UNTARGETED",
    `Cannot merge adapter "${adapter.name}": its adapter_config.json would not adapt ${found.length} ` +
      `module${found.length === 1 ? "" : "s"} that hold${
        found.length === 1 ? "s" : ""
      } LoRA tensors, ` +
      `so PEFT would ignore them: ${named}${found.length > NAMED ? ", ..." : ""} ` +
      `(fix target_modules / exclude_modules / layers_to_transform, or merge only what PEFT ` +
      `applies: untargeted: "skip", ckpt merge --untargeted skip)`,
    {
      details: {
        adapter: adapter.name,
        count: found.length,
        modules: found.slice(0, 100).map((f) => ({ module: f.module, reason: f.reason })),
      },
    },
  );
}

/**
 * Refuses the modules of `parts` the adapter's config would not adapt, or with
 * `untargeted: "skip"` removes their LoRA tensors from `parts` (trainable tokens stay).
 */
export function dropUntargeted(
  planner: Planner,
  adapter: LoadedAdapter,
  parts: Map<string, Parts>,
): void {
  const found = untargetedModules(adapter);
  if (found.length === 0) return;
  if ((planner.options.untargeted ?? "refuse") === "refuse") throw untargetedError(adapter, found);
  const skip = new Set(found.map((f) => f.module));
  for (const p of parts.values()) {
    const first = p.a ?? p.b ?? p.mag ?? p.bias;
    // parts are keyed by the renamed module; the config names the adapter's own
    if (!first || !skip.has(classifyAdapterKey(first.key).module)) continue;
    delete p.a;
    delete p.b;
    delete p.mag;
    delete p.bias;
  }
  for (const f of found) {
    planner.report.untargeted.push({ adapter: adapter.name, module: f.module, reason: f.reason });
  }
  planner.report.warnings.push(
    `adapter "${adapter.name}": LoRA tensors of ${found.length} module${
      found.length === 1 ? "" : "s"
    } its config would not adapt were left out, as PEFT leaves them`,
  );
}

/** Says in the report when the adapter's `lora_alpha` (or an `alpha_pattern` value) is negative. */
export function warnNegativeAlpha(adapter: LoadedAdapter, report: MergeReport): void {
  const c = adapter.config;
  const negative = Object.entries(c.alpha_pattern ?? {}).filter(([, a]) => a < 0).map(([k]) => k);
  if (c.lora_alpha >= 0 && negative.length === 0) return;
  report.warnings.push(
    `adapter "${adapter.name}": ${
      c.lora_alpha < 0 ? `lora_alpha is ${c.lora_alpha}` : `alpha_pattern ${negative.join(", ")}`
    } is negative; PEFT accepts it and so does the merge: the scaled update B·A is subtracted`,
  );
}
