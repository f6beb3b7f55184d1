/**
 * Interop: the `halos-final-fsdp` preset file (and its example config) run end to end on the
 * real-torch FSDP2 fixture `tests/fixtures/dcp/lora_w2` (a PEFT-wrapped LoRA model and its AdamW
 * state as DCP folders): the merged weights equal the float64 merge rounded to bf16, and real torch
 * and safetensors load every output (the optimizer into AdamW). Fails (never skips) when the peer
 * is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadPreset } from "../../pipelines/presets.ts";
import { runPipeline } from "../../pipelines/run.ts";
import type { PipelineEvent } from "../../pipelines/stage.ts";
import { REPO_ROOT, runPython, runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt } from "../cli/_cli.ts";

const FIX = join(REPO_ROOT, "tests", "fixtures", "dcp");
const CASE = join(FIX, "lora_w2");

/** Python: a scheduler.pt as HALOs saves it (torch.save of a LambdaLR state dict). */
const MAKE_SCHEDULER = String.raw`
import sys, torch
p = torch.nn.Parameter(torch.zeros(2))
opt = torch.optim.AdamW([p], lr=1e-2)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda step: min(1.0, (step + 1) / 10))
for _ in range(3):
    opt.step(); sched.step()
torch.save(sched.state_dict(), sys.argv[1])
`;

/** Python: every output folder checked against the fixture's float64 reference. */
const CHECK = String.raw`
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file
sys.dont_write_bytecode = True
fix, gen_dir, sched_in, outs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, gen_dir)
import generate as g
lora = json.load(open(f"{fix}/lora.json"))
ref = torch.load(f"{fix}/reference.pt", weights_only=True)
m = ref["model"]
P = "base_model.model."
want, base = {}, {}
for k, v in m.items():
    if ".lora_" in k: continue
    name = k[len(P):].replace(".base_layer.", ".")
    base[name] = v
    if ".base_layer." in k:
        a = m[k.replace("base_layer.weight", "lora_A.default.weight")].double()
        b = m[k.replace("base_layer.weight", "lora_B.default.weight")].double()
        v = v.double() + (lora["lora_alpha"] / lora["r"]) * (b @ a)
    want[name] = v.to(torch.bfloat16)
def same(a, b):
    if torch.is_tensor(a): return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict): return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
res = {}
for label, folder in outs.items():
    try:
        sd = load_file(f"{folder}/model.safetensors"); fmt = "safetensors"
    except FileNotFoundError:
        sd = torch.load(f"{folder}/pytorch_model.bin", weights_only=True); fmt = "bin"
    r = {"format": fmt, "keys": sorted(sd) == sorted(want),
         "dtypes": sorted({str(t.dtype) for t in sd.values()}),
         "not_equal": [k for k in want if k not in sd or not torch.equal(sd[k], want[k])],
         "changed": sorted(k for k in want if k in sd and not torch.equal(sd[k], base[k]))}
    saved = torch.load(f"{folder}/optimizer.pt", weights_only=True)
    model = g.lora_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    opt.load_state_dict(saved["state_dict"])
    r["optim_class"] = saved["class"]
    r["optim_equal"] = same(opt.state_dict(), ref["optimizer"])
    r["scheduler_equal"] = same(torch.load(f"{folder}/scheduler.pt", weights_only=True),
                                torch.load(sched_in, weights_only=True))
    r["metrics"] = json.load(open(f"{folder}/metrics.json"))
    cfg = json.load(open(f"{folder}/config.json"))
    r["config_dtype"] = cfg.get("torch_dtype")
    r["pad_token"] = json.load(open(f"{folder}/tokenizer_config.json")).get("pad_token")
    res[label] = r
print(json.dumps(res))
`;
import { wordLevelTokenizer } from "../_helpers/word_level.ts";

/** A run folder in the preset's layout around the fixture's DCP folders. */
async function makeFsdpRun(run: string): Promise<void> {
  await Deno.mkdir(join(run, "state"), { recursive: true });
  await Deno.mkdir(join(run, "base"));
  for (const [from, to] of [["model", "model"], ["optim", "optimizer"]] as const) {
    await Deno.mkdir(join(run, "state", to));
    for await (const e of Deno.readDir(join(CASE, from))) {
      await Deno.copyFile(join(CASE, from, e.name), join(run, "state", to, e.name));
    }
  }
  await runPython(MAKE_SCHEDULER, [join(run, "state", "scheduler.pt")]);
  // The base model's config and tokenizer (the fixture model: vocab 11, hidden 8, one layer).
  await Deno.writeTextFile(
    join(run, "base", "config.json"),
    JSON.stringify({
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: 8,
      num_hidden_layers: 1,
      vocab_size: 11,
      tie_word_embeddings: false,
      torch_dtype: "float32",
    }),
  );
  const vocab: Record<string, number> = { "<unk>": 0, "</s>": 1 };
  for (const [i, w] of ["hi", "there", "how", "are", "you"].entries()) vocab[w] = i + 2;
  await Deno.writeTextFile(
    join(run, "base", "tokenizer.json"),
    JSON.stringify(wordLevelTokenizer(vocab)),
  );
  await Deno.writeTextFile(
    join(run, "base", "tokenizer_config.json"),
    JSON.stringify({ eos_token: "</s>", unk_token: "<unk>" }),
  );
  await Deno.writeTextFile(
    join(run, "base", "generation_config.json"),
    '{\n  "eos_token_id": 2,\n  "max_new_tokens": 64\n}\n',
  );
  await Deno.writeTextFile(
    join(run, "eval.json"),
    JSON.stringify({ "rewards_eval/accuracies": 0.75, "loss/eval": 0.5, counter: 96 }),
  );
}

