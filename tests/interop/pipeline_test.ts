/**
 * End to end, per preset: a demo training run goes through `ckpt run <preset>` (a real child
 * process), and the output is handed to real torch 2.6 and safetensors through the peer:
 * `torch.load(weights_only=True)` of optimizer.pt, scheduler.pt, v_head.pt and the .bin weights
 * equals the inputs, merged weights match an independent float64 reference, the tokenizer files
 * are the inputs byte for byte; `ckpt verify` passes and fails on a flipped byte; a run killed
 * midway leaves no finished-looking output. Fails (never skips) when the peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type DemoRun, makeDemoRun } from "../../examples/_demo_run.ts";
import { MANIFEST_NAME } from "../../pipelines/manifest.ts";
import { verifyCheckpoint } from "../../pipelines/verify.ts";
import { runPythonJson } from "../_helpers/peer.ts";
import { ckpt, spawnCkpt } from "../cli/_cli.ts";

/** Python checks of output folders (triples out, run, kind); prints a JSON list of reports. */
const CHECK = String.raw`
import json, sys, os, hashlib, torch
from collections import OrderedDict
from safetensors.torch import load_file
reports = []
args = sys.argv[1:]

def same(a, b, path="$"):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
        return
    assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{path}: keys"
        for k in a: same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)): same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"

def sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()

def check(out, run, kind):
  rep = {"files": sorted(os.listdir(out))}
  base = load_file(f"{run}/base/model.safetensors")
  adapter = load_file(f"{run}/adapter/adapter_model.safetensors")
  acfg = json.load(open(f"{run}/adapter/adapter_config.json"))
  scale = acfg["lora_alpha"] / acfg["r"]

  def reference():
      ref = {}
      for k, w in base.items():
          m = k[: -len(".weight")]
          a = adapter.get(f"base_model.model.{m}.lora_A.weight")
          b = adapter.get(f"base_model.model.{m}.lora_B.weight")
          if a is None:
              ref[k] = (w, False)
          else:
              ref[k] = (w.double() + scale * (b.double() @ a.double()), True)
      return ref

  if kind in ("merged-bin", "merged-safetensors"):
      if kind == "merged-bin":
          sd = torch.load(f"{out}/pytorch_model.bin", weights_only=True, map_location="cpu")
      else:
          sd = load_file(f"{out}/model.safetensors")
      ref = reference()
      assert set(ref) <= set(sd), sorted(set(ref) - set(sd))
      worst, exact, total, merged = 0.0, 0, 0, 0
      for k, (r, was_merged) in ref.items():
          o = sd[k]
          assert o.dtype == torch.bfloat16 and o.shape == r.shape, k
          if not was_merged:
              assert torch.equal(o, r), f"{k} changed without an adapter"
              continue
          merged += 1
          err = (o.double() - r).abs()
          tol = r.abs() * 2 ** -8 + 1e-12
          assert bool((err <= tol).all()), f"{k}: max err/tol {float((err / tol).max())}"
          assert not torch.equal(o, base[k]), f"{k}: not merged"
          worst = max(worst, float((err / tol).max()))
          exact += int((o == r.to(torch.bfloat16)).sum()); total += o.numel()
      rep["merged"] = merged
      rep["worst"] = worst
      rep["exactFraction"] = exact / total
      cfg = json.load(open(f"{out}/config.json"))
      rep["torch_dtype"] = cfg.get("torch_dtype")
      assert cfg["vocab_size"] == json.load(open(f"{run}/base/config.json"))["vocab_size"]
      assert sha(f"{out}/generation_config.json") == sha(f"{run}/base/generation_config.json")

  if kind == "adapter":
      got = load_file(f"{out}/adapter_model.safetensors")
      assert set(got) == set(adapter), "adapter keys"
      for k in adapter: assert torch.equal(got[k], adapter[k]), k
      rep["adapterConfig"] = json.load(open(f"{out}/adapter_config.json"))["r"]

  if os.path.exists(f"{out}/optimizer.pt"):
      got = torch.load(f"{out}/optimizer.pt", weights_only=True)
      want = torch.load(f"{run}/state/optimizer.pt", weights_only=True)
      same(got, want)
      assert got["class"] == "AdamW"
      same(torch.load(f"{out}/scheduler.pt", weights_only=True),
           torch.load(f"{run}/state/scheduler.pt", weights_only=True))
      rep["optimizerStates"] = len(got["state_dict"]["state"])

  if os.path.exists(f"{out}/metrics.json"):
      m = json.load(open(f"{out}/metrics.json"))
      want = json.load(open(f"{run}/eval.json"))
      rep["counter"] = m["counter"]
      for k, v in want.items():
          if k != "counter": assert m[k] == v, k

  if os.path.exists(f"{out}/v_head.pt"):
      vh = torch.load(f"{out}/v_head.pt", weights_only=True)
      want = load_file(f"{run}/state/v_head.safetensors")
      assert isinstance(vh, OrderedDict), type(vh)
      assert set(vh) == set(want)
      for k in want: assert torch.equal(vh[k], want[k]), k
      st = load_file(f"{out}/v_head.safetensors")
      for k in want: assert torch.equal(st[k], want[k]), k
      rep["vHead"] = sorted(vh)

  if os.path.exists(f"{out}/tokenizer.json"):
      rep["tokenizerSame"] = sha(f"{out}/tokenizer.json") == sha(f"{run}/base/tokenizer.json")
      json.load(open(f"{out}/tokenizer_config.json"))
  return rep

for i in range(0, len(args), 3):
    reports.append(check(args[i], args[i + 1], args[i + 2]))
print(json.dumps(reports))
`;

