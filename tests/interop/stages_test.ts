/**
 * The stages' outputs handed to real PyTorch and safetensors, both versions users run (torch 2.6 +
 * safetensors 0.4.5 in the torch26 peer, torch 2.13 + safetensors 0.8 in the hf peer): a HALOs final
 * save (merged .bin + safetensors, optimizer, scheduler, metrics, value head) built by the stages
 * from inputs that torch version wrote (its own AdamW and LambdaLR state), then loaded with
 * `torch.load(weights_only=True)`, compared, and trained on. Fails (does not skip) when a peer is
 * missing.
 */
import { parseStageOptions } from "../../pipelines/stage.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { gatherShardsStage } from "../../pipelines/stages/gather_shards.ts";
import { mergeLoraStage } from "../../pipelines/stages/merge_lora.ts";
import { writeModelStage } from "../../pipelines/stages/write_model.ts";
import { writeOptimStage } from "../../pipelines/stages/write_optim.ts";
import { writeMetricsStage } from "../../pipelines/stages/write_metrics.ts";
import { writeValueHeadStage } from "../../pipelines/stages/write_value_head.ts";
import { type PeerName, REPO_ROOT, runPython, runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { fakeContext } from "../pipelines/_context.ts";

const MAKE = String.raw`
import json, os, sys, torch
from safetensors.torch import save_file
d = sys.argv[1]
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
for _ in range(2):
    net(torch.randn(5, 4)).pow(2).sum().backward()
    opt.step(); sched.step(); opt.zero_grad()
torch.save({'state_dict': opt.state_dict(), 'class': 'AdamW'}, f'{d}/optimizer_in.pt')
torch.save(sched.state_dict(), f'{d}/scheduler_in.pt')
sd = opt.state_dict()
tensors, state = {}, {}
for k, v in sd['state'].items():
    state[str(k)] = {}
    for n, t in v.items():
        tensors[f'state.{k}.{n}'] = t.contiguous()
        state[str(k)][n] = {'__tensor__': f'state.{k}.{n}'}
def enc(x):
    if isinstance(x, tuple): return {'__tuple__': [enc(i) for i in x]}
    if isinstance(x, float) and x.is_integer(): return {'__float__': x}
    if isinstance(x, list): return [enc(i) for i in x]
    return x
groups = [{k: enc(v) for k, v in g.items()} for g in sd['param_groups']]
save_file(tensors, f'{d}/optim_desc.safetensors')
json.dump({'class': 'AdamW', 'tensors': 'optim_desc.safetensors', 'state_dict': {'state': state, 'param_groups': groups}},
          open(f'{d}/optim_desc.json', 'w'))
save_file({'v_head.summary.weight': torch.randn(1, 8), 'v_head.summary.bias': torch.randn(1)}, f'{d}/heads.safetensors')
os.makedirs(f'{d}/base'); os.makedirs(f'{d}/adapter')
base = {
  'model.embed_tokens.weight': torch.randn(16, 8).bfloat16(),
  'model.layers.0.self_attn.q_proj.weight': torch.randn(8, 8).bfloat16(),
  'model.layers.0.mlp.down_proj.weight': torch.randn(8, 12).bfloat16(),
  'model.norm.weight': torch.ones(8).bfloat16(),
}
save_file(base, f'{d}/base/model.safetensors', metadata={'format': 'pt'})
json.dump({'architectures': ['LlamaForCausalLM'], 'hidden_size': 8, 'vocab_size': 16, 'model_type': 'llama',
           'tie_word_embeddings': True, 'torch_dtype': 'bfloat16', 'rope_theta': 10000.0},
          open(f'{d}/base/config.json', 'w'), indent=2)
ad = {}
for m, (o, i) in {'model.layers.0.self_attn.q_proj': (8, 8), 'model.layers.0.mlp.down_proj': (8, 12)}.items():
    ad[f'base_model.model.{m}.lora_A.weight'] = torch.randn(4, i) * 0.5
    ad[f'base_model.model.{m}.lora_B.weight'] = torch.randn(o, 4) * 0.5
save_file(ad, f'{d}/adapter/adapter_model.safetensors', metadata={'format': 'pt'})
json.dump({'peft_type': 'LORA', 'r': 4, 'lora_alpha': 8, 'target_modules': ['q_proj', 'down_proj'],
           'task_type': 'CAUSAL_LM'}, open(f'{d}/adapter/adapter_config.json', 'w'), indent=2)
json.dump({'metadata': {'seed': 0}, 'results': {'rewards/chosen': 1.0, 'loss': 1e-05, 'n': 3, 'kl': 0.1234567890123}},
          open(f'{d}/eval.json', 'w'))
`;

const CHECK = String.raw`
import json, sys, torch
from safetensors.torch import load_file
d = sys.argv[1]
out = {}
def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a.keys()) == list(b.keys()) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b
o = torch.load(f'{d}/out/optimizer.pt', weights_only=True)
i = torch.load(f'{d}/optimizer_in.pt', weights_only=True)
out['optimizer_equal'] = same(o, i)
ref = torch.load(f'{sys.argv[2]}/tests/fixtures/dcp/lora_w2/reference.pt', weights_only=True)
od = torch.load(f'{d}/out_dcp/optimizer.pt', weights_only=True)
out['optimizer_dcp_equal'] = od['class'] == 'AdamW' and same(od['state_dict'], ref['optimizer'])
out['optimizer_json_equal'] = same(torch.load(f'{d}/out_json/optimizer.pt', weights_only=True), i)
aw = load_file(f'{d}/out_adapter/adapter_model.safetensors')
ai = load_file(f'{d}/adapter/adapter_model.safetensors')
out['adapter_equal'] = sorted(aw) == sorted(ai) and all(torch.equal(aw[k], ai[k]) for k in ai)
out['adapter_config_equal'] = open(f'{d}/out_adapter/adapter_config.json', 'rb').read() == open(f'{d}/adapter/adapter_config.json', 'rb').read()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
opt.load_state_dict(o['state_dict'])
net(torch.randn(5, 4)).pow(2).sum().backward(); opt.step()
out['optimizer_resumes'] = float(opt.state_dict()['state'][0]['step']) == 3.0
out['scheduler_equal'] = same(torch.load(f'{d}/out/scheduler.pt', weights_only=True), torch.load(f'{d}/scheduler_in.pt', weights_only=True))
vh = torch.load(f'{d}/out/v_head.pt', weights_only=True)
heads = load_file(f'{d}/heads.safetensors')
out['v_head_type'] = type(vh).__name__
out['v_head_equal'] = sorted(vh.keys()) == ['summary.bias', 'summary.weight'] and all(torch.equal(vh[k], heads['v_head.' + k]) for k in vh)
out['v_head_safetensors_equal'] = all(torch.equal(v, vh[k]) for k, v in load_file(f'{d}/out/v_head.safetensors').items())
b = torch.load(f'{d}/out/pytorch_model.bin', weights_only=True)
out['bin_type'] = type(b).__name__
out['bin_keys'] = sorted(b.keys())
out['bin_tied_shared'] = b['lm_head.weight'].untyped_storage().data_ptr() == b['model.embed_tokens.weight'].untyped_storage().data_ptr()
base = load_file(f'{d}/base/model.safetensors')
ad = load_file(f'{d}/adapter/adapter_model.safetensors')
worst = 0.0
for m in ['model.layers.0.self_attn.q_proj', 'model.layers.0.mlp.down_proj']:
    A = ad[f'base_model.model.{m}.lora_A.weight'].double(); B = ad[f'base_model.model.{m}.lora_B.weight'].double()
    ref = base[m + '.weight'].double() + (B @ A) * (8 / 4)
    got = b[m + '.weight']
    assert got.dtype == torch.bfloat16
    # distance in units of the bf16 spacing at the reference value
    e = torch.floor(torch.log2(ref.abs().clamp(min=1e-30)))
    ulp = torch.pow(2.0, e - 7)
    worst = max(worst, float(((got.double() - ref).abs() / ulp).max()))
out['merge_max_ulps'] = worst
out['untouched_equal'] = torch.equal(b['model.norm.weight'], base['model.norm.weight']) and torch.equal(b['model.embed_tokens.weight'], base['model.embed_tokens.weight'])
st = load_file(f'{d}/out_st/model.safetensors')
out['st_keys'] = sorted(st.keys())
out['st_equal_bin'] = all(torch.equal(v, b[k]) for k, v in st.items())
cfg = json.load(open(f'{d}/out_st/config.json'))
out['st_config'] = [cfg['tie_word_embeddings'], cfg['torch_dtype'], cfg['vocab_size'], type(cfg['rope_theta']).__name__]
import glob
written = sorted(glob.glob(f'{d}/out*/*.pt') + glob.glob(f'{d}/out*/*.bin'))
out['mmap_same'] = len(written) >= 6 and all(
    same(torch.load(p, weights_only=True), torch.load(p, weights_only=True, mmap=True)) for p in written)
ev = json.load(open(f'{d}/eval.json'))['results']
ev['counter'] = 64
out['metrics_text_equal'] = open(f'{d}/out/metrics.json').read() == json.dumps(ev)
print(json.dumps(out))
`;

interface CheckResult {
  optimizer_equal: boolean;
  optimizer_json_equal: boolean;
  optimizer_dcp_equal: boolean;
  adapter_equal: boolean;
  adapter_config_equal: boolean;
  optimizer_resumes: boolean;
  scheduler_equal: boolean;
  v_head_type: string;
  v_head_equal: boolean;
  v_head_safetensors_equal: boolean;
  bin_type: string;
  bin_keys: string[];
  bin_tied_shared: boolean;
  merge_max_ulps: number;
  untouched_equal: boolean;
  st_keys: string[];
  st_equal_bin: boolean;
  st_config: [boolean, string, number, string];
  metrics_text_equal: boolean;
  mmap_same: boolean;
}

Deno.test("stages write HALOs final and intermediate saves that real torch 2.6 and 2.13 and safetensors load as the inputs", async (t) => {
  for (const peer of ["torch26", "hf"] as const) {
    await t.step(
      peer === "hf" ? "torch 2.13, safetensors 0.8" : "torch 2.6, safetensors 0.4",
      () => withTempDir((dir) => stagesRoundTrip(dir, peer)),
    );
  }
});

/** The inputs written by `peer`'s torch, the stages run on them, the outputs checked by it. */
async function stagesRoundTrip(dir: string, peer: PeerName): Promise<void> {
  await runPython(MAKE, [dir], undefined, { peer });
  for (const [outName, format] of [["out", "bin"], ["out_st", "safetensors"]] as const) {
    const out = join(dir, outName);
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir });
    await gatherShardsStage.run(ctx, parseStageOptions(gatherShardsStage, { from: "base" }));
    await mergeLoraStage.run(
      ctx,
      parseStageOptions(mergeLoraStage, { adapter: "adapter", backend: "cpu" }),
    );
    await writeModelStage.run(ctx, parseStageOptions(writeModelStage, { format }));
    if (format === "bin") {
      await writeOptimStage.run(
        ctx,
        parseStageOptions(writeOptimStage, {
          optimizer: "optimizer_in.pt",
          scheduler: "scheduler_in.pt",
        }),
      );
      await writeMetricsStage.run(
        ctx,
        parseStageOptions(writeMetricsStage, {
          from: "eval.json",
          field: "results",
          counter: 64,
        }),
      );
      await writeValueHeadStage.run(
        ctx,
        parseStageOptions(writeValueHeadStage, {
          from: "heads.safetensors",
          prefix: "v_head.",
          safetensors: true,
        }),
      );
    }
    await ctx.stateDict?.close();
    assert.equal(ctx.adapterDir, join(dir, "adapter"));
  }
  // the JSON + safetensors description of the same optimizer, and the adapter-only save
  const outJson = join(dir, "out_json");
  await Deno.mkdir(outJson);
  await writeOptimStage.run(
    fakeContext(outJson, { baseDir: dir }),
    parseStageOptions(writeOptimStage, { optimizer: "optim_desc.json" }),
  );
  const outAdapter = join(dir, "out_adapter");
  await Deno.mkdir(outAdapter);
  const actx = fakeContext(outAdapter, { baseDir: dir });
  await gatherShardsStage.run(actx, parseStageOptions(gatherShardsStage, { from: "base" }));
  await writeModelStage.run(
    actx,
    parseStageOptions(writeModelStage, { what: "adapter", adapter: "adapter" }),
  );
  await actx.stateDict?.close();
  // an FSDP2 LoRA run saved with torch.distributed.checkpoint (fixtures made by torch 2.6)
  const outDcp = join(dir, "out_dcp");
  await Deno.mkdir(outDcp);
  const dctx = fakeContext(outDcp, { baseDir: join(REPO_ROOT, "tests", "fixtures", "dcp") });
  await gatherShardsStage.run(
    dctx,
    parseStageOptions(gatherShardsStage, { from: "lora_w2/model" }),
  );
  await mergeLoraStage.run(
    dctx,
    parseStageOptions(mergeLoraStage, { r: 2, alpha: 4, backend: "cpu" }),
  );
  await writeOptimStage.run(
    dctx,
    parseStageOptions(writeOptimStage, { optimizer: "lora_w2/optim" }),
  );
  await dctx.stateDict?.close();
  const r = await runPythonJson<CheckResult>(CHECK, [dir, REPO_ROOT], undefined, { peer });
  assert.equal(r.optimizer_equal, true);
  assert.equal(r.optimizer_json_equal, true);
  assert.equal(r.optimizer_dcp_equal, true);
  assert.equal(r.adapter_equal, true);
  assert.equal(r.adapter_config_equal, true);
  assert.equal(r.optimizer_resumes, true);
  assert.equal(r.scheduler_equal, true);
  assert.equal(r.v_head_type, "OrderedDict");
  assert.equal(r.v_head_equal, true);
  assert.equal(r.v_head_safetensors_equal, true);
  assert.equal(r.bin_type, "OrderedDict");
  assert.deepEqual(r.bin_keys, [
    "lm_head.weight",
    "model.embed_tokens.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.norm.weight",
  ]);
  assert.equal(r.bin_tied_shared, true);
  assert.ok(
    r.merge_max_ulps <= 0.5001,
    `merged weights are ${r.merge_max_ulps} bf16 ulps from float64`,
  );
  assert.equal(r.untouched_equal, true);
  assert.deepEqual(r.st_keys, r.bin_keys.filter((k) => k !== "lm_head.weight"));
  assert.equal(r.st_equal_bin, true);
  assert.deepEqual(r.st_config, [true, "bfloat16", 16, "float"]);
  assert.equal(r.metrics_text_equal, true);
  assert.equal(r.mmap_same, true, "every .pt/.bin written loads the same with mmap=True");
}
