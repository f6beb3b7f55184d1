/**
 * PEFT LoRA `adapter_config.json`: parsing and validation (PEFT's defaults filled in, variants a
 * weight merge cannot reproduce refused), PEFT's rank/alpha pattern rule and `target_modules`
 * matching. Loading adapters and naming their keys: `formats/peft.ts`.
 *
 * Sources (restated in `shared/reference/peft_and_hf_checkpoints.md` §1–§2): huggingface/peft
 * `src/peft/tuners/lora/config.py`, `src/peft/tuners/lora/model.py`, `src/peft/utils/other.py`
 * (`get_pattern_key`).
 *
 * @example Parsing a config and resolving a module's scaling
 * ```ts
 * import { parseLoraConfig, resolveModuleScaling } from "./peft_config.ts";
 * import assert from "node:assert/strict";
 *
 * const config = parseLoraConfig({
 *   peft_type: "LORA",
 *   r: 8,
 *   lora_alpha: 16,
 *   rank_pattern: { "q_proj": 4 },
 *   alpha_pattern: { "layers.0.q_proj": 2 },
 * });
 * const q0 = resolveModuleScaling(config, "model.layers.0.self_attn.q_proj");
 * assert.deepEqual([q0.r, q0.alpha, q0.scale], [4, 16, 4]);
 * const q1 = resolveModuleScaling(config, "model.layers.1.self_attn.q_proj");
 * assert.deepEqual([q1.r, q1.alpha, q1.scale], [4, 16, 4]);
 * const v0 = resolveModuleScaling(config, "model.layers.0.self_attn.v_proj");
 * assert.equal(v0.scale, 2);
 * ```
 * @module
 */
import { z } from "zod";
import { CkptError } from "../errors.ts";

/** Initialisations that change the base weight; adapters trained with them cannot be merged as `W + ΔW`. */
export const BASE_MUTATING_INITS: readonly string[] = [
  "pissa",
  "olora",
  "corda",
  "lora_ga",
  "loftq",
  "eva",
];

/** Variant switches of `LoraConfig` that a plain (or DoRA) merge does not implement. */
export const UNSUPPORTED_VARIANT_KEYS: readonly string[] = [
  "layer_replication",
  "target_parameters",
  "alora_invocation_tokens",
  "use_qalora",
  "loftq_config",
  "eva_config",
  "corda_config",
  "lora_ga_config",
  "velora_config",
  "monteclora_config",
  "use_bdlora",
  "arrow_config",
  "kasa_config",
];

const intArray = z.array(z.number().int().nonnegative());

/** zod schema of the fields of `adapter_config.json` a merge uses (other keys are kept and ignored). */
const LoraConfigSchema = z.looseObject({
  peft_type: z.string(),
  r: z.number().int().positive().default(8),
  lora_alpha: z.number().finite().default(8),
  use_rslora: z.boolean().default(false),
  rank_pattern: z.record(z.string(), z.number().int().positive()).nullable().default({}),
  alpha_pattern: z.record(z.string(), z.number().finite()).nullable().default({}),
  fan_in_fan_out: z.boolean().default(false),
  target_modules: z.union([z.string(), z.array(z.string())]).nullable().default(null),
  exclude_modules: z.union([z.string(), z.array(z.string())]).nullable().default(null),
  layers_to_transform: z.union([z.number().int(), z.array(z.number().int())]).nullable()
    .default(null),
  layers_pattern: z.union([z.string(), z.array(z.string())]).nullable().default(null),
  modules_to_save: z.array(z.string()).nullable().default(null),
  bias: z.enum(["none", "all", "lora_only"]).default("none"),
  lora_bias: z.boolean().default(false),
  use_dora: z.boolean().default(false),
  trainable_token_indices: z.union([intArray, z.record(z.string(), intArray)]).nullable()
    .default(null),
  init_lora_weights: z.union([z.boolean(), z.string()]).default(true),
  ensure_weight_tying: z.boolean().default(false),
  base_model_name_or_path: z.string().nullable().optional(),
  task_type: z.string().nullable().optional(),
});

