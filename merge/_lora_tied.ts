/**
 * Tied embeddings under an adapter: what the trained, unmerged PeftModel computes, exported.
 *
 * In a tied model `lm_head.weight` and the input embedding (`embed_tokens.weight`) are one
 * parameter `E`. PEFT wraps the module an adapter targets and leaves the shared parameter alone:
 *
 * - a LoRA on `embed_tokens` looks tokens up in `E + ΔW`, while `lm_head` still multiplies by
 *   `E`: the trained model has input `E + ΔW`, output `E`;
 * - a LoRA on `lm_head` computes logits with `E + ΔW`, while the lookup still reads `E`: input
 *   `E`, output `E + ΔW`;
 * - a `modules_to_save` copy of one of them is a separate parameter: that side is the copy, the
 *   other side `E`;
 * - trainable tokens on `embed_tokens` are shared with a tied `lm_head` (PEFT's tied token
 *   adapter), and `ensure_weight_tying` ties an `lm_head` LoRA or copy to the embedding's: both
 *   sides change alike and stay tied.
 *
 * Merging into the one shared tensor (what `merge_and_unload()` does) changes both sides, which is
 * not the trained model. So when exactly one side changes (or both, differently), the pair is
 * untied: each side gets its own tensor (`lm_head.weight` is added from the original `E` when the
 * checkpoint stores the pair once), reported in `MergeReport.tiedEmbeddings`; with
 * `tiedEmbeddings: "refuse"` the merge fails with `LORA_TIED_EMBEDDINGS` instead. The writer then
 * sees two different tensors and writes both with `tie_word_embeddings: false`. Private to
 * `merge/lora_plan.ts`.
 * @module
 */
import { CkptError } from "../errors.ts";
import type { StateDict, TensorRef } from "../formats/state_dict.ts";
import { TorchTensor } from "../formats/torch/tensor.ts";
import type { Job, Planner, WeightedAdapter } from "./_lora_job.ts";
import type { MergeLoraOptions, TiedEmbeddingChange, TiedEmbeddingsReport } from "./lora_types.ts";

/** Input-embedding names (as writeModel's rule) and the tied output key transformers uses. */
const INPUT_EMBED = /(^|\.)(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings)\.weight$/;
const OUTPUT = "lm_head.weight";

/** The tied pair of a base state dict. */
export interface TiedPair {
  /** Input-embedding key. */
  input: string;
  /** Output key (`lm_head.weight`). */
  output: string;
  /** True when the checkpoint stores the pair once (no `lm_head.weight`). */
  implicit: boolean;
}

/** True when two refs are one tensor: the same ref, or the same view of one torch storage. */
function oneTensor(a: TensorRef, b: TensorRef): boolean {
  if (a === b) return true;
  return a instanceof TorchTensor && b instanceof TorchTensor && a.storage === b.storage &&
    a.storageOffset === b.storageOffset && a.shape.join() === b.shape.join() &&
    a.stride.join() === b.stride.join();
}

/**
 * The tied pair of `base`: with `tieWordEmbeddings`, its input embedding and `lm_head.weight`
 * (absent, or of the same shape); without, only an `lm_head.weight` that is the same tensor as
 * the input embedding (a torch file that saved one storage under both keys).
 */
export function findTiedPair(base: StateDict, options: MergeLoraOptions): TiedPair | undefined {
  const input = [...base.keys()].find((k) => INPUT_EMBED.test(k));
  if (input === undefined) return undefined;
  const inRef = base.require(input);
  const out = base.get(OUTPUT);
  if (!out) {
    return options.tieWordEmbeddings ? { input, output: OUTPUT, implicit: true } : undefined;
  }
  const sameShape = out.shape.join() === inRef.shape.join();
  if (oneTensor(inRef, out) || (options.tieWordEmbeddings && sameShape)) {
    return { input, output: OUTPUT, implicit: false };
  }
  return undefined;
}

/** How an adapter changes one side of the pair (trainable tokens are shared, so not counted). */
type Change = TiedEmbeddingChange;

function changeOf(job: Job | undefined, replacedBy: ReadonlyMap<string, string>): Change {
  if (!job) return "none";
  const key = replacedBy.get(job.name);
  // PEFT saves a targeted embedding's own weight as `.base_layer.weight`: not a change
  const copy = key !== undefined && !/\.base_layer\./.test(key);
  if (job.terms.length > 0) return copy ? "lora+copy" : "lora";
  return copy ? "copy" : "none";
}

function describe(side: string, change: Change): string {
  return change === "none"
    ? `${side} unchanged`
    : `${side} ${
      change === "lora" ? "merged" : change === "copy" ? "replaced" : "replaced and merged"
    }`;
}

/**
 * Decides the tied pair after planning: unties it (adding `lm_head.weight` from the original
 * embedding when the checkpoint has none) when the adapters change the two sides differently,
 * reporting it; `LORA_TIED_EMBEDDINGS` instead with `tiedEmbeddings: "refuse"`. Then applies the
 * input embedding's trainable-token rows to an untouched separate `lm_head.weight` (PEFT's tied
 * token adapter).
 */
export function settleTiedPair(
  planner: Planner,
  pair: TiedPair,
  loaded: readonly WeightedAdapter[],
  replacedBy: ReadonlyMap<string, string>,
): void {
  const { input, output } = pair;
  const inJob = planner.jobs.get(input);
  const outJob = planner.jobs.get(output);
  const inChange = changeOf(inJob, replacedBy);
  const outChange = changeOf(outJob, replacedBy);
  const ensureTying = loaded.some((l) => l.adapter.config.ensure_weight_tying === true);
  const tied = inChange === outChange && (inChange !== "lora" || ensureTying);
  if (!tied) {
    const report: TiedEmbeddingsReport = {
      input,
      output,
      inputChange: inChange,
      outputChange: outChange,
      message: `${input} and ${output} are tied and the adapter leaves them different (${
        describe("input", inChange)
      }, ${
        describe("output", outChange)
      }): both are written, each as the trained model computes it, with tie_word_embeddings false`,
    };
    if (planner.options.tiedEmbeddings === "refuse") {
      throw new CkptError(
        "LORA_TIED_EMBEDDINGS",
        `Cannot merge into the tied embeddings ${input} / ${output}: the adapter changes them differently (${
          describe("input", inChange)
        }, ${
          describe("output", outChange)
        }), so the trained model needs them untied (tiedEmbeddings: "refuse" was asked)`,
        { tensor: inChange === "none" ? output : input, details: { ...report } },
      );
    }
    planner.report.tiedEmbeddings = report;
    if (pair.implicit) planner.jobFor(output); // the original embedding, as lm_head.weight
  }
  if (!inJob?.tokens) return;
  // a separate lm_head.weight (in the checkpoint, or just added) gets the rows too
  const head = pair.implicit ? planner.jobs.get(output) : planner.jobFor(output);
  if (head && !head.tokens && !changeOf(head, replacedBy).includes("copy")) {
    const { key, indices, values } = inJob.tokens;
    head.tokens = { key, indices: [...indices], values };
    head.modified = true;
    planner.report.trainableTokens.push({ tensor: output, rows: indices.length });
  }
}
