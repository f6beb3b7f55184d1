/**
 * One side of a `ckpt diff`: any weights input gatherShards reads (safetensors files and shard
 * folders, torch `.bin/.pt` files and shard folders, DCP folders), with wrapper names stripped
 * the same way, optionally with a LoRA adapter merged on the fly (the merged tensors are computed
 * row block by row block as the diff reads them, rounded once into the base's dtype, exactly as
 * `ckpt merge` writes them).
 *
 * @example A safetensors file, opened as the diff sees it
 * ```ts
 * import { openDiffInput } from "./open.ts";
 * import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
 * import { writeSafetensors } from "../../formats/safetensors.ts";
 * import assert from "node:assert/strict";
 *
 * const file = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(file, new StateDict([["module.w", tensorFromBytes("U8", [2], new Uint8Array(2))]]));
 * const side = await openDiffInput(file);
 * assert.deepEqual([...side.stateDict.keys()], ["w"]);
 * assert.equal(side.kind, "safetensors");
 * await side.stateDict.close();
 * await Deno.remove(file);
 * ```
 * @module
 */
import type { StateDict } from "../../formats/state_dict.ts";
import type { BackendChoice } from "../../merge/backend.ts";
import { mergeLora } from "../../merge/lora.ts";
import { gatherShards } from "../stages/gather_shards.ts";
import { tiesEmbeddings } from "../stages/merge_lora.ts";

/** Options of {@linkcode openDiffInput}. */
export interface DiffInputOptions {
  /** A PEFT adapter (folder or file) to merge into the weights as they are read. */
  adapter?: string | undefined;
  /** Backend of that merge: `"auto"` (default), `"webgpu"` or `"cpu"`. */
  backend?: BackendChoice | undefined;
  /** Input kind instead of detecting it. */
  kind?: string | undefined;
}

/** One opened side: the state dict (close it) and what it is. */
export interface DiffInput {
  /** The path given. */
  path: string;
  /** The input kind that read it. */
  kind: string;
  /** The adapter merged on the fly, if any. */
  adapter?: string;
  /** The merge backend, when an adapter is merged (`"cpu"` or `"webgpu"`). */
  backend?: string;
  /** The tensors, names stripped of wrappers (`readers/names.ts`). */
  stateDict: StateDict;
  /** The model's `config.json`, when one was found beside the weights. */
  modelConfig?: Record<string, unknown>;
  /** The input embedding `lm_head.weight` stands for, set by {@linkcode fillTiedHeads}. */
  tiedHead?: string;
}

/** Input-embedding names (writeModel's rule). */
const INPUT_EMBED = /(^|\.)(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings)\.weight$/;
const HEAD = "lm_head.weight";

/**
 * A tied model stores its output head once, as the input embedding (safetensors), or twice as one
 * storage (`pytorch_model.bin`): what transformers loads is the same model. When one side has
 * `lm_head.weight` and the other has none but ties its embeddings (`tie_word_embeddings`, or no
 * word on it: a causal LM without a head loads only tied), that other side's `lm_head.weight` is
 * its input embedding, named in {@linkcode DiffInput.tiedHead}.
 */
export function fillTiedHeads(a: DiffInput, b: DiffInput): void {
  for (const [side, other] of [[a, b], [b, a]] as const) {
    if (side.stateDict.has(HEAD) || !other.stateDict.has(HEAD)) continue;
    if (!tiesEmbeddings(side.modelConfig, side.stateDict)) continue;
    const input = [...side.stateDict.keys()].find((k) => INPUT_EMBED.test(k));
    if (input === undefined) continue;
    side.stateDict.set(HEAD, side.stateDict.require(input));
    side.tiedHead = input;
  }
}

/** Opens `path` for a diff (see the module doc); the coded errors of gatherShards and mergeLora. */
export async function openDiffInput(
  path: string,
  options: DiffInputOptions = {},
): Promise<DiffInput> {
  const gathered = await gatherShards(path, {
    ...(options.kind === undefined ? {} : { kind: options.kind }),
  });
  const described = {
    path,
    kind: gathered.kind,
    ...(gathered.modelConfig === undefined ? {} : { modelConfig: gathered.modelConfig }),
  };
  if (options.adapter === undefined) return { ...described, stateDict: gathered.stateDict };
  try {
    const { stateDict, report } = await mergeLora(gathered.stateDict, [options.adapter], {
      backend: options.backend ?? "auto",
      tieWordEmbeddings: tiesEmbeddings(gathered.modelConfig, gathered.stateDict),
    });
    return {
      ...described,
      adapter: options.adapter,
      backend: report.backend?.kind ?? "none",
      stateDict,
    };
  } catch (err) {
    await gathered.stateDict.close();
    throw err;
  }
}
