/**
 * The writeValueHead stage: `v_head.pt` as HALOs' PPO trainer writes it
 * (`torch.save(v_head.state_dict(), "v_head.pt")`: an OrderedDict of tensors), from a safetensors
 * or torch input, optionally also `v_head.safetensors`.
 *
 * `prefix` selects the value head inside a larger file (`"v_head."` takes `v_head.summary.weight`
 * and writes it as `summary.weight`). When the model config gives `hidden_size`, every 2-d weight
 * of the head must take that many inputs (`VALUE_HEAD_MISMATCH`), checked before writing.
 *
 * @example Selecting a head by prefix
 * ```ts
 * import { selectValueHead } from "./write_value_head.ts";
 * import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const sd = new StateDict([
 *   ["v_head.summary.weight", tensorFromBytes("F32", [1, 4], new Uint8Array(16))],
 *   ["lm_head.weight", tensorFromBytes("F32", [2, 4], new Uint8Array(32))],
 * ]);
 * assert.deepEqual([...selectValueHead(sd, "v_head.", 4).keys()], ["summary.weight"]);
 * ```
 * @module
 */
import { z } from "zod";
import { join } from "node:path";
import { CkptError } from "../../errors.ts";
import { StateDict } from "../../formats/state_dict.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { saveTorchStateDict } from "../../formats/torch/save.ts";
import { openInput } from "../../readers/kinds.ts";
import { defineStage, type Stage } from "../stage.ts";

/**
 * The value-head tensors of `sd`: those starting with `prefix` (removed), or all of them when
 * `prefix` is empty. Checks 2-d weights against `hiddenSize` when given. The result shares `sd`'s
 * refs (it does not own the files).
 */
export function selectValueHead(sd: StateDict, prefix: string, hiddenSize?: number): StateDict {
  const out = new StateDict();
  for (const [name, ref] of sd) {
    if (prefix !== "" && !name.startsWith(prefix)) continue;
    out.set(name.slice(prefix.length), ref);
  }
  if (out.size === 0) {
    throw new CkptError(
      "VALUE_HEAD_MISSING",
      `Cannot find a value head: no tensor${
        prefix ? ` starts with "${prefix}"` : "s in the input"
      }`,
      { details: { prefix } },
    );
  }
  if (hiddenSize !== undefined) {
    for (const [name, ref] of out) {
      if (name.endsWith("weight") && ref.shape.length === 2 && ref.shape[1] !== hiddenSize) {
        throw new CkptError(
          "VALUE_HEAD_MISMATCH",
          `Cannot use value head tensor "${name}" [${
            ref.shape.join(", ")
          }]: the model's hidden_size is ${hiddenSize}`,
          { tensor: name, details: { shape: [...ref.shape], hiddenSize } },
        );
      }
    }
  }
  return out;
}

/** The writeValueHead options schema (unknown keys rejected). */
const writeValueHeadOptions = z.strictObject({
  /** Value head weights: safetensors or torch file (relative to the config). */
  from: z.string().min(1),
  /** Only tensors starting with this prefix, which is removed (e.g. `"v_head."`). Default none. */
  prefix: z.string().default(""),
  /** Also write `v_head.safetensors`. Default false. */
  safetensors: z.boolean().default(false),
  /** Check 2-d weights against the model config's `hidden_size`. Default true. */
  check: z.boolean().default(true),
});

/** The writeValueHead stage (config name `writeValueHead`). */
export const writeValueHeadStage: Stage = defineStage({
  name: "writeValueHead",
  summary: "write v_head.pt (the PPO value head's state dict) and optionally v_head.safetensors",
  options: writeValueHeadOptions,
  split: "one-part",
  /**
   * Checks before any stage runs that the input exists, is a weights file a kind recognises, holds
   * tensors under `prefix`, and (with `check`) that its 2-d weights take the `hidden_size` of the
   * model config gatherShards' preflight found (`INPUT_MISSING`, `FS_PERMISSION`, `INPUT_KIND`,
   * `VALUE_HEAD_MISSING`, `VALUE_HEAD_MISMATCH`); only headers are read.
   */
  async preflight(ctx, options): Promise<void> {
    const { stateDict: input } = await openInput(ctx.resolve(options.from), {
      signal: ctx.signal,
    });
    try {
      const hidden = ctx.modelConfig?.hidden_size;
      selectValueHead(
        input,
        options.prefix,
        options.check && typeof hidden === "number" ? hidden : undefined,
      );
    } finally {
      await input.close();
    }
  },
  async run(ctx, options): Promise<void> {
    const from = ctx.resolve(options.from);
    ctx.addInput(from, "value-head");
    const { stateDict: input } = await openInput(from);
    try {
      const hidden = ctx.modelConfig?.hidden_size;
      const head = selectValueHead(
        input,
        options.prefix,
        options.check && typeof hidden === "number" ? hidden : undefined,
      );
      const bytes = head.totalBytes();
      if (ctx.dryRun) {
        const files = [{ path: "v_head.pt", bytes }];
        if (options.safetensors) files.push({ path: "v_head.safetensors", bytes });
        ctx.report("writeValueHead", { files, estimated: true, tensors: head.size });
        return;
      }
      const files: { path: string; bytes: number }[] = [];
      const pt = await saveTorchStateDict(join(ctx.outDir, "v_head.pt"), head, {
        signal: ctx.signal,
      });
      files.push({ path: "v_head.pt", bytes: pt.bytes });
      if (options.safetensors) {
        const st = await writeSafetensors(join(ctx.outDir, "v_head.safetensors"), head, {
          signal: ctx.signal,
        });
        files.push({ path: "v_head.safetensors", bytes: st.bytes });
      }
      ctx.report("writeValueHead", { files, tensors: head.size });
      ctx.emit({ type: "progress", stage: "writeValueHead", done: 1, total: 1, unit: "files" });
    } finally {
      await input.close();
    }
  },
});
