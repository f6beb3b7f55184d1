/**
 * Interop for torch.distributed.checkpoint folders written by real FSDP2/DTensor runs (torch 2.6,
 * `tests/fixtures/dcp/`): what `ckpt gather` writes equals torch's own `dcp_to_torch_save` of the
 * same folder (loaded by the real safetensors library and by `torch.load(weights_only=True)`), the
 * optimizer state rebuilt from the DCP optimizer folder loads into torch's AdamW and equals the
 * original, and the HALOs final-save pipeline run from the DCP folder of a PEFT-wrapped LoRA model
 * gives merged weights equal to an independent float64 reference. Fails (never skips) when the
 * torch peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { runPipeline } from "../../pipelines/run.ts";
import { gatherConfig } from "../../cli/gather.ts";
import { openDcpStateDict } from "../../formats/dcp.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { saveTorchStateDict } from "../../formats/torch/save.ts";
import { REPO_ROOT, runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const FIX = join(REPO_ROOT, "tests", "fixtures", "dcp");
const CASES = ["f32_w2", "bf16_w4", "dtensor_w4", "lora_w2", "files_w2"];

/** Python: compares gathered outputs against dcp_to_torch_save run live on the same folders. */
const CHECK_GATHER = String.raw`
import json, os, sys, tempfile, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
fix, out = sys.argv[1], sys.argv[2]
res = {}
def flat(d, p=""):
    for k, v in d.items():
        if isinstance(v, dict): yield from flat(v, f"{p}{k}.")
        elif torch.is_tensor(v): yield f"{p}{k}", v
for case in json.loads(sys.argv[3]):
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(os.path.join(fix, case, "model"), os.path.join(tmp, "full.pt"))
        want = dict(flat(torch.load(os.path.join(tmp, "full.pt"), weights_only=True)))
    st = load_file(os.path.join(out, case, "st", "model.safetensors"))
    bn = torch.load(os.path.join(out, case, "bin", "pytorch_model.bin"), weights_only=True)
    r = {"keys": set(want) == set(st) and list(want) == list(bn), "mismatch": []}
    for k, v in want.items():
        for name, got in (("st", st.get(k)), ("bin", bn.get(k))):
            same = got is not None and got.dtype == v.dtype and got.shape == v.shape and (
                got.contiguous().reshape(-1).view(torch.uint8).tolist()
                == v.contiguous().reshape(-1).view(torch.uint8).tolist() if v.numel() else True)
            if not same: r["mismatch"].append(f"{name}:{k}")
    res[case] = r
print(json.dumps(res))
`;

Deno.test("ckpt gather output equals torch's dcp_to_torch_save byte for byte (safetensors and bin)", async () => {
  await withTempDir(async (dir) => {
    for (const c of CASES) {
      if (c === "lora_w2") {
        // PEFT-wrapped weights are not a model (writeModel refuses them unmerged): write the
        // gathered state dict with the same writers directly.
        await using sd = await openDcpStateDict(join(FIX, c, "model"));
        await Deno.mkdir(join(dir, c, "st"), { recursive: true });
        await Deno.mkdir(join(dir, c, "bin"), { recursive: true });
        await writeSafetensors(join(dir, c, "st", "model.safetensors"), sd);
        await saveTorchStateDict(join(dir, c, "bin", "pytorch_model.bin"), sd);
        continue;
      }
      for (const [fmt, sub] of [["safetensors", "st"], ["bin", "bin"]] as const) {
        await runPipeline(gatherConfig(join(FIX, c, "model"), join(dir, c, sub), { format: fmt }));
      }
    }
    const res = await runPythonJson<Record<string, { keys: boolean; mismatch: string[] }>>(
      CHECK_GATHER,
      [FIX, dir, JSON.stringify(CASES)],
    );
    for (const c of CASES) {
      assert.deepEqual(res[c], { keys: true, mismatch: [] }, c);
    }
  });
});

