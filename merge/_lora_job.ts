/**
 * The plan of a LoRA merge as data, shared by planning (`merge/lora_plan.ts`) and reading
 * (`merge/lora_run.ts`): one {@linkcode Job} per output tensor that an adapter touches. Private to
 * `mergeLora`.
 * @module
 */
import type { DType } from "../formats/dtype.ts";
import type { AdapterKey, LoadedAdapter } from "../formats/peft.ts";
import type { ModuleScaling } from "../formats/peft_config.ts";
import type { StateDict, TensorRef } from "../formats/state_dict.ts";
import type { DoraMode } from "./dora.ts";
import type { LoraLayout } from "./layouts.ts";
import type { MergeLoraOptions, MergeReport } from "./lora_types.ts";

/** One adapter's LoRA pair applied to a job's weight. */
export interface Term {
  /** Adapter name. */
  adapter: string;
  /** Layout decided from the shapes. */
  layout: LoraLayout;
  /** Adapter weight. */
  weight: number;
  /** Rank, alpha and scale of the module. */
  scaling: ModuleScaling;
  /** Key of the A factor. */
  aKey: string;
  /** Key of the B factor. */
  bKey: string;
  /** The A factor. */
  a: TensorRef;
  /** The B factor. */
  b: TensorRef;
}

/** What to do to one output tensor. */
export interface Job {
  /** Output tensor name. */
  name: string;
  /** The base tensor, or the adapter's replacement of it. */
  source: TensorRef;
  /** Output dtype. */
  outDtype: DType;
  /** Layout of the LoRA terms (all terms agree on rows and columns). */
  layout?: LoraLayout;
  /** LoRA pairs, in adapter order. */
  terms: Term[];
  /** DoRA magnitude (one adapter only). */
  magnitude?: { key: string; ref: TensorRef; mode: DoraMode };
  /** `lora_B.bias` terms added to a bias, `factor` = scale × adapter weight. */
  biasTerms: { key: string; ref: TensorRef; factor: number }[];
  /** Trainable-token rows written over the result. */
  tokens?: { key: string; indices: number[]; values: TensorRef };
  /** False when the source is passed through untouched. */
  modified: boolean;
}

/** One adapter tensor with its classified key. */
export type Part = AdapterKey & { ref: TensorRef };

/** The LoRA tensors one adapter holds for one module. */
export interface Parts {
  /** Adapter name. */
  adapter: string;
  /** Adapter weight. */
  weight: number;
  /** `lora_A` or `lora_embedding_A`. */
  a?: Part;
  /** `lora_B` or `lora_embedding_B`. */
  b?: Part;
  /** `lora_B.bias`. */
  bias?: Part;
  /** DoRA magnitude. */
  mag?: Part;
  /** Trainable-token rows. */
  tokens?: Part;
  /** True for embedding factors (`lora_embedding_A/B`). */
  embedding: boolean;
}

/** An adapter with its weight, as `mergeLora` applies it. */
export interface WeightedAdapter {
  /** The adapter. */
  adapter: LoadedAdapter;
  /** Its weight. */
  weight: number;
}

/** The plan: output tensor order and the jobs by tensor name. */
export interface Plan {
  /** Every output tensor, in order (base order, added tensors last). */
  order: string[];
  /** Jobs of the tensors an adapter touches. */
  jobs: Map<string, Job>;
}

/** `[a, b, c]`, for messages. */
export function fmtShape(s: readonly number[]): string {
  return `[${s.join(", ")}]`;
}

/** What the planning steps share: the base, the options, the report and the jobs so far. */
export interface Planner {
  /** The base state dict (unwrapped). */
  base: StateDict;
  /** The merge options. */
  options: MergeLoraOptions;
  /** The report being filled. */
  report: MergeReport;
  /** Output order: the base keys, then added tensors. */
  order: string[];
  /** Jobs so far, by output tensor. */
  jobs: Map<string, Job>;
  /** Classifies an adapter key, with the rename rules applied to its module path. */
  classify(key: string): AdapterKey;
  /** The job of a base tensor (created on first use), or undefined when the base lacks it. */
  jobFor(name: string): Job | undefined;
  /** Records an adapter key that matches nothing (`allowUnmatched`), or throws `code`. */
  unmatched(key: string, what: string, code: "LORA_NO_BASE" | "LORA_UNMATCHED"): void;
}
