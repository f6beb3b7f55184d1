/**
 * Interop of `ckpt merge` with the current Hugging Face stack through the hf-peer (torch 2.13,
 * transformers 5.17, PEFT 0.21): a tiny Qwen2 built by transformers from a config (no download)
 * and LoRA adapters saved by PEFT, merged by ckpt and compared with PEFT's own
 * `merge_and_unload()`. The peer side is `tests/interop/hf/peft_merge.py`. Fails (never skips)
 * when the peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { runHfPython } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt } from "../cli/_cli.ts";

const PEER = "tests/interop/hf/peft_merge.py";

interface F32Check {
  tensors: number;
  dtypes: string[];
  ours: number;
  ours_embedding: number;
  peft_f32: number;
  peft_f32_embedding: number;
  peft_bf16: number;
  peft_bf16_embedding: number;
  ours_vs_peft_f32: number;
  others_exact: boolean;
}

interface TiedCheck {
  positions: number;
  trained_max_logit: number;
  min_margin: number;
  peft_spread: number;
  peft_f32: number;
  peft_bf16: number;
  peft_tied: number;
  peft_tied_agree: number;
  ours_bf16: number;
  ours_bf16_agree: number;
  ours_bf16_load_clean: boolean;
  ours_bf16_untied: boolean;
  ours_f32: number;
  ours_f32_agree: number;
  ours_f32_load_clean: boolean;
  ours_f32_untied: boolean;
}

/** `ckpt merge` as a user runs it; resolves to the CLI result. */
function merge(base: string, adapter: string, out: string, ...more: string[]) {
  return ckpt([
    "merge",
    ...["--base", base, "--adapter", adapter, "--out", out],
    ...["--backend", "cpu", "--log", "quiet", ...more],
  ]);
}

Deno.test("PEFT 0.21 adapters on a tiny Qwen2, merged by ckpt, against PEFT and transformers", async (t) => {
  await withTempDir(async (dir) => {
    await runHfPython(PEER, ["make", dir]);

    await t.step(
      "ckpt merge --dtype float32 of a bf16 base is as exact as PEFT's f32 merge_and_unload()",
      async () => {
        const c = join(dir, "f32");
        const out = join(dir, "ours-f32");
        const r = await merge(join(c, "base"), join(c, "adapter"), out, "--dtype", "float32");
        assert.equal(r.code, 0, r.stderr);
        const res = await runHfPython<F32Check>(PEER, ["check-f32", dir, out]);
        console.log(
          `max |merged − float64 merge|: ckpt f32 ${res.ours.toExponential(2)} (embedding ${
            res.ours_embedding.toExponential(2)
          }), PEFT f32 ${res.peft_f32.toExponential(2)} (embedding ${
            res.peft_f32_embedding.toExponential(2)
          }), PEFT bf16 ${res.peft_bf16.toExponential(2)}; ckpt vs PEFT f32 ${
            res.ours_vs_peft_f32.toExponential(2)
          }`,
        );
        assert.equal(res.tensors, 15); // 7 linear layers × 2 + the embedding
        assert.deepEqual(res.dtypes, ["torch.float32"]);
        assert.ok(res.others_exact, "unmerged tensors are the base's values");
        // at PEFT's own f32 level (a few f32 ulps of the merged values), far below a bf16 rounding
        assert.ok(res.ours <= 2 * res.peft_f32 + 1e-9, `${res.ours} vs PEFT ${res.peft_f32}`);
        assert.ok(res.ours_embedding <= 2 * res.peft_f32_embedding + 1e-9);
        assert.ok(res.ours * 1000 < res.peft_bf16, `${res.ours} vs a bf16 merge ${res.peft_bf16}`);
      },
    );

    await t.step(
      "a tied Qwen2 with a LoRA on embed_tokens or lm_head exports what the unmerged PeftModel computes",
      async () => {
        const c = join(dir, "tied");
        for (const name of ["emb", "head"]) {
          const adapter = join(c, name);
          const refused = await merge(
            join(c, "base"),
            adapter,
            join(dir, `refused-${name}`),
            "--tied-embeddings",
            "refuse",
          );
          assert.equal(refused.code, 1);
          assert.match(refused.stderr, /LORA_TIED_EMBEDDINGS/);
          for (const [dt, flags] of [["bf16", []], ["f32", ["--dtype", "float32"]]] as const) {
            const r = await merge(
              join(c, "base"),
              adapter,
              join(dir, `ours-${name}-${dt}`),
              ...flags,
            );
            assert.equal(r.code, 0, r.stderr);
          }
        }
        const res = await runHfPython<Record<"emb" | "head", TiedCheck>>(PEER, ["check-tied", dir]);
        for (const [name, r] of Object.entries(res)) {
          console.log(
            `${name}: max |logits − unmerged PeftModel| (max logit ${
              r.trained_max_logit.toFixed(2)
            }): ckpt bf16 ${r.ours_bf16.toExponential(2)}, ckpt f32 ${
              r.ours_f32.toExponential(2)
            }; PEFT bf16/f32 spread ${r.peft_spread.toExponential(2)} (f32 ${
              r.peft_f32.toExponential(2)
            }, bf16 ${r.peft_bf16.toExponential(2)}); PEFT on the tied model ${
              r.peft_tied.toExponential(2)
            }; greedy next tokens agreeing: ckpt bf16 ${r.ours_bf16_agree}/${r.positions}, f32 ${r.ours_f32_agree}/${r.positions}, PEFT tied ${r.peft_tied_agree}/${r.positions} (smallest top-2 margin ${
              r.min_margin.toExponential(2)
            })`,
          );
          for (const dt of ["bf16", "f32"] as const) {
            assert.ok(r[`ours_${dt}_load_clean`], `${name} ${dt}: no missing/unexpected keys`);
            assert.ok(r[`ours_${dt}_untied`], `${name} ${dt}: loaded untied`);
            assert.equal(r[`ours_${dt}_agree`], r.positions, `${name} ${dt} greedy tokens`);
          }
          // within PEFT's own bf16/f32 spread around the trained model: |bf16 − f32| + |f32 − trained|
          const band = r.peft_spread + r.peft_f32;
          assert.ok(r.ours_bf16 <= band, `${name}: ${r.ours_bf16} vs PEFT's spread ${band}`);
          assert.ok(r.ours_f32 <= 2 * r.peft_f32 + 1e-5, `${name}: ${r.ours_f32} vs ${r.peft_f32}`);
        }
      },
    );
  });
});
