/**
 * Interop of `ckpt merge` with the current Hugging Face stack through the hf-peer (torch 2.13,
 * transformers 5.17, PEFT 0.21): a tiny Qwen2 built by transformers from a config (no download)
 * and LoRA adapters saved by PEFT, merged by ckpt and compared with PEFT's own
 * `merge_and_unload()`. The peer side is `tests/interop/hf/peft_merge.py`. Fails (never skips)
 * when the peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { runHfPython } from "../_helpers/hf_peer.ts";
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

Deno.test("PEFT 0.21: ckpt merge --dtype float32 of a bf16 base is as exact as PEFT's f32 merge_and_unload()", async () => {
  await withTempDir(async (dir) => {
    await runHfPython(PEER, ["make", dir]);
    const c = join(dir, "f32");
    const out = join(dir, "ours-f32");
    const r = await ckpt([
      "merge",
      ...["--base", join(c, "base"), "--adapter", join(c, "adapter"), "--out", out],
      ...["--dtype", "float32", "--backend", "cpu", "--log", "quiet"],
    ]);
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
  });
});
