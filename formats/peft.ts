/**
 * PEFT LoRA adapters as files and keys: adapter key naming (saved adapters and the PEFT-wrapped
 * in-memory state dict HALOs merges), loading an adapter folder (`adapter_model.safetensors` or
 * `adapter_model.bin` with its `adapter_config.json`), and splitting a wrapped state dict.
 * The config itself (parsing, pattern rule, scaling): `formats/peft_config.ts`.
 *
 * Sources (restated in `shared/reference/peft_and_hf_checkpoints.md` §1–§2): huggingface/peft
 * `src/peft/tuners/lora/model.py`, `src/peft/utils/save_and_load.py`.
 *
 * @example Naming a saved key
 * ```ts
 * import { classifyAdapterKey } from "./peft.ts";
 * import assert from "node:assert/strict";
 *
 * const k = classifyAdapterKey("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight");
 * assert.deepEqual([k.kind, k.target], ["lora_B", "model.layers.0.mlp.up_proj.weight"]);
 * ```
 * @module
 */
import { basename, dirname, join } from "node:path";
import { CkptError } from "../errors.ts";
import { type LoraConfig, parseLoraConfig } from "./peft_config.ts";
import { inputReadError, readTextInput } from "./read_text.ts";
import { StateDict } from "./state_dict.ts";

/** What an adapter tensor is. */
export type AdapterKeyKind =
  | "lora_A"
  | "lora_B"
  | "lora_B_bias"
  | "lora_embedding_A"
  | "lora_embedding_B"
  | "magnitude"
  | "trainable_tokens"
  | "replacement";

/** An adapter key split into its meaning. */
export interface AdapterKey {
  /** The key as found. */
  key: string;
  /** What the tensor is. */
  kind: AdapterKeyKind;
  /** Module path `M` (LoRA parts, trainable tokens) or the replaced tensor's module. */
  module: string;
  /** Base tensor the entry acts on: `M.weight` for factors/tokens, `M.bias` for `lora_B.bias`, the
   * replaced key for replacements. */
  target: string;
  /** Adapter name found in the key (`default` in wrapped state dicts), if any. */
  adapterName?: string;
}

/** The prefix PEFT puts before base module paths. */
export const PEFT_PREFIX = "base_model.model.";

const LORA_KEY_RULES: readonly [RegExp, AdapterKeyKind, "weight" | "bias"][] = [
  [/^(.+)\.lora_A(?:\.([^.]+))?\.weight$/, "lora_A", "weight"],
  [/^(.+)\.lora_B(?:\.([^.]+))?\.weight$/, "lora_B", "weight"],
  [/^(.+)\.lora_B(?:\.([^.]+))?\.bias$/, "lora_B_bias", "bias"],
  [/^(.+)\.lora_embedding_A(?:\.([^.]+))?$/, "lora_embedding_A", "weight"],
  [/^(.+)\.lora_embedding_B(?:\.([^.]+))?$/, "lora_embedding_B", "weight"],
  [/^(.+)\.lora_magnitude_vector(?:\.([^.]+))?(?:\.weight)?$/, "magnitude", "weight"],
  [/^(.+)\.token_adapter\.trainable_tokens_delta(?:\.([^.]+))?$/, "trainable_tokens", "weight"],
];

/**
 * Classifies one adapter key (§2.4 of the reference): strips `base_model.model.`, recognises LoRA
 * factors, `lora_B.bias`, embedding factors, DoRA magnitudes and trainable-token rows with or
 * without an adapter name (`.default`), and maps every other key to a full replacement of the base
 * key with `.base_layer.` and `.modules_to_save.<name>.` removed.
 *
 * @example Saved and wrapped spellings
 * ```ts
 * import { classifyAdapterKey } from "./peft.ts";
 * import assert from "node:assert/strict";
 *
 * const a = classifyAdapterKey("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
 * assert.deepEqual([a.kind, a.module, a.target], ["lora_A", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj.weight"]);
 * const b = classifyAdapterKey("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight");
 * assert.deepEqual([b.kind, b.adapterName], ["lora_B", "default"]);
 * const bias = classifyAdapterKey("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias");
 * assert.deepEqual([bias.kind, bias.target], ["replacement", "model.layers.0.self_attn.q_proj.bias"]);
 * ```
 */
