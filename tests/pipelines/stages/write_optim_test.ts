import { parseStageOptions } from "../../../pipelines/stage.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { StateDict, type TensorRef } from "../../../formats/state_dict.ts";
import { writeSafetensors } from "../../../formats/safetensors.ts";
import { loadTorch } from "../../../formats/torch/load.ts";
import { saveTorch } from "../../../formats/torch/save.ts";
import {
  type PyDict,
  pyDict,
  PyFloat,
  PyTuple,
  tensorOfBytes,
  TorchTensor,
} from "../../../formats/torch/values.ts";
import { createWriteOptimStage, writeOptimStage } from "../../../pipelines/stages/write_optim.ts";
import { gatherShardsStage } from "../../../pipelines/stages/gather_shards.ts";
import { mergeLoraStage } from "../../../pipelines/stages/merge_lora.ts";
import { REPO_ROOT } from "../../_helpers/peer.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { f32Tensor, fakeContext, listFiles } from "../_context.ts";

function f32(shape: number[], start = 0): TensorRef {
  return f32Tensor(shape, (i) => start + i);
}

function adamState(keys: (number | string)[], shapes: number[][]): PyDict {
  const state = pyDict([]);
  keys.forEach((k, i) => {
    state.set(
      k,
      pyDict([
        ["step", tensorOfBytes("F32", [], new Uint8Array(new Float32Array([2]).buffer))],
        [
          "exp_avg",
          tensorOfBytes(
            "F32",
            shapes[i]!,
            new Uint8Array(4 * shapes[i]!.reduce((a, b) => a * b, 1)),
          ),
        ],
      ]),
    );
  });
  return pyDict([
    ["state", state],
    ["param_groups", [
      pyDict([
        ["lr", 0.0002],
        ["betas", new PyTuple([0.9, 0.999])],
        ["eps", 1e-8],
        ["weight_decay", 0.01],
        [
          "amsgrad",
          false,
        ],
        ["initial_lr", 0.001],
        ["params", keys],
      ]),
    ]],
  ]);
}

const model = () =>
  new StateDict([
    ["model.layers.0.q_proj.weight", f32([4, 3])],
    ["model.norm.weight", f32([3])],
  ]);

Deno.test("`writeOptim` writes HALOs' optimizer.pt and scheduler.pt from torch files, types kept", async () => {
  await withTempDir(async (dir) => {
    await saveTorch(join(dir, "opt.pt"), adamState([0, 1], [[4, 3], [3]]));
    const sched = pyDict([["base_lrs", [0.001]], ["last_epoch", 2], ["_step_count", 3], [
      "_last_lr",
      [0.0002],
    ], [
      "lr_lambdas",
      [null],
    ]]);
    await saveTorch(join(dir, "sched.pt"), sched);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir, stateDict: model() });
    await writeOptimStage.run(
      ctx,
      parseStageOptions(writeOptimStage, {
        optimizer: "opt.pt",
        scheduler: "sched.pt",
        params: "model",
      }),
    );
    assert.deepEqual(await listFiles(out), ["optimizer.pt", "scheduler.pt"]);
    await using opt = await loadTorch(join(out, "optimizer.pt"));
    const top = opt.dict();
    assert.equal(top.get("class"), "AdamW");
    const sd = top.get("state_dict") as PyDict;
    const g = (sd.get("param_groups") as PyDict[])[0]!;
    assert.ok(g.get("betas") instanceof PyTuple);
    assert.deepEqual(g.get("params"), [0, 1]);
    const s0 = (sd.get("state") as PyDict).get(0) as PyDict;
    assert.ok(s0.get("exp_avg") instanceof TorchTensor);
    await using sch = await loadTorch(join(out, "scheduler.pt"));
    assert.equal(sch.dict().get("last_epoch"), 2);
  });
});

Deno.test("`writeOptim` reads a JSON + safetensors description", async () => {
  await withTempDir(async (dir) => {
    await writeSafetensors(
      join(dir, "optim.safetensors"),
      new StateDict([["state.0.exp_avg", f32([3], 1)]]),
    );
    await Deno.writeTextFile(
      join(dir, "optim.json"),
      JSON.stringify({
        class: "AdamW",
        state_dict: {
          state: { "0": { step: 3, exp_avg: { __tensor__: "state.0.exp_avg" } } },
          param_groups: [{
            lr: 0.001,
            betas: { __tuple__: [0.9, 0.999] },
            eps: { __float__: 1 },
            params: [0],
          }],
        },
      }),
    );
    await Deno.writeTextFile(join(dir, "sched.json"), '{"last_epoch": 3, "_last_lr": [1.0]}');
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir });
    await writeOptimStage.run(
      ctx,
      parseStageOptions(writeOptimStage, { optimizer: "optim.json", scheduler: "sched.json" }),
    );
    await using opt = await loadTorch(join(out, "optimizer.pt"));
    const sd = opt.dict().get("state_dict") as PyDict;
    const s0 = (sd.get("state") as PyDict).get(0) as PyDict;
    const step = s0.get("step") as TorchTensor;
    assert.deepEqual([step.dtype, step.shape.length], ["F32", 0]);
    const ea = s0.get("exp_avg") as TorchTensor;
    assert.deepEqual([...new Float32Array((await ea.read()).slice().buffer)], [1, 2, 3]);
    const g = (sd.get("param_groups") as PyDict[])[0]!;
    assert.ok(g.get("eps") instanceof PyFloat);
    await using sch = await loadTorch(join(out, "scheduler.pt"));
    assert.ok((sch.dict().get("_last_lr") as unknown[])[0] instanceof PyFloat);
  });
});

