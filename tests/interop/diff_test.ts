/**
 * `ckpt diff` against torch 2.6 (the peer; fails, never skips, without it): torch changes a model in
 * known ways and saves it as `pytorch_model.bin`; every figure ckpt reports (differing count, first
 * differing index, max |A−B| and its index, bf16 ulps, ‖A−B‖/‖A‖, cosine, names on one side) equals
 * torch's own float64 computation.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeF32 } from "../../formats/dtype.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { ckpt } from "../cli/_cli.ts";
import { runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const SCRIPT = `
import json, sys, torch
from safetensors.torch import load_file
a = load_file(sys.argv[1] + "/model.safetensors")
g = torch.Generator().manual_seed(7)
b = {}
b["model.layers.0.self_attn.q_proj.weight"] = a["model.layers.0.self_attn.q_proj.weight"].clone()
noisy = a["model.layers.0.mlp.up_proj.weight"].float()
b["model.layers.0.mlp.up_proj.weight"] = (noisy + 1e-2 * torch.randn(noisy.shape, generator=g)).bfloat16()
flip = a["model.layers.1.self_attn.v_proj.weight"].clone()
flip[3, 5] = -flip[3, 5]
b["model.layers.1.self_attn.v_proj.weight"] = flip
wide = a["model.layers.1.mlp.down_proj.weight"].float()
b["model.layers.1.mlp.down_proj.weight"] = wide + 1e-4 * torch.randn(wide.shape, generator=g)
b["model.norm.weight"] = a["model.norm.weight"].clone()
b["lm_head.extra"] = torch.zeros(2)
torch.save(b, sys.argv[2] + "/pytorch_model.bin")

def ordered(t):
    i = t.view(torch.int16).int()
    return torch.where(i < 0, -(i & 0x7fff), i)

out = {"onlyA": [k for k in a if k not in b], "onlyB": [k for k in b if k not in a], "tensors": {}}
for k in a:
    if k not in b:
        continue
    x, y = a[k].double(), b[k].double()
    d = x - y
    nz = (x != y).nonzero().tolist()
    fig = {
        "differing": int((x != y).sum()),
        "first": nz[0] if nz else None,
        "maxAbs": float(d.abs().max()),
        "maxAbsAt": list(divmod(int(d.abs().argmax()), x.shape[1])) if nz else None,
        "relNorm": float(d.norm() / x.norm()),
        "cosine": float((x * y).sum() / (x.norm() * y.norm())),
    }
    if a[k].dtype == b[k].dtype == torch.bfloat16:
        fig["maxUlp"] = int((ordered(a[k]) - ordered(b[k])).abs().max())
    out["tensors"][k] = fig
print(json.dumps(out))
`;

interface TorchFigures {
  differing: number;
  first: number[] | null;
  maxAbs: number;
  maxAbsAt: number[] | null;
  relNorm: number;
  cosine: number;
  maxUlp?: number;
}

interface CkptTensor {
  name: string;
  status: string;
  differing: number;
  first?: { at: number[] };
  maxAbs: number;
  maxAbsAt?: number[];
  maxUlp: number;
  relNorm: number;
  cosine: number;
}

Deno.test("ckpt diff of a model against torch's changed .bin gives torch's float64 figures", async () => {
  await withTempDir(async (dir) => {
    const A = join(dir, "a"), B = join(dir, "b");
    await Deno.mkdir(A);
    await Deno.mkdir(B);
    let seed = 3;
    const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5;
    const bf16 = (shape: number[]) =>
      tensorFromBytes(
        "BF16",
        shape,
        encodeF32("BF16", Float32Array.from({ length: shape[0]! * (shape[1] ?? 1) }, rnd)),
      );
    await writeSafetensors(
      join(A, "model.safetensors"),
      new StateDict([
        ["model.layers.0.self_attn.q_proj.weight", bf16([16, 8])],
        ["model.layers.0.mlp.up_proj.weight", bf16([24, 8])],
        ["model.layers.1.self_attn.v_proj.weight", bf16([8, 8])],
        ["model.layers.1.mlp.down_proj.weight", bf16([8, 24])],
        ["model.norm.weight", bf16([8])],
        ["model.embed_tokens.weight", bf16([32, 8])],
      ]),
    );
    const torch = await runPythonJson<
      { onlyA: string[]; onlyB: string[]; tensors: Record<string, TorchFigures> }
    >(SCRIPT, [A, B]);
    const r = await ckpt(["diff", A, B, "--json"]);
    assert.equal(r.code, 1, r.stderr);
    const report = JSON.parse(r.stdout) as {
      tensors: CkptTensor[];
      onlyA: string[];
      onlyB: string[];
    };
    assert.deepEqual(report.onlyA, torch.onlyA);
    assert.deepEqual(report.onlyB, torch.onlyB);
    assert.equal(report.tensors.length, Object.keys(torch.tensors).length);
    const close = (x: number, y: number, what: string) =>
      assert.ok(Math.abs(x - y) <= 1e-9 * Math.max(1, Math.abs(y)), `${what}: ${x} vs ${y}`);
    for (const t of report.tensors) {
      const want = torch.tensors[t.name]!;
      assert.equal(t.differing, want.differing, t.name);
      assert.deepEqual(t.first?.at ?? null, want.first, t.name);
      close(t.maxAbs, want.maxAbs, `${t.name} maxAbs`);
      close(t.relNorm, want.relNorm, `${t.name} relNorm`);
      close(t.cosine, want.cosine, `${t.name} cosine`);
      if (want.maxAbsAt) assert.deepEqual(t.maxAbsAt, want.maxAbsAt, t.name);
      if (want.maxUlp !== undefined) assert.equal(t.maxUlp, want.maxUlp, `${t.name} ulp`);
    }
    const status = Object.fromEntries(report.tensors.map((t) => [t.name, t.status]));
    assert.deepEqual(status, {
      "model.layers.0.self_attn.q_proj.weight": "equal",
      "model.layers.0.mlp.up_proj.weight": "different",
      "model.layers.1.self_attn.v_proj.weight": "different",
      "model.layers.1.mlp.down_proj.weight": "different",
      "model.norm.weight": "equal",
    });
  });
});