export function classifyAdapterKey(key: string): AdapterKey {
  const stripped = key.startsWith(PEFT_PREFIX) ? key.slice(PEFT_PREFIX.length) : key;
  for (const [re, kind, param] of LORA_KEY_RULES) {
    const m = re.exec(stripped);
    if (!m) continue;
    const module = m[1]!;
    const name = m[2];
    const out: AdapterKey = { key, kind, module, target: `${module}.${param}` };
    if (name !== undefined && name !== "weight") out.adapterName = name;
    return out;
  }
  let target = stripped.replace(/\.token_adapter\.base_layer\./, ".").replace(
    /\.base_layer\./g,
    ".",
  );
  let adapterName: string | undefined;
  const mts = /^(.*)\.modules_to_save\.([^.]+)\.([^.]+)$/.exec(target);
  if (mts) {
    target = `${mts[1]}.${mts[3]}`;
    adapterName = mts[2];
  }
  const dot = target.lastIndexOf(".");
  const out: AdapterKey = {
    key,
    kind: "replacement",
    module: dot < 0 ? "" : target.slice(0, dot),
    target,
  };
  if (adapterName !== undefined) out.adapterName = adapterName;
  return out;
}

/** An adapter ready to merge: its validated config and its tensors (lazy). */
export interface LoadedAdapter {
  /** Name for reports (folder name, or as given). */
  name: string;
  /** Validated config. */
  config: LoraConfig;
  /** Adapter tensors under their keys as saved. */
  tensors: StateDict;
  /** Folder or file the adapter came from, if any. */
  path?: string;
}

/** File names PEFT writes, in the order `load_peft_weights` prefers them. */
export const ADAPTER_WEIGHT_FILES: readonly string[] = [
  "adapter_model.safetensors",
  "adapter_model.bin",
];

/** `stat`, or undefined when nothing is there; a path that may not be read is `FS_PERMISSION`. */
async function statOrUndefined(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch (cause) {
    if (cause instanceof Deno.errors.NotFound || cause instanceof Deno.errors.NotADirectory) {
      return undefined;
    }
    throw inputReadError(cause, "PEFT_ADAPTER_MISSING", "adapter", path);
  }
}

/** Reads and validates `adapter_config.json` from a file path (`PEFT_CONFIG` when unreadable). */
export async function readLoraConfig(file: string): Promise<LoraConfig> {
  const text = await readTextInput(file, { code: "PEFT_CONFIG", what: "adapter config" });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new CkptError(
      "PEFT_CONFIG",
      `Cannot parse adapter config "${file}": ${(cause as Error).message}`,
      { file, cause },
    );
  }
  return parseLoraConfig(json, file);
}

/** Opens adapter weights from a `.safetensors` or torch `.bin` file, lazily. */
export async function openAdapterWeights(file: string): Promise<StateDict> {
  if (file.endsWith(".safetensors")) {
    const { openSafetensors } = await import("./safetensors.ts");
    return await openSafetensors(file);
  }
  const { openTorchStateDict } = await import("./torch/state_dict.ts");
  return await openTorchStateDict(file);
}

/**
 * Loads a saved PEFT adapter: a folder with `adapter_config.json` and `adapter_model.safetensors`
 * (preferred) or `adapter_model.bin`, or the path of one of those weight files (the config is then
 * read from the same folder). Tensors stay lazy; close `tensors` when done. Errors: `PEFT_CONFIG`,
 * `PEFT_UNSUPPORTED`, `PEFT_ADAPTER_MISSING` (no weight file).
 */
export async function loadAdapter(path: string, name?: string): Promise<LoadedAdapter> {
  const info = await statOrUndefined(path);
  if (!info) {
    throw new CkptError(
      "PEFT_ADAPTER_MISSING",
      `Cannot load adapter "${path}": it does not exist`,
      {
        file: path,
      },
    );
  }
  let dir = path;
  let weights: string | undefined;
  if (info.isFile) {
    weights = path;
    dir = dirname(path);
  } else {
    for (const f of ADAPTER_WEIGHT_FILES) {
      const p = join(dir, f);
      if ((await statOrUndefined(p))?.isFile) {
        weights = p;
        break;
      }
    }
  }
  if (weights === undefined) {
    throw new CkptError(
      "PEFT_ADAPTER_MISSING",
      `Cannot load adapter "${path}": neither ${ADAPTER_WEIGHT_FILES.join(" nor ")} is there`,
      { file: path },
    );
  }
  const config = await readLoraConfig(join(dir, "adapter_config.json"));
  const tensors = await openAdapterWeights(weights);
  return {
    name: name ?? (basename(dir.replace(/\/+$/, "")) || "adapter"),
    config,
    tensors,
    path,
  };
}

