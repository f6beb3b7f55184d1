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

/**
 * Checks every module of `parts` that holds LoRA factors, a DoRA magnitude or a `lora_B.bias`
 * against the adapter's config; refuses the untargeted ones, or with `untargeted: "skip"` removes
 * those tensors from `parts` (trainable tokens stay: `trainable_token_indices` governs them).
 */
export function dropUntargeted(
  planner: Planner,
  adapter: LoadedAdapter,
  parts: Map<string, Parts>,
): void {
  const found: { module: string; original: string; reason: string }[] = [];
  for (const [module, p] of parts) {
    const first = p.a ?? p.b ?? p.mag ?? p.bias;
    if (!first) continue;
    // the config names modules as the adapter's own keys do (before any rename)
    const original = classifyAdapterKey(first.key).module;
    const reason = untargetedReason(adapter.config, original, p.embedding);
    if (reason !== undefined) found.push({ module, original, reason });
  }
  if (found.length === 0) return;
  if ((planner.options.untargeted ?? "refuse") === "refuse") {
    const named = found.slice(0, NAMED).map((f) => `${f.original} (${f.reason})`).join(", ");
    throw new CkptError(
      "LORA_UNTARGETED",
      `Cannot merge adapter "${adapter.name}": its adapter_config.json would not adapt ${found.length} ` +
        `module${found.length === 1 ? "" : "s"} that hold${
          found.length === 1 ? "s" : ""
        } LoRA tensors, ` +
        `so PEFT would ignore them: ${named}${found.length > NAMED ? ", ..." : ""} ` +
        `(fix target_modules / exclude_modules / layers_to_transform, or merge only what PEFT ` +
        `applies with untargeted: "skip")`,
      {
        details: {
          adapter: adapter.name,
          count: found.length,
          modules: found.slice(0, 100).map((f) => ({ module: f.original, reason: f.reason })),
        },
      },
    );
  }
  for (const f of found) {
    const p = parts.get(f.module)!;
    delete p.a;
    delete p.b;
    delete p.mag;
    delete p.bias;
    planner.report.untargeted.push({ adapter: adapter.name, module: f.original, reason: f.reason });
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