interface Report {
  files: string[];
  merged?: number;
  worst?: number;
  exactFraction?: number;
  torch_dtype?: string;
  optimizerStates?: number;
  counter?: number;
  vHead?: string[];
  tokenizerSame?: boolean;
  adapterConfig?: number;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function flipAndVerify(out: string, file: string, run: DemoRun): Promise<void> {
  const ok = await ckpt(["verify", out, "--base", run.base, "--adapter", run.adapter]);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  const path = join(out, file);
  const bytes = await Deno.readFile(path);
  const at = Math.floor(bytes.length * 0.73);
  bytes[at]! ^= 0x04;
  await Deno.writeFile(path, bytes);
  const bad = await verifyCheckpoint(out);
  assert.equal(bad.ok, false);
  const failed = bad.checks.filter((c) => !c.ok);
  assert.ok(failed.some((c) => c.kind === "hash" && c.file === file), JSON.stringify(failed));
  // Loading may catch the flip too (zip CRCs); nothing else may fail.
  assert.ok(failed.every((c) => c.file === file), JSON.stringify(failed));
  bytes[at]! ^= 0x04;
  await Deno.writeFile(path, bytes);
}

async function staging(dir: string, name: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name.startsWith(`.${name}.`)) out.push(e.name);
  return out;
}

