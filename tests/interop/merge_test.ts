/**
 * Interop of the LoRA merge with real torch 2.6 through the peer: torch writes a base model and a
 * PEFT adapter (rsLoRA, rank/alpha patterns, lora_bias, modules_to_save, saved biases), ckpt merges
 * them and writes safetensors, and torch loads our file and compares it with its own PEFT-equivalent
 * merge. Also checks that the committed fixtures are exactly what their generator writes.
 * Fails (never skips) when the peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { openSafetensors, writeSafetensors } from "../../formats/safetensors.ts";
import { mergeLora } from "../../merge/lora.ts";
import { REPO_ROOT, runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { LORA_FIXTURES } from "../merge/_lora_fixtures.ts";
import { compareSafetensors } from "./_merge_peer.ts";

const MAKE = String.raw`
import json, math, os, re, sys, torch
from safetensors.torch import save_file
out = sys.argv[1]
g = torch.Generator().manual_seed(1234)
rnd = lambda *s, sc=1.0: torch.randn(*s, generator=g) * sc
D, H, V = 257, 300, 123
base = {
  "model.embed_tokens.weight": rnd(V, D, sc=0.5).bfloat16(),
  "model.layers.0.self_attn.q_proj.weight": rnd(D, D, sc=0.2).bfloat16(),
  "model.layers.0.self_attn.q_proj.bias": rnd(D, sc=0.1).bfloat16(),
  "model.layers.0.self_attn.v_proj.weight": rnd(D, D, sc=0.2).bfloat16(),
  "model.layers.0.self_attn.v_proj.bias": rnd(D, sc=0.1).bfloat16(),
  "model.layers.0.mlp.up_proj.weight": rnd(H, D, sc=0.2).bfloat16(),
  "model.layers.0.mlp.down_proj.weight": rnd(D, H, sc=0.2).bfloat16(),
  "model.norm.weight": (1 + rnd(D, sc=0.1)).bfloat16(),
  "lm_head.weight": rnd(V, D, sc=0.2).bfloat16(),
}
cfg = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "use_rslora": True, "lora_bias": True,
       "bias": "all", "modules_to_save": ["lm_head"],
       "rank_pattern": {"mlp.up_proj": 8}, "alpha_pattern": {"down_proj": 7},
       "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]}
def pick(p, m, d):
  for k in p:
    if re.match(rf"(.*\.)?({k})$", m): return p[k]
  return p.get(m, d)
ad, exp = {}, {}
P = "base_model.model."
for m in ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj"]:
  M = "model.layers.0." + m
  W = base[M + ".weight"]
  r = pick(cfg["rank_pattern"], M, cfg["r"]); a = pick(cfg["alpha_pattern"], M, cfg["lora_alpha"])
  s = a / math.sqrt(r)
  A = rnd(r, W.shape[1], sc=0.05); B = rnd(W.shape[0], r, sc=0.05)
  ad[P + M + ".lora_A.weight"] = A; ad[P + M + ".lora_B.weight"] = B
  exp[M + ".weight"] = (W.float() + (B @ A) * s).bfloat16()
  if m == "self_attn.q_proj":
    lb = rnd(W.shape[0], sc=0.1)
    ad[P + M + ".lora_B.bias"] = lb
    exp[M + ".bias"] = (base[M + ".bias"].float() + lb * s).bfloat16()
vb = rnd(D, sc=0.1).bfloat16()
ad[P + "model.layers.0.self_attn.v_proj.base_layer.bias"] = vb
exp["model.layers.0.self_attn.v_proj.bias"] = vb
lm = rnd(V, D, sc=0.2)
ad[P + "lm_head.weight"] = lm
exp["lm_head.weight"] = lm.bfloat16()
for k, v in base.items():
  exp.setdefault(k, v)
os.makedirs(out + "/adapter", exist_ok=True)
save_file(base, out + "/base.safetensors")
save_file(ad, out + "/adapter/adapter_model.safetensors")
json.dump(cfg, open(out + "/adapter/adapter_config.json", "w"))
save_file(exp, out + "/expected.safetensors")
print(json.dumps({"tensors": len(exp)}))
`;

Deno.test("torch loads the merged model ckpt writes and it equals torch's PEFT merge", async () => {
  await withTempDir(async (dir) => {
    await runPythonJson(MAKE, [dir]);
    const base = await openSafetensors(join(dir, "base.safetensors"));
    const { stateDict, report } = await mergeLora(base, [join(dir, "adapter")], {
      backend: "auto",
      safe: true,
      blockBytes: 64 << 10,
    });
    assert.deepEqual(report.biases, ["model.layers.0.self_attn.q_proj.bias"]);
    assert.deepEqual(report.replaced.toSorted(), [
      "lm_head.weight",
      "model.layers.0.self_attn.v_proj.bias",
    ]);
    const up = report.modules.find((m) => m.module === "model.layers.0.mlp.up_proj")!;
    assert.deepEqual([up.adapters[0]!.r, up.adapters[0]!.alpha], [8, 32]);
    const down = report.modules.find((m) => m.module === "model.layers.0.mlp.down_proj")!;
    assert.deepEqual([down.adapters[0]!.r, down.adapters[0]!.alpha], [16, 7]);
    await writeSafetensors(join(dir, "ours.safetensors"), stateDict);
    await stateDict.close();
    const res = await compareSafetensors(
      join(dir, "ours.safetensors"),
      join(dir, "expected.safetensors"),
    );
    console.log(
      `torch vs ckpt (${report.backend?.kind}): ${res.equal}/${res.elements} equal, max ${res.max_ulp} ulp`,
    );
    assert.ok(res.keys_equal && res.dtypes_equal);
    assert.ok(res.elements > 200_000);
    assert.ok(res.max_ulp <= 1, `max ${res.max_ulp} ulp`);
    assert.ok(res.equal / res.elements > 0.999);
  });
});

Deno.test("the committed LoRA fixtures are exactly what generate.py writes", async () => {
  await withTempDir(async (dir) => {
    await runPythonJson(
      `import json, runpy, sys
sys.argv = ["generate.py", sys.argv[1]]
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    runpy.run_path("tests/fixtures/lora/generate.py", run_name="__main__")
print(json.dumps(True))`,
      [dir],
      REPO_ROOT,
    );
    const walk = async (root: string, rel = ""): Promise<string[]> => {
      const out: string[] = [];
      for await (const e of Deno.readDir(join(root, rel))) {
        const p = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory) out.push(...await walk(root, p));
        else if (p !== "generate.py") out.push(p);
      }
      return out.sort();
    };
    const fresh = await walk(dir);
    assert.deepEqual(await walk(LORA_FIXTURES), fresh);
    for (const f of fresh) {
      const a = await Deno.readFile(join(dir, f));
      const b = await Deno.readFile(join(LORA_FIXTURES, f));
      assert.ok(a.length === b.length && a.every((v, i) => v === b[i]), `${f} differs`);
    }
  });
});