/** Python: the DCP-rebuilt optimizer.pt loads into AdamW and equals the unsharded twin's state. */
const CHECK_OPTIM = String.raw`
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
import generate as g
out = sys.argv[2]
makers = {"f32_w2": lambda: g.plain_model(torch.float32), "bf16_w4": lambda: g.w4_model(torch.bfloat16),
          "lora_w2": g.lora_model}
res = {}
def same(a, b):
    if torch.is_tensor(a): return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict): return type(a) is type(b) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
def int_keyed(full):
    # dcp_to_torch_save's name-keyed state, renumbered as torch.optim numbers it
    names = [n for grp in full["param_groups"] for n in grp["params"]]
    order = ["step", "exp_avg", "exp_avg_sq"]
    state = {names.index(n): {k: s[k] for k in order if k in s} for n, s in full["state"].items()}
    groups = [{**{k: v for k, v in grp.items() if k != "params"}, "params": [names.index(n) for n in grp["params"]]}
              for grp in full["param_groups"]]
    return {"state": dict(sorted(state.items())), "param_groups": groups}
makers["fsdp1_w2"] = lambda: g.plain_model(torch.float32)
for case, make in makers.items():
    if case == "fsdp1_w2":
        full = torch.load(f"{g.HERE}/fsdp1_w2/optimizer_0_full.pt", weights_only=True)["optimizer"]
        ref = {"optimizer": int_keyed(full)}
    else:
        ref = torch.load(f"{g.HERE}/{case}/reference.pt", weights_only=True)
    saved = torch.load(f"{out}/{case}/optimizer.pt", weights_only=True)
    model = make()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    opt.load_state_dict(saved["state_dict"])
    want = ref["optimizer"]
    got = opt.state_dict()
    if case == "fsdp1_w2":  # key order of the groups differs from dcp_to_torch_save's: compare as dicts
        got = {"state": got["state"], "param_groups": [dict(sorted(x.items())) for x in got["param_groups"]]}
        want = {"state": want["state"], "param_groups": [dict(sorted(x.items())) for x in want["param_groups"]]}
        raw = saved["state_dict"]
        raw = {"state": raw["state"], "param_groups": [dict(sorted(x.items())) for x in raw["param_groups"]]}
    else:
        raw = saved["state_dict"]
    r = {"class": saved["class"], "equal": same(got, want), "raw_equal": same(raw, want)}
    g.set_grads(model, 99)
    opt.step()
    r["step_after"] = float(opt.state_dict()["state"][0]["step"])
    res[case] = r
print(json.dumps(res))
`;

Deno.test("the optimizer rebuilt from a DCP folder loads into torch's AdamW and equals the original", async () => {
  await withTempDir(async (dir) => {
    const cases = ["f32_w2", "bf16_w4", "lora_w2", "fsdp1_w2"];
    for (const c of cases) {
      // writeOptim with the DCP optimizer source: HALOs' {'state_dict': ..., 'class': 'AdamW'}.
      const fsdp1 = c === "fsdp1_w2";
      await runPipeline({
        output: join(dir, c),
        stages: [
          { use: "gatherShards", from: join(FIX, c, fsdp1 ? "pytorch_model_fsdp_0" : "model") },
          {
            use: "writeOptim",
            optimizer: join(FIX, c, fsdp1 ? "optimizer_0" : "optim"),
            keys: "int",
            check: c !== "lora_w2", // LoRA parameters are not in the (unmerged) model by name
          },
        ],
      });
    }
    const res = await runPythonJson<
      Record<string, { class: string; equal: boolean; raw_equal: boolean; step_after: number }>
    >(CHECK_OPTIM, [FIX, dir]);
    for (const c of cases) {
      const steps = c === "lora_w2" ? 3 : 2;
      assert.deepEqual(res[c], {
        class: "AdamW",
        equal: true,
        raw_equal: true,
        step_after: steps + 1,
      }, c);
    }
  });
});

