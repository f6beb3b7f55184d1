/**
 * Which modules PEFT puts a LoRA layer on: PEFT's `check_target_module_exists`
 * (`src/peft/tuners/tuners_utils.py`, peft 0.21) over a module's name, so a merge applies exactly
 * the tensors `PeftModel.from_pretrained` would load into a layer, and no others. In PEFT's order:
 *
 * 1. `exclude_modules` (a regex that must match the whole name, or a list of names or
 *    dot-separated suffixes) excludes;
 * 2. a module named in `modules_to_save` (on a dot boundary) is never also adapted;
 * 3. `target_modules`: a string is a regex that must match the whole name; a list entry matches
 *    the name or a dot-separated suffix (`"all-linear"` takes every linear layer but the output
 *    head, `lm_head`, and no embedding);
 * 4. `layers_to_transform` (with `layers_pattern`) keeps list matches whose layer index, the
 *    number after `<pattern>.`, is among the given ones (an exact full-name entry is kept as is).
 *
 * @example A config that adapts q_proj of layer 0 only
 * ```ts
 * import { parseLoraConfig } from "./peft_config.ts";
 * import { untargetedReason } from "./peft_targets.ts";
 * import assert from "node:assert/strict";
 *
 * const c = parseLoraConfig({
 *   peft_type: "LORA", target_modules: ["q_proj"], layers_to_transform: [0],
 * });
 * assert.equal(untargetedReason(c, "model.layers.0.self_attn.q_proj"), undefined);
 * assert.equal(untargetedReason(c, "model.layers.1.self_attn.q_proj"), "layers_to_transform");
 * assert.equal(untargetedReason(c, "model.layers.0.self_attn.v_proj"), "target_modules");
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import type { LoraConfig } from "./peft_config.ts";

/** Why PEFT would not adapt a module: the config field that rules it out. */
export type UntargetedReason =
  | "exclude_modules"
  | "modules_to_save"
  | "target_modules"
  | "layers_to_transform";

/** What the targeting rules read from a config. */
export type TargetingConfig = Pick<
  LoraConfig,
  | "target_modules"
  | "exclude_modules"
  | "modules_to_save"
  | "layers_to_transform"
  | "layers_pattern"
>;

const regexCache = new Map<string, RegExp>();

/** Python `re` syntax (named groups) to JavaScript. */
function pyToJs(pattern: string): string {
  return pattern.replace(/\(\?P<([A-Za-z_][A-Za-z0-9_]*)>/g, "(?<$1>").replace(
    /\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)/g,
    "\\k<$1>",
  );
}

/** `pattern` compiled with `wrap` around it (`PEFT_CONFIG` naming the field when it does not compile). */
function compiled(field: string, pattern: string, wrap: (p: string) => string): RegExp {
  const src = wrap(pyToJs(pattern));
  let re = regexCache.get(src);
  if (!re) {
    try {
      re = new RegExp(src);
    } catch (cause) {
      throw new CkptError(
        "PEFT_CONFIG",
        `Cannot compile ${field} pattern "${pattern}": ${(cause as Error).message}`,
        { cause, details: { field, pattern } },
      );
    }
    regexCache.set(src, re);
  }
  return re;
}

/** `re.fullmatch(pattern, name)`. */
function fullMatch(field: string, pattern: string, name: string): boolean {
  return compiled(field, pattern, (p) => `^(?:${p})$`).test(name);
}

/** The name equals an entry or ends with `.entry`. */
function nameOrSuffix(entries: readonly string[], name: string): boolean {
  return entries.some((e) => name === e || name.endsWith(`.${e}`));
}

/**
 * Why PEFT would put no LoRA layer on `module` (its name in the model, without
 * `base_model.model.`), or undefined when it would. `embedding` says the adapter holds an embedding
 * LoRA for it (`"all-linear"` takes no embeddings). A config without `target_modules` (null) is not
 * checked: PEFT would pick a default list by model type, which the folder does not say.
 */
export function untargetedReason(
  config: TargetingConfig,
  module: string,
  embedding = false,
): UntargetedReason | undefined {
  const exclude = config.exclude_modules;
  if (exclude !== null && exclude !== undefined && exclude.length > 0) {
    if (
      typeof exclude === "string"
        ? fullMatch("exclude_modules", exclude, module)
        : nameOrSuffix(exclude, module)
    ) return "exclude_modules";
  }
  for (const m of config.modules_to_save ?? []) {
    if (compiled("modules_to_save", m, (p) => `^(?:|.*\\.)(?:${p})(?:$|\\.)`).test(module)) {
      return "modules_to_save";
    }
  }
  const target = config.target_modules;
  if (target === null || target === undefined) return undefined;
  if (target === "all-linear") {
    const last = module.slice(module.lastIndexOf(".") + 1);
    return embedding || last === "lm_head" ? "target_modules" : undefined;
  }
  if (typeof target === "string") {
    return fullMatch("target_modules", target, module) ? undefined : "target_modules";
  }
  if (target.includes(module)) return undefined;
  if (!nameOrSuffix(target, module)) return "target_modules";
  return layerKept(config, module) ? undefined : "layers_to_transform";
}

/** `layers_to_transform` / `layers_pattern` for a module a list entry matched by suffix. */
function layerKept(config: TargetingConfig, module: string): boolean {
  const layers = config.layers_to_transform;
  if (layers === null || layers === undefined || (Array.isArray(layers) && layers.length === 0)) {
    return true;
  }
  const patterns = config.layers_pattern;
  let index: string | undefined;
  if (patterns === null || patterns === undefined || patterns.length === 0) {
    index = /^.*\.[^.]*\.(\d+)\./.exec(module)?.[1];
  } else {
    for (const p of typeof patterns === "string" ? [patterns] : patterns) {
      index = compiled("layers_pattern", p, (x) => `^.*\\.(?:${x})\\.(\\d+)\\.`).exec(module)?.[1];
      if (index !== undefined) break;
    }
  }
  if (index === undefined) return false;
  const n = Number(index);
  return typeof layers === "number" ? n === layers : layers.includes(n);
}
