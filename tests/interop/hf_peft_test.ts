/**
 * Real PEFT 0.21 adapters merged by ckpt, checked with torch 2.13 and transformers 5.17 (the `hf`
 * peer; Python side in `hf/peft_kinds.py`). Small Llama, Mistral and Qwen2 models built from configs
 * (float32, untied embeddings) get an adapter of every kind PEFT saves: all-linear LoRA, rsLoRA with
 * rank and alpha patterns, DoRA, an embedding LoRA with `modules_to_save`, `bias="lora_only"` and
 * `lora_bias`. For each, `ckpt merge`'s output has the tensor names and shapes PEFT's
 * `merge_and_unload()` + `save_pretrained` writes, values within the float64 bound (per element,
 * how far a float32 merge may be from the merge done in float64), and every format ckpt writes
 * (safetensors, sharded safetensors, `.bin`, sharded `.bin`, bf16) loads with
 * `AutoModelForCausalLM.from_pretrained` with no missing/unexpected-key report and logits within
 * the spread of PEFT's own bf16 and f32 merges. Fails (never skips) when the peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { mergeConfig } from "../../cli/merge.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { runHfPython } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const PEER = "tests/interop/hf/peft_kinds.py";

/** Extra output formats, written for two of the cases (one plain LoRA, one DoRA). */
const FORMATS: Record<string, { format?: string; maxShardSize?: string; dtype?: string }> = {
  sharded: { maxShardSize: "100KB" },
  bin: { format: "bin" },
  bin_sharded: { format: "bin", maxShardSize: "100KB" },
  bf16: { dtype: "bfloat16" },
};

interface FormatResult {
  names_equal?: boolean;
  shapes_equal?: boolean;
  ratio?: number | null;
  loading_info: Record<string, string[]>;
  key_warnings: string[];
  logits_diff: number;
}

Deno.test("real PEFT adapters of every kind: ckpt merge equals merge_and_unload(), transformers loads every format", async () => {
  await withTempDir(async (dir) => {
    const cases = await runHfPython<string[]>(PEER, ["make", dir]);
    assert.equal(cases.length, 6);
    const outputs: Record<string, Record<string, string>> = {};
    for (const c of cases) {
      const base = join(dir, c, "base"), adapter = join(dir, c, "adapter");
      const o: Record<string, string> = { safetensors: join(dir, c, "ckpt") };
      await runPipeline(await mergeConfig({ base, adapter, out: o.safetensors! }));
      if (c === "llama_all_linear" || c === "qwen2_dora") {
        for (const [name, flags] of Object.entries(FORMATS)) {
          o[name] = join(dir, c, `ckpt_${name}`);
          await runPipeline(await mergeConfig({ base, adapter, out: o[name]!, ...flags }));
        }
      }
      outputs[c] = o;
    }
    const res = await runHfPython<
      Record<string, { spread: number; peft_ratio: number; formats: Record<string, FormatResult> }>
    >(PEER, ["check", dir, JSON.stringify(outputs)]);
    // CKPT_DEBUG_PEFT=1 prints the measured ratios, spreads and logit differences.
    if (Deno.env.get("CKPT_DEBUG_PEFT")) console.log(JSON.stringify(res, null, 1));
    for (const c of cases) {
      const r = res[c]!;
      const st = r.formats.safetensors!;
      assert.equal(st.names_equal, true, `${c}: tensor names as PEFT's merged save_pretrained`);
      assert.equal(st.shapes_equal, true, `${c}: shapes and dtypes`);
      assert.ok(
        st.ratio !== null && st.ratio! <= 1,
        `${c}: within the float64 bound (${st.ratio})`,
      );
      assert.ok(r.spread > 0, `${c}: PEFT's bf16 and f32 merges differ`);
      for (const [fmt, f] of Object.entries(r.formats)) {
        assert.deepEqual(f.loading_info, {}, `${c} ${fmt}: loading info`);
        assert.deepEqual(f.key_warnings, [], `${c} ${fmt}: key warnings`);
        assert.ok(
          f.logits_diff <= r.spread,
          `${c} ${fmt}: logits differ from PEFT's f32 merge by ${f.logits_diff}, PEFT's own bf16/f32 spread is ${r.spread}`,
        );
      }
    }
  });
});