Deno.test("`writeOptim` refuses optimizer state for other parameters before writing", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    await Deno.mkdir(out);
    // int-keyed, wrong shape for parameter 0
    await saveTorch(
      join(dir, "bad.pt"),
      pyDict([["state_dict", adamState([0, 1], [[5, 3], [3]])], ["class", "AdamW"]]),
    );
    await assert.rejects(
      writeOptimStage.run(
        fakeContext(out, { baseDir: dir, stateDict: model() }),
        parseStageOptions(writeOptimStage, { optimizer: "bad.pt", params: "model" }),
      ),
      (e) => isCkptError(e, "OPTIM_MISMATCH"),
    );
    // name-keyed for a parameter the model lacks; PEFT LoRA names checked against the base weight
    await saveTorch(
      join(dir, "names.pt"),
      adamState([
        "base_model.model.model.layers.0.q_proj.lora_A.default.weight",
        "model.other.weight",
      ], [[2, 3], [3]]),
    );
    await assert.rejects(
      writeOptimStage.run(
        fakeContext(out, { baseDir: dir, stateDict: model() }),
        parseStageOptions(writeOptimStage, { optimizer: "names.pt" }),
      ),
      (e) => isCkptError(e, "OPTIM_MISMATCH"),
    );
    await saveTorch(
      join(dir, "lora.pt"),
      adamState([
        "base_model.model.model.layers.0.q_proj.lora_A.default.weight",
        "base_model.model.model.layers.0.q_proj.lora_B.default.weight",
      ], [[2, 3], [4, 2]]),
    );
    const ok = fakeContext(out, { baseDir: dir, stateDict: model() });
    await writeOptimStage.run(
      ok,
      parseStageOptions(writeOptimStage, { optimizer: "lora.pt", keys: "int" }),
    );
    await using opt = await loadTorch(join(out, "optimizer.pt"));
    const sd = opt.dict().get("state_dict") as PyDict;
    assert.deepEqual([...(sd.get("state") as PyDict).keys()], [0, 1]);
    await Deno.remove(join(out, "optimizer.pt"));
    // a state key in no param group
    const orphan = adamState([0], [[3]]);
    (orphan.get("state") as PyDict).set(7, pyDict([]));
    await saveTorch(join(dir, "orphan.pt"), orphan);
    await assert.rejects(
      writeOptimStage.run(
        fakeContext(out, { baseDir: dir }),
        parseStageOptions(writeOptimStage, { optimizer: "orphan.pt" }),
      ),
      (e) => isCkptError(e, "OPTIM_MISMATCH"),
    );
    assert.deepEqual(await listFiles(out), []);
  });
});

Deno.test("`writeOptim` asks extra optimizer sources first and checks with their parameter names", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "folder"));
    const stage = createWriteOptimStage({
      optimizerSources: [{
        name: "test-folder",
        detect: (p) => p.isDirectory,
        load: () =>
          Promise.resolve({
            value: adamState([0, 1], [[3], [4, 3]]),
            paramNames: ["model.norm.weight", "model.layers.0.q_proj.weight"],
            close: () => Promise.resolve(),
          }),
      }],
    });
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir, stateDict: model() });
    await stage.run(ctx, parseStageOptions(stage, { optimizer: "folder" }));
    assert.deepEqual(await listFiles(out), ["optimizer.pt"]);
    const swapped = createWriteOptimStage({
      optimizerSources: [{
        name: "test-folder",
        detect: (p) => p.isDirectory,
        load: () =>
          Promise.resolve({
            value: adamState([0, 1], [[3], [4, 3]]),
            paramNames: ["model.layers.0.q_proj.weight", "model.norm.weight"],
            close: () => Promise.resolve(),
          }),
      }],
    });
    await assert.rejects(
      swapped.run(
        fakeContext(join(dir, "out2"), { baseDir: dir, stateDict: model() }),
        parseStageOptions(swapped, { optimizer: "folder" }),
      ),
      (e) => isCkptError(e, "OPTIM_MISMATCH"),
    );
    // The built-in stage knows no such source: a folder is no torch file.
    await assert.rejects(
      writeOptimStage.run(
        fakeContext(join(dir, "out3"), { baseDir: dir, stateDict: model() }),
        parseStageOptions(writeOptimStage, { optimizer: "folder" }),
      ),
    );
  });
});

Deno.test("`writeOptim` rebuilds optimizer.pt from a DCP folder of a LoRA run and checks it against the merged model", async () => {
  const fixtures = join(REPO_ROOT, "tests", "fixtures", "dcp");
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: fixtures });
    await gatherShardsStage.run(
      ctx,
      parseStageOptions(gatherShardsStage, { from: "lora_w2/model" }),
    );
    await mergeLoraStage.run(
      ctx,
      parseStageOptions(mergeLoraStage, { r: 2, alpha: 4, backend: "cpu" }),
    );
    await writeOptimStage.run(
      ctx,
      parseStageOptions(writeOptimStage, { optimizer: "lora_w2/optim" }),
    );
    await using opt = await loadTorch(join(out, "optimizer.pt"));
    const sd = opt.dict().get("state_dict") as PyDict;
    const keys = [...(sd.get("state") as PyDict).keys()];
    assert.ok(keys.length > 0 && keys.every((k, i) => k === i), JSON.stringify(keys));
    assert.equal(opt.dict().get("class"), "AdamW");
    // an optimizer of another model (the plain f32 case) does not fit the LoRA model
    await assert.rejects(
      writeOptimStage.run(
        fakeContext(join(dir, "out2"), { baseDir: fixtures, stateDict: ctx.stateDict! }),
        parseStageOptions(writeOptimStage, { optimizer: "f32_w2/optim" }),
      ),
      (e) => isCkptError(e, "OPTIM_MISMATCH"),
    );
    await ctx.stateDict?.close();
  });
});