Deno.test("the halos-final-fsdp preset turns real FSDP2 DCP shards of a PEFT-wrapped LoRA model into a final save torch loads", async () => {
  const { r, lora_alpha } = JSON.parse(await Deno.readTextFile(join(CASE, "lora.json")));
  await withTempDir(async (dir) => {
    const run = join(dir, "run");
    await makeFsdpRun(run);
    const lora = { lora_r: String(r), lora_alpha: String(lora_alpha) };

    // 1. The preset through the library, defaults (pytorch_model.bin, counter from eval.json).
    const events: PipelineEvent[] = [];
    const config = await loadPreset("halos-final-fsdp", { vars: { run, ...lora }, env: {} });
    const result = await runPipeline(config, { backend: "cpu", onEvent: (e) => events.push(e) });
    assert.equal(result.output, join(run, "FINAL"));
    assert.deepEqual(
      events.filter((e) => e.type === "stage-end").map((e) => (e as { stage: string }).stage),
      ["gatherShards", "mergeLora", "writeModel", "writeTokenizer", "writeOptim", "writeMetrics"],
    );
    const merge = result.manifest.stages.find((s) => s.name === "mergeLora");
    assert.equal(merge?.report.modules, 2);
    assert.deepEqual(merge?.report.scaling, [lora_alpha / r]);
    const written = result.files.map((f) => f.path).sort();
    for (
      const f of [
        "pytorch_model.bin",
        "config.json",
        "generation_config.json",
        "optimizer.pt",
        "scheduler.pt",
      ]
    ) {
      assert.ok(written.includes(f), `${f} in ${written.join(", ")}`);
    }
    assert.equal(
      await Deno.readTextFile(join(result.output, "generation_config.json")),
      await Deno.readTextFile(join(run, "base", "generation_config.json")),
      "generation_config.json is copied byte for byte from the base folder",
    );

    // 2. The preset through the CLI: --var strings for r/alpha, safetensors, counter override.
    const st = join(dir, "FINAL-st");
    const cli = await ckpt([
      "run",
      "halos-final-fsdp",
      "--var",
      `run=${run}`,
      "--var",
      `lora_r=${r}`,
      "--var",
      `lora_alpha=${lora_alpha}`,
      "--var",
      "format=safetensors",
      "--var",
      "counter=128",
      "--var",
      `out=${st}`,
      "--backend",
      "cpu",
      "--log",
      "quiet",
    ]);
    assert.equal(cli.code, 0, cli.stderr);

    // 3. The example config, pointed at the same run (it writes ${run}/FINAL: move the preset's away).
    const presetOut = join(dir, "FINAL-preset");
    await Deno.rename(result.output, presetOut);
    const ex2 = await ckpt([
      "run",
      join(REPO_ROOT, "examples", "halos_final_fsdp.jsonc"),
      "--var",
      `run=${run}`,
      "--var",
      `lora_r=${r}`,
      "--var",
      `lora_alpha=${lora_alpha}`,
      "--backend",
      "cpu",
      "--log",
      "quiet",
    ]);
    assert.equal(ex2.code, 0, ex2.stderr);
    for (const out of [presetOut, st, join(run, "FINAL")]) {
      const v = await ckpt(["verify", out, "--hashes-only"]);
      assert.equal(v.code, 0, v.stdout);
    }

    const res = await runPythonJson<Record<string, Record<string, unknown>>>(CHECK, [
      CASE,
      FIX,
      join(run, "state", "scheduler.pt"),
      JSON.stringify({ preset: presetOut, cli: st, example: join(run, "FINAL") }),
    ]);
    const counters: Record<string, number> = { preset: 96, cli: 128, example: 96 };
    const formats: Record<string, string> = { preset: "bin", cli: "safetensors", example: "bin" };
    for (const label of ["preset", "cli", "example"]) {
      assert.deepEqual(res[label], {
        format: formats[label],
        keys: true,
        dtypes: ["torch.bfloat16"],
        not_equal: [], // every element equals the float64 merge rounded to bf16
        changed: [
          "model.layers.0.self_attn.q_proj.weight",
          "model.layers.0.self_attn.v_proj.weight",
        ],
        optim_class: "AdamW",
        optim_equal: true,
        scheduler_equal: true,
        metrics: { "rewards_eval/accuracies": 0.75, "loss/eval": 0.5, counter: counters[label] },
        config_dtype: "bfloat16",
        pad_token: "</s>",
      }, label);
    }
  });
});
