import { parseStageOptions } from "../../../pipelines/stage.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { StateDict, type TensorRef } from "../../../formats/state_dict.ts";
import { writeSafetensors, writeSafetensorsSharded } from "../../../formats/safetensors.ts";
import { saveTorchStateDict } from "../../../formats/torch/save.ts";
import { writeTorchSharded } from "../../../formats/torch/state_dict.ts";
import { type InputKind, inputKinds } from "../../../readers/kinds.ts";
import {
  gatherShards,
  gatherShardsStage,
  stripWrapperNames,
} from "../../../pipelines/stages/gather_shards.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { f32Tensor, fakeContext } from "../_context.ts";

function f32(shape: number[], start: number): TensorRef {
  return f32Tensor(shape, (i) => start + i);
}

function model(prefix = ""): StateDict {
  return new StateDict([
    [`${prefix}model.embed_tokens.weight`, f32([4, 2], 0)],
    [`${prefix}model.layers.0.mlp.weight`, f32([2, 2], 100)],
    [`${prefix}model.norm.weight`, f32([2], 200)],
  ]);
}

async function values(sd: StateDict, name: string): Promise<number[]> {
  const b = (await sd.require(name).read()).slice();
  return [...new Float32Array(b.buffer)];
}

Deno.test("`stripWrapperNames()` removes DDP, FSDP, compile and checkpoint wrappers", () => {
  assert.equal(stripWrapperNames("module._orig_mod.lm_head.weight"), "lm_head.weight");
  assert.equal(
    stripWrapperNames("_fsdp_wrapped_module.model.layers.0._checkpoint_wrapped_module.mlp.weight"),
    "model.layers.0.mlp.weight",
  );
  assert.equal(stripWrapperNames("model.module.weight"), "model.module.weight");
  assert.equal(stripWrapperNames("module.x", { prefixes: [] }), "module.x");
});

Deno.test("`gatherShards()` reads every built-in input kind and finds config.json", async () => {
  await withTempDir(async (dir) => {
    const cfg = JSON.stringify({ model_type: "llama", vocab_size: 4 });
    // single safetensors file (with wrapper prefixes) in a folder with config.json
    await Deno.mkdir(join(dir, "st"));
    await writeSafetensors(
      join(dir, "st", "model.safetensors"),
      model("module._fsdp_wrapped_module."),
    );
    await Deno.writeTextFile(join(dir, "st", "config.json"), cfg);
    // HF shards
    await Deno.mkdir(join(dir, "hf"));
    await writeSafetensorsSharded(join(dir, "hf"), model(), { maxShardSize: 40 });
    // torch file and torch shards
    await Deno.mkdir(join(dir, "pt"));
    await saveTorchStateDict(join(dir, "pt", "weights.pt"), model("_orig_mod."));
    await Deno.mkdir(join(dir, "bins"));
    await writeTorchSharded(join(dir, "bins"), model(), { maxShardSize: 40 });
    const cases: [string, string][] = [
      [join(dir, "st"), "safetensors"],
      [join(dir, "st", "model.safetensors"), "safetensors"],
      [join(dir, "hf"), "hf-shards"],
      [join(dir, "hf", "model.safetensors.index.json"), "hf-shards"],
      [join(dir, "pt", "weights.pt"), "torch"],
      [join(dir, "bins"), "torch-shards"],
    ];
    for (const [path, kind] of cases) {
      const r = await gatherShards(path);
      try {
        assert.equal(r.kind, kind, path);
        assert.deepEqual([...r.stateDict.keys()].sort(), [
          "model.embed_tokens.weight",
          "model.layers.0.mlp.weight",
          "model.norm.weight",
        ]);
        assert.deepEqual(await values(r.stateDict, "model.norm.weight"), [200, 201]);
        if (path.startsWith(join(dir, "st"))) assert.equal(r.modelConfig?.model_type, "llama");
      } finally {
        await r.stateDict.close();
      }
    }
  });
});

Deno.test("`gatherShards()` refuses keys that collide after stripping and unknown inputs", async () => {
  await withTempDir(async (dir) => {
    const sd = new StateDict([
      ["module.a.weight", f32([1], 0)],
      ["a.weight", f32([1], 1)],
    ]);
    await writeSafetensors(join(dir, "x.safetensors"), sd);
    await assert.rejects(
      gatherShards(join(dir, "x.safetensors")),
      (e) => isCkptError(e, "GATHER_DUPLICATE"),
    );
    const ok = await gatherShards(join(dir, "x.safetensors"), { stripPrefixes: false });
    assert.equal(ok.stateDict.size, 2);
    await ok.stateDict.close();
    await Deno.writeTextFile(join(dir, "notes.txt"), "hello");
    await assert.rejects(gatherShards(join(dir, "notes.txt")), (e) => isCkptError(e, "INPUT_KIND"));
    await assert.rejects(
      gatherShards(join(dir, "missing")),
      (e) => isCkptError(e, "INPUT_MISSING"),
    );
    await assert.rejects(
      gatherShards(join(dir, "x.safetensors"), { kind: "nope" }),
      (e) => isCkptError(e, "INPUT_KIND"),
    );
  });
});

Deno.test("`gatherShards()` uses an extra input kind, passed explicitly, before the built-ins", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "ckpt"));
    await Deno.writeTextFile(join(dir, "ckpt", ".test-marker"), "x");
    const testDcp: InputKind = {
      name: "test-dcp",
      detect: (p) => p.files.has(".test-marker"),
      open: () => Promise.resolve(model("module.")),
    };
    assert.equal(inputKinds([testDcp])[0]?.name, "test-dcp");
    const r = await gatherShards(join(dir, "ckpt"), { kinds: [testDcp] });
    assert.equal(r.kind, "test-dcp");
    assert.ok(r.stateDict.has("model.norm.weight"));
    // Not registered anywhere: without the option the folder is not an input ckpt knows.
    await assert.rejects(gatherShards(join(dir, "ckpt")), (e) => isCkptError(e, "INPUT_KIND"));
  });
});

Deno.test("`gatherShards` stage sets the state dict, config and model folder", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "base"));
    await writeSafetensors(join(dir, "base", "model.safetensors"), model());
    await Deno.writeTextFile(join(dir, "base", "config.json"), '{"hidden_size": 2}');
    const ctx = fakeContext(join(dir, "out"), { baseDir: dir });
    await gatherShardsStage.run(ctx, parseStageOptions(gatherShardsStage, { from: "base" }));
    assert.equal(ctx.stateDict?.size, 3);
    assert.equal(ctx.modelConfig?.hidden_size, 2);
    assert.equal(ctx.modelDir, join(dir, "base"));
    assert.equal(ctx.reports[0]?.data.kind, "safetensors");
    await ctx.stateDict?.close();
    assert.equal(gatherShardsStage.options.safeParse({ from: "a", form: "b" }).success, false);
  });
});