Deno.test("presets end to end, checked by real torch 2.6 and safetensors", async (t) => {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "ckpt-e2e-" });
  try {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    const outs = {
      halos: join(dir, "halos-final"),
      ppo: join(dir, "ppo-final"),
      step: join(dir, "step-64000"),
      merged: join(dir, "merged"),
    };
    const presetArgs = (preset: string, out: string) => [
      "run",
      preset,
      "--var",
      `run=${run.dir}`,
      "--var",
      `out=${out}`,
      "--log",
      "json",
    ];

    await t.step("every preset runs through the CLI", async () => {
      for (
        const [preset, out] of [
          ["halos-final", outs.halos],
          ["ppo-final", outs.ppo],
          ["halos-intermediate", outs.step],
        ] as const
      ) {
        const r = await ckpt(presetArgs(preset, out));
        assert.equal(r.code, 0, `${preset}: ${r.stderr}`);
      }
      const m = await ckpt([
        "merge",
        "--base",
        run.base,
        "--adapter",
        run.adapter,
        "--out",
        outs.merged,
        "--dtype",
        "bfloat16",
        "--log",
        "quiet",
      ]);
      assert.equal(m.code, 0, m.stderr);
    });

    const [halos, ppo, step, merged] = await runPythonJson<Report[]>(CHECK, [
      outs.halos,
      run.dir,
      "merged-bin",
      outs.ppo,
      run.dir,
      "merged-safetensors",
      outs.step,
      run.dir,
      "adapter",
      outs.merged,
      run.dir,
      "merged-safetensors",
    ]);

    await t.step("halos-final: pytorch_model.bin equals a float64 merge; state loads equal", () => {
      const rep = halos!;
      assert.deepEqual(rep.files, [
        MANIFEST_NAME,
        "config.json",
        "generation_config.json",
        "metrics.json",
        "optimizer.pt",
        "pytorch_model.bin",
        "scheduler.pt",
        "tokenizer.json",
        "tokenizer_config.json",
      ]);
      assert.equal(rep.merged, 7 * run.shape.layers);
      assert.ok(rep.exactFraction! > 0.99, `bf16 equal to rounded float64: ${rep.exactFraction}`);
      assert.equal(rep.torch_dtype, "bfloat16");
      assert.equal(rep.optimizerStates, run.loraParams.length);
      assert.equal(rep.counter, 64000);
      assert.equal(rep.tokenizerSame, true);
    });

    await t.step("ppo-final: model.safetensors merged, v_head.pt equals the input head", () => {
      const rep = ppo!;
      assert.ok(rep.files.includes("model.safetensors") && rep.files.includes("v_head.pt"));
      assert.ok(!rep.files.some((f) => f.startsWith("adapter_")), "no adapter files when merged");
      assert.deepEqual(rep.vHead, ["summary.bias", "summary.weight"]);
      assert.equal(rep.merged, 7 * run.shape.layers);
      assert.ok(rep.exactFraction! > 0.99);
      assert.equal(rep.optimizerStates, run.loraParams.length);
    });

    await t.step("halos-intermediate: the adapter alone, equal to the input", () => {
      const rep = step!;
      assert.ok(rep.files.includes("adapter_model.safetensors"));
      assert.ok(!rep.files.some((f) => f.startsWith("model") || f.startsWith("pytorch_model")));
      assert.equal(rep.adapterConfig, run.shape.rank);
      assert.equal(rep.optimizerStates, run.loraParams.length);
    });

    await t.step(
      "plain-merge (ckpt merge): weights, config and tokenizer, no training state",
      () => {
        const rep = merged!;
        assert.ok(!rep.files.includes("optimizer.pt"));
        assert.equal(rep.merged, 7 * run.shape.layers);
        assert.equal(rep.tokenizerSame, true);
      },
    );

    await t.step("ckpt verify passes each output and fails on a flipped byte", async () => {
      await flipAndVerify(outs.halos, "pytorch_model.bin", run);
      await flipAndVerify(outs.ppo, "v_head.pt", run);
      await flipAndVerify(outs.merged, "model.safetensors", run);
      const v = await ckpt(["verify", outs.step]);
      assert.equal(v.code, 0, v.stdout);
    });

    await t.step("a run killed midway leaves no finished-looking output", async () => {
      const big = await makeDemoRun(join(dir, "big"), { size: "small" });
      const out = join(dir, "killed");
      const child = spawnCkpt(
        [...presetArgs("ppo-final", out), "--backend", "cpu"].map((a) =>
          a.startsWith("run=") ? `run=${big.dir}` : a
        ),
      );
      const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
      let seen = "";
      while (!/"type":"progress","stage":"writeModel"/.test(seen)) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      child.kill("SIGKILL");
      await child.status;
      await reader.cancel();
      await child.stdout.cancel();
      assert.equal(await exists(out), false, "no output folder");
      for (const l of await staging(dir, "killed")) {
        assert.equal(await exists(join(dir, l, MANIFEST_NAME)), false, "staging has no manifest");
      }
      // The next run succeeds and clears what the killed one left.
      const again = await ckpt(
        presetArgs("ppo-final", out).map((a) => a.startsWith("run=") ? `run=${big.dir}` : a),
      );
      assert.equal(again.code, 0, again.stderr);
      assert.deepEqual(await staging(dir, "killed"), []);
      assert.equal((await ckpt(["verify", out])).code, 0);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