/** Python: float64 reference of the merged LoRA model, compared with what the pipeline wrote. */
const CHECK_MERGE = String.raw`
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file
ref = torch.load(sys.argv[1], weights_only=True)["model"]
r, alpha = json.loads(sys.argv[3])
got = load_file(sys.argv[2])
P = "base_model.model."
want = {}
for k, v in ref.items():
    if ".lora_" in k: continue
    name = k[len(P):].replace(".base_layer.", ".")
    if ".base_layer." in k:
        a = ref[k.replace("base_layer.weight", "lora_A.default.weight")].double()
        b = ref[k.replace("base_layer.weight", "lora_B.default.weight")].double()
        v = v.double() + (alpha / r) * (b @ a)
    want[name] = v.double()
res = {"keys": sorted(got) == sorted(want), "dtype": sorted({str(t.dtype) for t in got.values()}),
       "max_ulps": 0.0, "exact": 0, "total": 0}
for k, w in want.items():
    g = got[k].double()
    # one bf16 ulp of the reference value (2^-7 relative, bf16 has 8 significant bits)
    ulp = torch.clamp(w.abs(), min=2.0**-126) * 2.0**-7
    res["max_ulps"] = max(res["max_ulps"], float(((g - w).abs() / ulp).max()))
    res["exact"] += int((got[k] == w.to(torch.bfloat16)).sum())
    res["total"] += w.numel()
print(json.dumps(res))
`;

Deno.test("the HALOs final-save pipeline from a DCP LoRA folder matches a float64 merge", async () => {
  const { r, lora_alpha } = JSON.parse(await Deno.readTextFile(join(FIX, "lora_w2", "lora.json")));
  await withTempDir(async (dir) => {
    const eval_ = join(dir, "eval.json");
    await Deno.writeTextFile(
      eval_,
      JSON.stringify({ "rewards_eval/accuracies": 0.75, counter: 96 }),
    );
    const out = join(dir, "FINAL");
    // The HALOs final-save preset's stages, with the model (and the LoRA inside it, PEFT-wrapped
    // as FSDP saved it) and the optimizer coming from DCP folders.
    const result = await runPipeline({
      output: out,
      stages: [
        { use: "gatherShards", from: join(FIX, "lora_w2", "model") },
        { use: "mergeLora", r, alpha: lora_alpha, backend: "cpu" },
        { use: "writeModel", dtype: "bfloat16", format: "safetensors" },
        { use: "writeOptim", optimizer: join(FIX, "lora_w2", "optim"), check: false },
        { use: "writeMetrics", from: eval_ },
      ],
    });
    assert.ok(result.files.some((f) => f.path === "model.safetensors"));
    assert.ok(result.files.some((f) => f.path === "optimizer.pt"));
    const res = await runPythonJson<
      { keys: boolean; dtype: string[]; max_ulps: number; exact: number; total: number }
    >(CHECK_MERGE, [
      join(FIX, "lora_w2", "reference.pt"),
      join(out, "model.safetensors"),
      JSON.stringify([r, lora_alpha]),
    ]);
    assert.equal(res.keys, true);
    assert.deepEqual(res.dtype, ["torch.bfloat16"]);
    // One rounding from f32 math: within one bf16 ulp of the float64 value, nearly always exact.
    assert.ok(res.max_ulps <= 1, `max error ${res.max_ulps} ulp`);
    assert.ok(res.exact >= res.total * 0.95, `${res.exact} of ${res.total} exact`);

    // ckpt gather --lora-r/--lora-alpha runs the same merge: identical bytes.
    const gathered = join(dir, "gathered");
    await runPipeline(
      gatherConfig(join(FIX, "lora_w2", "model"), gathered, {
        dtype: "bfloat16",
        lora: { r, alpha: lora_alpha },
      }),
    );
    assert.deepEqual(
      await Deno.readFile(join(gathered, "model.safetensors")),
      await Deno.readFile(join(out, "model.safetensors")),
    );
  });
});
