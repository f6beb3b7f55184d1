/**
 * Private: state-dict names for the tensors of a DCP model checkpoint (`planner_data` paths below a
 * root, wrapper segments removed). Public API in `dcp.ts`.
 * @module
 */
import { CkptError } from "../errors.ts";
import type { DcpMetadata, DcpPathItem, DcpTensorEntry } from "./_dcp_types.ts";

/** Wrapper module names that FSDP, activation checkpointing, torch.compile and DDP insert. */
export const DCP_WRAPPER_SEGMENTS: readonly string[] = [
  "_fsdp_wrapped_module",
  "_checkpoint_wrapped_module",
  "_orig_mod",
];

/** Options of {@linkcode dcpTensorNames} and {@linkcode openDcpStateDict}. */
export interface DcpNameOptions {
  /**
   * First path item to select (`"model"` for accelerate's `{"model": state_dict}`). Default: when
   * every tensor path has at least two items and they share the first, that one is dropped; when the
   * checkpoint holds several top-level entries and one is `"model"`, that one is taken.
   * `null` keeps full paths.
   */
  root?: string | null;
  /**
   * Dot-separated segments removed wherever they occur (FSDP/compile wrappers). Default
   * {@linkcode DCP_WRAPPER_SEGMENTS}. A leading `module.` (DDP) is removed too unless
   * `stripModulePrefix` is false. PEFT names (`base_layer`, `lora_A.default`, `base_model.model.`)
   * are kept so mergeLora can fold them.
   */
  stripSegments?: readonly string[];
  /** Remove a leading `module.` (DDP). Default true. */
  stripModulePrefix?: boolean;
}

/** Removes wrapper segments from a dotted name (`a._fsdp_wrapped_module.b` -> `a.b`). */
export function stripWrapperSegments(
  name: string,
  segments: readonly string[] = DCP_WRAPPER_SEGMENTS,
  stripModulePrefix = true,
): string {
  const parts = name.split(".").filter((p) => !segments.includes(p));
  if (stripModulePrefix && parts.length > 1 && parts[0] === "module") parts.shift();
  return parts.join(".");
}

/** The root path item chosen by {@linkcode DcpNameOptions.root}'s default rule, or null. */
export function defaultDcpRoot(paths: readonly (readonly DcpPathItem[])[]): string | null {
  if (paths.length === 0) return null;
  const firsts = new Set(paths.map((p) => p[0]));
  if (firsts.size === 1 && paths.every((p) => p.length >= 2)) {
    const only = paths[0]![0];
    return typeof only === "string" ? only : null;
  }
  if (
    firsts.size > 1 && firsts.has("model") && paths.some((p) => p[0] === "model" && p.length >= 2)
  ) {
    return "model";
  }
  return null;
}

/**
 * Maps the tensor entries of a model checkpoint to state-dict names: `planner_data` path (never
 * the flat key, since FQNs contain dots) below the root, joined with dots, wrapper segments removed.
 * Optimizer-shaped entries (`('state', fqn, key)`, `('param_groups', i, key)`) saved beside the
 * weights are left out (unless they are all there is).
 * `DCP_NAME_CLASH` when two tensors end up with one name.
 */
export function dcpTensorNames(
  metadata: DcpMetadata,
  options: DcpNameOptions = {},
): [string, DcpTensorEntry][] {
  const all = metadata.entries.filter((e): e is DcpTensorEntry => e.kind === "tensor");
  // Optimizer state saved beside the model at the top level (torchtitan-style flattening:
  // ('state', fqn, 'exp_avg'), ('param_groups', 0, ...)) is not model weights.
  const optimizerShaped = (t: DcpTensorEntry) =>
    t.path.length >= 3 && (t.path[0] === "state" || t.path[0] === "param_groups");
  const weights = all.filter((t) => !optimizerShaped(t));
  const tensors = weights.length > 0 ? weights : all;
  const root = options.root === undefined
    ? defaultDcpRoot(tensors.map((t) => t.path))
    : options.root;
  const out: [string, DcpTensorEntry][] = [];
  const seen = new Map<string, string>();
  for (const t of tensors) {
    let path = t.path;
    if (root !== null) {
      if (path[0] !== root || path.length < 2) continue;
      path = path.slice(1);
    }
    const name = stripWrapperSegments(
      path.map(String).join("."),
      options.stripSegments ?? DCP_WRAPPER_SEGMENTS,
      options.stripModulePrefix ?? true,
    );
    const prev = seen.get(name);
    if (prev !== undefined) {
      throw new CkptError(
        "DCP_NAME_CLASH",
        `Cannot name tensors of the DCP checkpoint: "${prev}" and "${t.key}" both map to "${name}"`,
        { tensor: t.key },
      );
    }
    seen.set(name, t.key);
    out.push([name, t]);
  }
  return out;
}