/** A validated LoRA adapter config (snake_case, as in `adapter_config.json`, defaults filled in). */
export interface LoraConfig {
  /** Always `"LORA"` once validated. */
  peft_type: string;
  /** Global rank. Default 8. */
  r: number;
  /** Global alpha. Default 8. */
  lora_alpha: number;
  /** rsLoRA: scale = alpha / sqrt(r). Default false. */
  use_rslora: boolean;
  /** Per-module rank overrides (regex keys, PEFT's matching rule). Default `{}`. */
  rank_pattern: Record<string, number> | null;
  /** Per-module alpha overrides (regex keys, PEFT's matching rule). Default `{}`. */
  alpha_pattern: Record<string, number> | null;
  /** Conv1D layout; only used to decide square matrices (see `merge/layouts.ts`). Default false. */
  fan_in_fan_out: boolean;
  /** List of module names or dot-separated suffixes, or one regex (full match): the modules PEFT
   * adapts (`formats/peft_targets.ts`); tensors of other modules are refused. */
  target_modules: string | string[] | null;
  /** Modules never adapted: a regex (full match) or a list of names or suffixes. Default null. */
  exclude_modules?: string | string[] | null;
  /** Only these layer indexes are adapted (list-style `target_modules`). Default null (all). */
  layers_to_transform?: number | number[] | null;
  /** The name(s) before the layer index (`"layers"`, `"h"`); default: any. */
  layers_pattern?: string | string[] | null;
  /** Modules whose full tensors the adapter carries (full replacements). */
  modules_to_save: string[] | null;
  /** Base biases saved in the adapter (`all`/`lora_only`) replace the base ones. */
  bias: "none" | "all" | "lora_only";
  /** `lora_B.bias` present: added (× scale) to the base bias. */
  lora_bias: boolean;
  /** DoRA: magnitude vectors present. */
  use_dora: boolean;
  /** Trainable token rows: a list (for `embed_tokens`) or `{module: ids}`. */
  trainable_token_indices: number[] | Record<string, number[]> | null;
  /** `true`/`false`/`"gaussian"` etc.; base-mutating values are refused. */
  init_lora_weights: boolean | string;
  /** PEFT ≥ 0.18: the adapter keeps tied embeddings tied (its `lm_head` LoRA or copy is tied to
   * the `embed_tokens` one). Default false. */
  ensure_weight_tying?: boolean;
  /** Base model id or path, if recorded. */
  base_model_name_or_path?: string | null | undefined;
  /** Task type, if recorded. */
  task_type?: string | null | undefined;
  /** Any other key of the file, kept as found. */
  [key: string]: unknown;
}

function isSet(value: unknown): boolean {
  if (value === null || value === undefined || value === false) return false;
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === "object") return Object.keys(value).length > 0;
  return true;
}

/**
 * Validates an `adapter_config.json` object and fills PEFT's defaults. Errors:
 * `PEFT_CONFIG` (not an object, wrong field types, with the JSON path), `PEFT_UNSUPPORTED`
 * (`peft_type` other than LORA, base-mutating `init_lora_weights`, `layer_replication`,
 * `target_parameters` and other variants a weight merge cannot reproduce).
 *
 * @example Refusing an AdaLoRA config
 * ```ts
 * import { parseLoraConfig } from "./peft_config.ts";
 * import { isCkptError } from "../errors.ts";
 * import assert from "node:assert/strict";
 *
 * assert.throws(() => parseLoraConfig({ peft_type: "ADALORA" }), (e) => isCkptError(e, "PEFT_UNSUPPORTED"));
 * assert.equal(parseLoraConfig({ peft_type: "LORA" }).lora_alpha, 8);
 * ```
 */
export function parseLoraConfig(json: unknown, file?: string): LoraConfig {
  const where = file === undefined ? {} : { file };
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new CkptError("PEFT_CONFIG", `Cannot read adapter config: expected a JSON object`, where);
  }
  const raw = json as Record<string, unknown>;
  if (typeof raw.peft_type === "string" && raw.peft_type !== "LORA") {
    throw new CkptError(
      "PEFT_UNSUPPORTED",
      `Cannot merge adapter: peft_type is "${raw.peft_type}", only "LORA" is supported`,
      { ...where, details: { peft_type: raw.peft_type } },
    );
  }
  const parsed = LoraConfigSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const path = issue.path.length === 0 ? "<root>" : issue.path.join(".");
    throw new CkptError(
      "PEFT_CONFIG",
      `Cannot read adapter config: ${path}: ${issue.message}`,
      { ...where, details: { path: issue.path.map(String), issues: parsed.error.issues.length } },
    );
  }
  const config = parsed.data as LoraConfig;
  const init = config.init_lora_weights;
  if (typeof init === "string") {
    const lower = init.toLowerCase();
    if (BASE_MUTATING_INITS.some((p) => lower.startsWith(p))) {
      throw new CkptError(
        "PEFT_UNSUPPORTED",
        `Cannot merge adapter: init_lora_weights "${init}" changes the base weight, so the adapter is not a plain delta`,
        { ...where, details: { init_lora_weights: init } },
      );
    }
  }
  for (const key of UNSUPPORTED_VARIANT_KEYS) {
    if (isSet(raw[key])) {
      throw new CkptError(
        "PEFT_UNSUPPORTED",
        `Cannot merge adapter: "${key}" is set (${
          JSON.stringify(raw[key]).slice(0, 80)
        }), which a weight merge does not implement`,
        { ...where, details: { key } },
      );
    }
  }
  return config;
}

