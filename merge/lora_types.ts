/**
 * The public shapes of a LoRA merge: what {@linkcode AdapterInput}s and {@linkcode MergeLoraOptions}
 * `mergeLora` (`merge/lora.ts`) takes, and the {@linkcode MergeReport} it returns.
 * @module
 */
import type { DType } from "../formats/dtype.ts";
import type { LoadedAdapter, WrappedLoraOptions } from "../formats/peft.ts";
import type { StateDict } from "../formats/state_dict.ts";
import type { MergeBackend, MergeDType } from "../kernels/types.ts";
import type { BackendChoice, Calibration } from "./backend.ts";
import type { DoraMode } from "./dora.ts";
import type { LoraLayoutKind } from "./layouts.ts";

/** An adapter to merge: a folder/file path, a path with a weight, or an already loaded adapter. */
export type AdapterInput =
  | string
  | { path: string; weight?: number; name?: string }
  | (LoadedAdapter & { weight?: number });

/** Options of {@linkcode mergeLora}. Every field is optional. */
export interface MergeLoraOptions {
  /** Backend: `"auto"` (default), `"webgpu"`, `"cpu"`, or a backend instance (not disposed by us). */
  backend?: BackendChoice | MergeBackend;
  /** Refuse non-finite factors (checked before returning) and results (checked per block), like
   * PEFT's `safe_merge`: `LORA_NONFINITE` naming the tensor. Default false. */
  safe?: boolean;
  /** Adapter keys that match no base tensor are reported instead of refused (`LORA_NO_BASE`,
   * `LORA_UNMATCHED`); unmatched full tensors are then added as new tensors. Default false. */
  allowUnmatched?: boolean;
  /** Adapter modules with LoRA tensors that the adapter's own config would not adapt
   * (`target_modules`, `exclude_modules`, `modules_to_save`, `layers_to_transform`: PEFT would
   * create no layer for them and ignore their tensors): `"refuse"` (default, `LORA_UNTARGETED`
   * naming the modules) or `"skip"` (their tensors are left out, as PEFT leaves them, and listed
   * in `MergeReport.untargeted`). */
  untargeted?: "refuse" | "skip";
  /** Output dtype of the tensors this transform computes (merged weights, biases, token rows,
   * replacements). Default: each base tensor's own dtype. Untouched tensors keep theirs. A later
   * cast of a computed tensor (`castRef`, writeModel's `dtype`) replaces it: the merge then rounds
   * once, into the cast's dtype. */
  outDtype?: MergeDType;
  /** `base` is a PEFT-wrapped state dict (HALOs convention: `.base_layer.`, `.lora_A.default.`);
   * its LoRA part is merged with these hyper-parameters, before any `adapters`. */
  wrapped?: WrappedLoraOptions;
  /** Bytes of base weight per backend call. Default 8 MiB. */
  blockBytes?: number;
  /** Backend calls in flight per read (overlap of upload, compute, read-back). Default 3. */
  concurrency?: number;
  /** After a merged tensor's rows `[s, e)` are read, compute `[e, 2e − s)` ahead (writers read in
   * order), so that the backend works while the writer writes. Default true. */
  prefetch?: boolean;
  /** Rename rules `[regex, replacement]` applied in order to the module paths adapter keys name
   * (after `base_model.model.` is stripped), for adapters saved under other names than the base
   * checkpoint uses (e.g. transformers' `model.language_model.` vs `model.`). Default none. */
  renames?: [pattern: string, replacement: string][];
  /** The model ties `lm_head.weight` to the input embedding (`tie_word_embeddings`). An adapter
   * that changes the two differently (a LoRA or `modules_to_save` copy on one of them) unties
   * them, as the trained PeftModel computes: the changed side merged, the other the original
   * weight (added as `lm_head.weight` when the checkpoint stores the pair once); see
   * `tiedEmbeddings`. Trainable-token rows of the embedding apply to a separate `lm_head.weight`
   * too (PEFT's tied token adapter). An `lm_head` that is the same torch tensor as the embedding
   * counts as tied without this. Default false. */
  tieWordEmbeddings?: boolean;
  /** What to do when tied embeddings must be untied to export what was trained: `"untie"`
   * (default; reported in `MergeReport.tiedEmbeddings`) or `"refuse"` (`LORA_TIED_EMBEDDINGS`). */
  tiedEmbeddings?: "untie" | "refuse";
  /** Options passed to `createMergeBackend` when `backend` is a choice. */
  backendOptions?: Record<string, unknown>;
}

/** One adapter's contribution to one module, in the report. */
export interface ModuleAdapterReport {
  /** Adapter name. */
  name: string;
  /** Rank (from the tensors, equal to the config's). */
  r: number;
  /** Alpha used. */
  alpha: number;
  /** PEFT scaling `alpha/r` (or `alpha/√r`). */
  scale: number;
  /** Adapter weight (default 1). */
  weight: number;
  /** rank_pattern key used, if any. */
  rankPattern?: string;
  /** alpha_pattern key used, if any. */
  alphaPattern?: string;
}