/** LoRA hyper-parameters for a PEFT-wrapped state dict (HALOs' `lora_alpha` / `lora_r`). */
export interface WrappedLoraOptions {
  /** Rank (HALOs `config.model.peft.lora_r`); checked against the tensors. */
  r: number;
  /** Alpha (HALOs `config.model.peft.lora_alpha`). */
  alpha: number;
  /** rsLoRA scaling. Default false. */
  useRslora?: boolean;
  /** Per-module rank overrides, PEFT's rule. Default none. */
  rankPattern?: Record<string, number>;
  /** Per-module alpha overrides, PEFT's rule. Default none. */
  alphaPattern?: Record<string, number>;
  /** Disambiguates square Conv1D matrices. Default false. */
  fanInFanOut?: boolean;
  /** Adapter name inside the keys. Default `"default"`. */
  adapterName?: string;
  /** Trainable-token ids, when the state dict has `token_adapter` rows. */
  trainableTokenIndices?: number[] | Record<string, number[]>;
}

/** The two halves of a PEFT-wrapped state dict. */
export interface SplitWrapped {
  /** Base tensors under their plain names (`.base_layer.` removed, biases kept). */
  base: StateDict;
  /** The adapter part, ready for `mergeLora`. */
  adapter: LoadedAdapter;
  /** Keys dropped because they belong to another adapter name. */
  otherAdapterKeys: string[];
}

/**
 * Splits a PEFT-wrapped full state dict (what `accelerator.get_state_dict(peft_model)` returns and
 * HALOs merges in `get_base_model_state_dict_from_peft`) into plain base tensors and an adapter.
 * Unlike HALOs, `<M>.base_layer.bias` is kept (as `<M>.bias`). `modules_to_save` copies become
 * replacements, `original_module` copies the base. The result's base dict adopts the input's
 * resources.
 *
 * @example
 * ```ts
 * import { splitWrappedStateDict } from "./peft.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const t = (n: number) => tensorFromBytes("F32", [n], new Uint8Array(4 * n));
 * const sd = new StateDict([
 *   ["base_model.model.l.q.base_layer.weight", t(4)],
 *   ["base_model.model.l.q.base_layer.bias", t(2)],
 *   ["base_model.model.l.q.lora_A.default.weight", t(2)],
 *   ["base_model.model.l.q.lora_B.default.weight", t(2)],
 *   ["base_model.model.norm.weight", t(2)],
 * ]);
 * const { base, adapter } = splitWrappedStateDict(sd, { r: 1, alpha: 2 });
 * assert.deepEqual([...base.keys()], ["l.q.weight", "l.q.bias", "norm.weight"]);
 * assert.equal(adapter.tensors.size, 2);
 * assert.equal(adapter.config.lora_alpha, 2);
 * ```
 */
export function splitWrappedStateDict(sd: StateDict, options: WrappedLoraOptions): SplitWrapped {
  const adapterName = options.adapterName ?? "default";
  const base = new StateDict();
  base.metadata = { ...sd.metadata };
  const tensors = new StateDict();
  const otherAdapterKeys: string[] = [];
  for (const [key, ref] of sd) {
    const stripped = key.startsWith(PEFT_PREFIX) ? key.slice(PEFT_PREFIX.length) : key;
    const c = classifyAdapterKey(stripped);
    if (c.kind !== "replacement") {
      if (c.adapterName !== undefined && c.adapterName !== adapterName) {
        otherAdapterKeys.push(key);
        continue;
      }
      tensors.set(stripped, ref);
      continue;
    }
    if (/\.modules_to_save\.[^.]+\.[^.]+$/.test(stripped)) {
      if (c.adapterName !== adapterName) {
        otherAdapterKeys.push(key);
        continue;
      }
      tensors.set(stripped, ref);
      continue;
    }
    const om = /^(.*)\.original_module\.([^.]+)$/.exec(stripped);
    base.set(om ? `${om[1]}.${om[2]}` : c.target, ref);
  }
  base.adopt(sd);
  const config = parseLoraConfig({
    peft_type: "LORA",
    r: options.r,
    lora_alpha: options.alpha,
    use_rslora: options.useRslora ?? false,
    rank_pattern: options.rankPattern ?? {},
    alpha_pattern: options.alphaPattern ?? {},
    fan_in_fan_out: options.fanInFanOut ?? false,
    trainable_token_indices: options.trainableTokenIndices ?? null,
    use_dora: [...tensors.keys()].some((k) => k.includes(".lora_magnitude_vector")),
    lora_bias: [...tensors.keys()].some((k) => /\.lora_B(\.[^.]+)?\.bias$/.test(k)),
  });
  return { base, adapter: { name: adapterName, config, tensors }, otherAdapterKeys };
}

/** True when a state dict looks PEFT-wrapped (has `.base_layer.` or `.lora_A.<name>.weight` keys). */
export function isWrappedStateDict(sd: StateDict): boolean {
  for (const k of sd.keys()) {
    if (k.includes(".base_layer.") || /\.lora_(A|B)\.[^.]+\.weight$/.test(k)) return true;
  }
  return false;
}
