/**
 * torch.distributed.checkpoint interop with torch 2.13 and accelerate 1.15 (the `hf` peer):
 *
 * - torch 2.13's 3-rank FSDP2 run in its newer layouts (SAFETENSORS-format DCP,
 *   HuggingFaceStorageWriter shards; `tests/fixtures/dcp/generate_torch213.py`, run afresh with
 *   `CKPT_REGENERATE=1`): what `ckpt gather` and writeOptim make of the folders equals the full
 *   state dicts torch gathered in the run, loaded by torch 2.13 (`weights_only=True`, `mmap=True`) and safetensors 0.8; AdamW resumes
 *   from our optimizer.pt exactly as from the unsharded twin's own state.
 * - `accelerate merge-weights` (its `merge_fsdp_weights`, what the command runs) of FSDP checkpoints
 *   written by torch 2.6 and 2.13 equals `ckpt gather` of the same folders, tensor for tensor.
 *
 * Fails (never skips) when the peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gatherConfig } from "../../cli/gather.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { peerSession, REPO_ROOT, runPeer } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const FIX = join(REPO_ROOT, "tests", "fixtures", "dcp");
const GENERATE = join(FIX, "generate_torch213.py");
const hf = peerSession("hf");

/** Python: the fresh references against what ckpt wrote; AdamW resumed from both. */
const CHECK_FRESH = String.raw`
import importlib.util, json, os, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file
gen_path, fresh, out = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("gen213", gen_path)
gen = importlib.util.module_from_spec(spec); spec.loader.exec_module(gen)
ref = torch.load(os.path.join(fresh, "st_w3", "reference.pt"), weights_only=True)

def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))

res = {}
want = ref["model"]
for name, path in [("st", "st/model.safetensors"), ("st_bin", "st_bin/pytorch_model.bin"),
                   ("hf", "hf/model.safetensors")]:
    p = os.path.join(out, path)
    loads = [load_file(p)] if p.endswith(".safetensors") else [
        torch.load(p, weights_only=True), torch.load(p, weights_only=True, mmap=True)]
    # (safetensors files list their tensors sorted by name; a .bin keeps the state dict's order)
    order = sorted if p.endswith(".safetensors") else list
    res[name] = all(order(got) == order(want) and all(same(got[k], v) for k, v in want.items())
                    for got in loads)

saved = [torch.load(os.path.join(out, "st", "optimizer.pt"), weights_only=True, mmap=m) for m in (False, True)]
res["optimizer_class"] = saved[0]["class"]
twin = ref["twin"]
def equal_state(a, b):
    return list(a["state"]) == list(b["state"]) and all(
        list(a["state"][i]) == list(b["state"][i]) and all(same(a["state"][i][k], v) for k, v in b["state"][i].items())
        for i in b["state"]) and a["param_groups"] == b["param_groups"]
res["optimizer_equal"] = all(equal_state(s["state_dict"], twin) for s in saved)

def resume(state):
    m = gen.make_model()
    m.load_state_dict(ref["model"])
    opt = torch.optim.AdamW(m.parameters(), lr=gen.LR, weight_decay=0.01)
    opt.load_state_dict(state)
    gen.set_grads(m, gen.STEPS)
    opt.step()
    return [p.detach().clone() for p in m.parameters()], opt.state_dict()
ours, theirs = resume(saved[1]["state_dict"]), resume(twin)
res["resumed_equal"] = all(same(a, b) for a, b in zip(ours[0], theirs[0]))
res["resumed_step"] = float(ours[1]["state"][0]["step"])
print(json.dumps(res))
`;

