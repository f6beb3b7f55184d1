/**
 * Wrapper names that training wrappers add to state-dict keys, and their removal: leading
 * `module.` (DDP) and `_orig_mod.` (torch.compile), and the `_fsdp_wrapped_module.`,
 * `_checkpoint_wrapped_module.` and `_orig_mod.` segments anywhere (FSDP1, activation
 * checkpointing). Two keys that become equal are an error (`GATHER_DUPLICATE`).
 *
 * @example Stripping wrapper names
 * ```ts
 * import { stripWrapperNames } from "./names.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(
 *   stripWrapperNames("module.model.layers.0._fsdp_wrapped_module.mlp.weight"),
 *   "model.layers.0.mlp.weight",
 * );
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { StateDict } from "../formats/state_dict.ts";

/** Leading prefixes removed by default (repeatedly). */
export const DEFAULT_STRIP_PREFIXES: readonly string[] = ["module.", "_orig_mod."];
/** Whole key segments removed anywhere by default. */
export const DEFAULT_STRIP_SEGMENTS: readonly string[] = [
  "_fsdp_wrapped_module",
  "_checkpoint_wrapped_module",
  "_orig_mod",
];

/** Options of {@linkcode stripWrapperNames}. */
export interface StripOptions {
  /** Leading prefixes to remove, repeatedly (default {@linkcode DEFAULT_STRIP_PREFIXES}). */
  prefixes?: readonly string[];
  /** Dot-separated segments to remove anywhere (default {@linkcode DEFAULT_STRIP_SEGMENTS}). */
  segments?: readonly string[];
}

/** Removes wrapper prefixes and segments from one key. */
export function stripWrapperNames(key: string, options: StripOptions = {}): string {
  const prefixes = options.prefixes ?? DEFAULT_STRIP_PREFIXES;
  const segments = options.segments ?? DEFAULT_STRIP_SEGMENTS;
  let k = key;
  for (let changed = true; changed;) {
    changed = false;
    for (const p of prefixes) {
      if (p.length > 0 && k.startsWith(p) && k.length > p.length) {
        k = k.slice(p.length);
        changed = true;
      }
    }
  }
  if (segments.length > 0) {
    const parts = k.split(".");
    const kept = parts.filter((s, i) => i === parts.length - 1 || !segments.includes(s));
    k = kept.join(".");
  }
  return k;
}

/** Renames every key of `sd` with {@linkcode stripWrapperNames}; the result owns `sd`'s files. */
export function stripStateDict(sd: StateDict, options: StripOptions = {}): StateDict {
  const out = new StateDict();
  const from = new Map<string, string>();
  for (const [name, ref] of sd) {
    const k = stripWrapperNames(name, options);
    const prior = from.get(k);
    if (prior !== undefined) {
      throw new CkptError(
        "GATHER_DUPLICATE",
        `Cannot strip wrapper names: "${prior}" and "${name}" both become "${k}"`,
        { tensor: k, details: { keys: [prior, name] } },
      );
    }
    from.set(k, name);
    out.set(k, ref);
  }
  out.metadata = { ...sd.metadata };
  out.adopt(sd);
  return out;
}