/** One merged module in the report. */
export interface ModuleReport {
  /** Module path `M`. */
  module: string;
  /** Output tensor (`M.weight`). */
  tensor: string;
  /** Layout decided from the shapes. */
  layout: LoraLayoutKind;
  /** Weight shape. */
  shape: number[];
  /** Output dtype. */
  dtype: DType;
  /** DoRA norm mode, or false. */
  dora: DoraMode | false;
  /** Adapters applied, in order. */
  adapters: ModuleAdapterReport[];
}

/**
 * How much a merge changed one weight: W is the base weight as stored, W' the merged value as
 * rounded into the output dtype (what a writer writes and `ckpt diff base merged` compares).
 * Trainable-token rows written over a merged embedding are not counted.
 */
export interface ModuleChange {
  /** Module path `M`. */
  module: string;
  /** Output tensor (`M.weight`). */
  tensor: string;
  /** The dtype W' was rounded into. */
  dtype: DType;
  /** ‖W‖ (Frobenius, float64). */
  normW: number;
  /** ‖W' − W‖. */
  normDelta: number;
  /** ‖W' − W‖ / ‖W‖ (Infinity when W is all zeros and W' is not). */
  relNorm: number;
  /** max |W' − W|. */
  maxAbs: number;
}

/** What {@linkcode mergeLora} did (planned; the arithmetic runs when tensors are read). */
export interface MergeReport {
  /** The backend that runs the merge (absent when nothing needs one). */
  backend?: {
    kind: "webgpu" | "cpu";
    description: string;
    reason: string;
    /** M weights/s of each backend and the WebGPU adapter measured, when `auto` calibrated. */
    calibration?: Calibration;
  };
  /** The adapters, in order. */
  adapters: { name: string; path?: string; weight: number; tensors: number; useDora: boolean }[];
  /** Merged modules with the scaling used. */
  modules: ModuleReport[];
  /**
   * How much each merged module changed, in `modules` order: filled while the merged tensors are
   * read (by the writer; no second pass), one entry per tensor once all its rows were read in one
   * output dtype (a later complete read in another dtype replaces it). Empty until then.
   */
  changes: ModuleChange[];
  /** Base tensors replaced by adapter copies (modules_to_save, saved biases/embeddings). */
  replaced: string[];
  /** Biases that received `lora_B.bias`. */
  biases: string[];
  /** Tensors whose rows were replaced by trainable tokens. */
  trainableTokens: { tensor: string; rows: number }[];
  /** Adapter keys that matched nothing (only non-empty with `allowUnmatched`). */
  unmatchedKeys: string[];
  /** Tensors added because the base lacked them (with `allowUnmatched`). */
  added: string[];
  /** `target_modules` entries that matched no module with LoRA tensors. */
  unusedTargetModules: { adapter: string; target: string }[];
  /** Base modules matched by `target_modules` that received no LoRA tensors. */
  targetModulesWithoutTensors: { adapter: string; module: string }[];
  /** Keys of a wrapped state dict dropped because they belong to another adapter name. */
  otherAdapterKeys: string[];
  /** Modules whose LoRA tensors were left out because the config would not adapt them
   * (`untargeted: "skip"`), with the config field that rules each out. */
  untargeted: { adapter: string; module: string; reason: string }[];
  /** Things the merge did as PEFT does that a user may not expect (a negative `lora_alpha`
   * subtracts the update). */
  warnings: string[];
  /** Tied embeddings this merge unties (absent when none are, or they stay tied). */
  tiedEmbeddings?: TiedEmbeddingsReport;
}

/** How the adapters change one side of a tied embedding pair. */
export type TiedEmbeddingChange = "none" | "lora" | "copy" | "lora+copy";

/** Tied embeddings a merge unties to export what was trained (`MergeReport.tiedEmbeddings`). */
export interface TiedEmbeddingsReport {
  /** The input embedding (`model.embed_tokens.weight`). */
  input: string;
  /** The output embedding (`lm_head.weight`). */
  output: string;
  /** What the adapters do to the input embedding (`copy`: a `modules_to_save` copy). */
  inputChange: TiedEmbeddingChange;
  /** What the adapters do to the output embedding. */
  outputChange: TiedEmbeddingChange;
  /** The warning, in words. */
  message: string;
}

/** Result of {@linkcode mergeLora}. */
export interface MergeLoraResult {
  /** The merged lazy state dict; it owns the base's, the adapters' and the backend's resources. */
  stateDict: StateDict;
  /** What was (is being) merged. */
  report: MergeReport;
}