Deno.test("torch 2.13 DCP layouts: ckpt gather and writeOptim equal torch's own state dicts, AdamW resumes", async () => {
  await withTempDir(async (dir) => {
    // The committed fixtures (written by the same pinned torch); CKPT_REGENERATE=1 has torch 2.13
    // write them afresh first (3 ranks and a parent importing torch: ~30 s on 2 quiet cores).
    const regenerate = Deno.env.get("CKPT_REGENERATE") === "1";
    const fresh = regenerate ? join(dir, "fresh") : FIX, out = join(dir, "out");
    if (regenerate) await runPeer("hf", ["python3", GENERATE, fresh]);
    await runPipeline({
      output: join(out, "st"),
      stages: [
        { use: "gatherShards", from: join(fresh, "st_w3", "model") },
        { use: "writeModel" },
        { use: "writeOptim", optimizer: join(fresh, "st_w3", "optim"), keys: "int" },
      ],
    });
    await runPipeline(
      gatherConfig(join(fresh, "st_w3", "model"), join(out, "st_bin"), { format: "bin" }),
    );
    await runPipeline(gatherConfig(join(fresh, "hf_w3", "model"), join(out, "hf")));
    const res = await hf.json<Record<string, unknown>>(CHECK_FRESH, [GENERATE, fresh, out]);
    assert.deepEqual(res, {
      st: true,
      st_bin: true,
      hf: true,
      optimizer_class: "AdamW",
      optimizer_equal: true,
      resumed_equal: true,
      resumed_step: 3,
    });
  });
});

/** The folder name of a case ("pt_w3 (FSDP2, bf16)" -> "pt_w3"). */
function caseDir(c: string): string {
  return c.split(" ")[0]!;
}

/** Python: accelerate's merge of each folder next to ckpt's gather of it, tensor for tensor. */
const CHECK_ACCELERATE = String.raw`
import json, os, sys, warnings
warnings.filterwarnings("ignore")
import torch
from accelerate.utils import merge_fsdp_weights
from safetensors.torch import load_file
out = sys.argv[1]
res = {}
for case, src in json.loads(sys.argv[2]).items():
    theirs_dir = os.path.join(out, case, "accelerate")
    merge_fsdp_weights(src, theirs_dir, safe_serialization=True)
    theirs = load_file(os.path.join(theirs_dir, "model.safetensors"))
    ours = load_file(os.path.join(out, case, "ckpt", "model.safetensors"))
    bad = [k for k, v in theirs.items() if k not in ours or ours[k].dtype != v.dtype
           or ours[k].shape != v.shape or not torch.equal(ours[k].view(torch.uint8), v.view(torch.uint8))]
    res[case] = {"keys": sorted(ours) == sorted(theirs), "tensors": len(theirs), "different": bad}
print(json.dumps(res))
`;

Deno.test("accelerate merge-weights and ckpt gather give the same tensors (FSDP and FSDP2 checkpoints)", async () => {
  await withTempDir(async (dir) => {
    // Folders torch 2.13 wrote as accelerate saves them (committed fixtures). The torch 2.6 fixtures cannot take part: their .metadata
    // pickles Python 3.13's pathlib._local.PosixPath, which the peer's Python 3.11 cannot unpickle.
    const cases: Record<string, string> = {
      "pt_w3 (FSDP2, bf16)": join(FIX, "pt_w3", "pytorch_model_fsdp_0"),
      "fsdp1_w3 (FSDP1 ShardedTensor, f32)": join(FIX, "fsdp1_w3", "pytorch_model_fsdp_0"),
    };
    for (const [c, src] of Object.entries(cases)) {
      await runPipeline(gatherConfig(src, join(dir, caseDir(c), "ckpt")));
    }
    const res = await hf.json<
      Record<string, { keys: boolean; tensors: number; different: string[] }>
    >(
      CHECK_ACCELERATE,
      [
        dir,
        JSON.stringify(
          Object.fromEntries(Object.entries(cases).map(([c, src]) => [caseDir(c), src])),
        ),
      ],
    );
    for (const c of Object.keys(cases)) {
      const r = res[caseDir(c)];
      assert.equal(r?.keys, true, c);
      assert.deepEqual(r?.different, [], c);
      assert.equal(r?.tensors, 5, c);
    }
  });
});