/** Translates Python `re` syntax PEFT patterns may use into JavaScript (named groups). */
function pyRegexToJs(pattern: string): string {
  return pattern.replace(/\(\?P<([A-Za-z_][A-Za-z0-9_]*)>/g, "(?<$1>").replace(
    /\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)/g,
    "\\k<$1>",
  );
}

const patternCache = new Map<string, RegExp>();

function patternRegex(pattern: string): RegExp {
  let re = patternCache.get(pattern);
  if (!re) {
    try {
      re = new RegExp(`^(?:.*\\.)?(?:${pyRegexToJs(pattern)})$`);
    } catch (cause) {
      throw new CkptError(
        "PEFT_CONFIG",
        `Cannot compile pattern "${pattern}": ${(cause as Error).message}`,
        { cause },
      );
    }
    patternCache.set(pattern, re);
  }
  return re;
}

/**
 * PEFT's `get_pattern_key` (peft ≥ 0.15, `src/peft/utils/other.py`): the first key, in the
 * pattern object's order, for which `re.match(rf"(.*\.)?({p})$", module)` succeeds; when none does,
 * `module` itself (so that an exact-name entry is then looked up). Note: JavaScript objects list
 * integer-like keys first, so a pattern key such as `"0"` loses its JSON position.
 *
 * @example Suffix match on dot boundaries
 * ```ts
 * import { getPatternKey } from "./peft_config.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(getPatternKey(["q_proj", "proj"], "model.layers.0.q_proj"), "q_proj");
 * assert.equal(getPatternKey(["proj"], "model.layers.0.q_proj"), "model.layers.0.q_proj");
 * ```
 */
export function getPatternKey(patternKeys: Iterable<string>, module: string): string {
  for (const p of patternKeys) if (patternRegex(p).test(module)) return p;
  return module;
}

/** Rank, alpha and scaling PEFT uses for one module. */
export interface ModuleScaling {
  /** Rank after `rank_pattern`. */
  r: number;
  /** Alpha after `alpha_pattern`. */
  alpha: number;
  /** `alpha / r`, or `alpha / sqrt(r)` with rsLoRA. */
  scale: number;
  /** The `rank_pattern` key used, if any. */
  rankPattern?: string;
  /** The `alpha_pattern` key used, if any. */
  alphaPattern?: string;
}

/**
 * Resolves rank and alpha for `module` (path without `base_model.model.`) independently through
 * `rank_pattern` and `alpha_pattern` with {@linkcode getPatternKey}, then the scaling
 * (`alpha / r`, or `alpha / sqrt(r)` when `use_rslora`).
 *
 * @example rsLoRA
 * ```ts
 * import { parseLoraConfig, resolveModuleScaling } from "./peft_config.ts";
 * import assert from "node:assert/strict";
 *
 * const c = parseLoraConfig({ peft_type: "LORA", r: 16, lora_alpha: 8, use_rslora: true });
 * assert.equal(resolveModuleScaling(c, "model.layers.0.mlp.up_proj").scale, 2);
 * ```
 */
export function resolveModuleScaling(
  config: Pick<LoraConfig, "r" | "lora_alpha" | "use_rslora" | "rank_pattern" | "alpha_pattern">,
  module: string,
): ModuleScaling {
  const ranks = config.rank_pattern ?? {};
  const alphas = config.alpha_pattern ?? {};
  const rKey = getPatternKey(Object.keys(ranks), module);
  const aKey = getPatternKey(Object.keys(alphas), module);
  const r = Object.hasOwn(ranks, rKey) ? ranks[rKey]! : config.r;
  const alpha = Object.hasOwn(alphas, aKey) ? alphas[aKey]! : config.lora_alpha;
  const scale = config.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
  const out: ModuleScaling = { r, alpha, scale };
  if (Object.hasOwn(ranks, rKey)) out.rankPattern = rKey;
  if (Object.hasOwn(alphas, aKey)) out.alphaPattern = aKey;
  return out;
}

/**
 * True when `module` is targeted by a `target_modules` entry: a list entry matches the full name
 * or a dot-separated suffix; a string is a regex that must match the whole name (PEFT's
 * `check_target_module_exists`).
 */
export function matchesTargetModule(target: string | string[], module: string): boolean {
  if (typeof target === "string") {
    if (target === "all-linear") return true;
    try {
      return new RegExp(`^(?:${pyRegexToJs(target)})$`).test(module);
    } catch {
      return false;
    }
  }
  return target.some((t) => module === t || module.endsWith(`.${t}`));
}
