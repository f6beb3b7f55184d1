/**
 * Ready pipelines for the common saves, as JSONC configs in `pipelines/presets/`:
 *
 * | name                 | what it writes                                                       |
 * | -------------------- | -------------------------------------------------------------------- |
 * | `halos-final`        | HALOs final save: merged weights, tokenizer, optimizer.pt, scheduler.pt, metrics.json |
 * | `halos-intermediate` | HALOs intermediate save: the adapter alone, tokenizer, optimizer, scheduler, metrics |
 * | `ppo-final`          | PPO final save: `halos-final` plus the value head (`v_head.pt`)      |
 * | `plain-merge`        | base + LoRA adapter merged into a model folder (config, weights, tokenizer) |
 * | `halos-final-fsdp`   | `halos-final` from FSDP/DCP shards of a PEFT-wrapped model (`lora_r`, `lora_alpha`) |
 *
 * Each reads the run folder layout documented in the README (`${run}/base`, `${run}/adapter`,
 * `${run}/state/...`) and writes `${out}` (default `${run}/FINAL`); override any variable with
 * `--var name=value`. `halos-final-fsdp` reads `${run}/state/model` and `${run}/state/optimizer`
 * (DCP folders) and needs `--var lora_r=... --var lora_alpha=...`. Relative paths in a preset
 * resolve against the current folder.
 *
 * @example Listing and loading a preset
 * ```ts
 * import { PRESETS, presetText } from "./presets.ts";
 * import assert from "node:assert/strict";
 *
 * assert.ok(Object.keys(PRESETS).includes("ppo-final"));
 * assert.match(await presetText("ppo-final"), /writeValueHead/);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { builtinStages, type ConfigOptions, parseConfig, type PipelineConfig } from "./config.ts";

/** The presets by name: their file in `pipelines/presets/` and a one-line summary. */
export const PRESETS: Readonly<Record<string, { file: string; summary: string }>> = {
  "halos-final": {
    file: "halos_final.jsonc",
    summary: "HALOs final save: merged model, tokenizer, optimizer.pt, scheduler.pt, metrics.json",
  },
  "halos-intermediate": {
    file: "halos_intermediate.jsonc",
    summary: "HALOs intermediate save: adapter only, tokenizer, optimizer, scheduler, metrics",
  },
  "ppo-final": {
    file: "ppo_final.jsonc",
    summary: "PPO final save: the HALOs final save plus the value head (v_head.pt)",
  },
  "plain-merge": {
    file: "plain_merge.jsonc",
    summary: "merge a LoRA adapter into its base model (weights, config, tokenizer)",
  },
  "halos-final-fsdp": {
    file: "halos_final_fsdp.jsonc",
    summary:
      "HALOs final save from FSDP/DCP shards of a PEFT-wrapped model (--var lora_r=, lora_alpha=)",
  },
};

/** URL of a preset's JSONC file. */
export function presetUrl(name: string): URL {
  const preset = Object.hasOwn(PRESETS, name) ? PRESETS[name] : undefined;
  if (!preset) {
    throw new CkptError(
      "PRESET_UNKNOWN",
      `Cannot find preset "${name}": known presets are ${Object.keys(PRESETS).join(", ")}`,
      { details: { name } },
    );
  }
  return new URL(`./presets/${preset.file}`, import.meta.url);
}

/** The JSONC text of a preset (from disk, or fetched when the module runs from a URL). */
export async function presetText(name: string): Promise<string> {
  const url = presetUrl(name);
  if (url.protocol === "file:") return await Deno.readTextFile(url);
  const res = await fetch(url);
  if (!res.ok) {
    throw new CkptError("PRESET_UNKNOWN", `Cannot fetch preset "${name}": HTTP ${res.status}`);
  }
  return await res.text();
}

/**
 * Loads a preset as a validated config. Relative paths resolve against `options.baseDir`
 * (default: the current folder), not the preset's own folder.
 */
export async function loadPreset(
  name: string,
  options: ConfigOptions = {},
): Promise<PipelineConfig> {
  const text = await presetText(name);
  return parseConfig(text, {
    ...options,
    stages: options.stages ?? await builtinStages(),
    baseDir: options.baseDir ?? Deno.cwd(),
    source: options.source ?? `preset ${name}`,
  });
}
