/**
 * `checkComplete()` against files written by real torch 2.6 and safetensors: a finished save
 * (safetensors, pytorch_model.bin, optimizer.pt, HF shards + index, a torch.distributed.checkpoint
 * folder) is complete, and the same saves cut short are not.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { checkComplete } from "../../pipelines/watch/complete.ts";
import { runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const SCRIPT = `
import json, os, sys, warnings
import torch
from safetensors.torch import save_file
import torch.distributed.checkpoint as dcp
warnings.filterwarnings("ignore")
root = sys.argv[1]
torch.manual_seed(0)
sd = {"model.embed.weight": torch.randn(64, 32), "lm_head.weight": torch.randn(64, 32)}
opt = torch.optim.AdamW([torch.nn.Parameter(torch.randn(4, 4))])
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

def halos(d, weights):
    os.makedirs(d, exist_ok=True)
    json.dump({}, open(os.path.join(d, "tokenizer_config.json"), "w"))
    json.dump({"counter": 64}, open(os.path.join(d, "metrics.json"), "w"))
    torch.save({"state_dict": opt.state_dict(), "class": "AdamW"}, os.path.join(d, "optimizer.pt"))
    torch.save(sched.state_dict(), os.path.join(d, "scheduler.pt"))
    json.dump({"model_type": "llama"}, open(os.path.join(d, "config.json"), "w"))
    weights(d)

halos(os.path.join(root, "safetensors"),
      lambda d: save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"}))
halos(os.path.join(root, "bin"), lambda d: torch.save(sd, os.path.join(d, "pytorch_model.bin")))

def shards(d):
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    keys = sorted(sd)
    for name, key in zip(names, keys):
        save_file({key: sd[key]}, os.path.join(d, name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": 2 * 64 * 32 * 4}, "weight_map": dict(zip(keys, names))}
    json.dump(index, open(os.path.join(d, "model.safetensors.index.json"), "w"), indent=2)
halos(os.path.join(root, "shards"), shards)

halos(os.path.join(root, "dcp"),
      lambda d: dcp.save({"model": sd}, checkpoint_id=os.path.join(d, "pytorch_model_fsdp_0")))
print(json.dumps(sorted(os.listdir(os.path.join(root, "dcp", "pytorch_model_fsdp_0")))))
`;

async function reason(dir: string): Promise<string> {
  return (await checkComplete(dir, { quietSeconds: 0 })).reason;
}

async function truncate(path: string, by: number): Promise<void> {
  const { size } = await Deno.stat(path);
  await Deno.truncate(path, size - by);
}

Deno.test("`checkComplete()` judges real torch/safetensors saves, finished and cut short", async () => {
  await withTempDir(async (root) => {
    const dcpFiles = await runPythonJson<string[]>(SCRIPT, [root]);
    assert.ok(dcpFiles.includes(".metadata"));
    assert.ok(dcpFiles.some((f) => f.endsWith(".distcp")));
    for (const kind of ["safetensors", "bin", "shards", "dcp"]) {
      assert.equal(await reason(join(root, kind)), "complete", kind);
    }
    // Cut short the way an interrupted save leaves them.
    await truncate(join(root, "safetensors", "model.safetensors"), 100);
    assert.equal(await reason(join(root, "safetensors")), "truncated");
    await truncate(join(root, "bin", "pytorch_model.bin"), 10);
    assert.equal(await reason(join(root, "bin")), "truncated");
    await truncate(join(root, "shards", "optimizer.pt"), 1);
    const c = await checkComplete(join(root, "shards"), { quietSeconds: 0 });
    assert.deepEqual([c.reason, c.detail], ["truncated", "optimizer.pt"]);
    await Deno.remove(join(root, "shards", "model.safetensors.index.json"));
    assert.equal(await reason(join(root, "shards")), "shards-without-index");
    await Deno.remove(join(root, "dcp", "pytorch_model_fsdp_0", ".metadata"));
    assert.equal(await reason(join(root, "dcp")), "dcp-no-metadata");
  });
});
