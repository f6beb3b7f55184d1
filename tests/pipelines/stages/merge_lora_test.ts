import { parseStageOptions } from "../../../pipelines/stage.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { CkptError } from "../../../errors.ts";
import { StateDict, type TensorRef } from "../../../formats/state_dict.ts";
import { writeSafetensors } from "../../../formats/safetensors.ts";
import { mergeLoraStage } from "../../../pipelines/stages/merge_lora.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { f32Tensor, fakeContext, listFiles } from "../_context.ts";

const f32 = f32Tensor;

async function floats(ref: TensorRef): Promise<number[]> {
  return [...new Float32Array((await ref.read()).slice().buffer)];
}

async function adapterDir(dir: string, inFeatures: number): Promise<string> {
  const a = join(dir, "adapter");
  await Deno.mkdir(a, { recursive: true });
  await Deno.writeTextFile(
    join(a, "adapter_config.json"),
    JSON.stringify({ peft_type: "LORA", r: 1, lora_alpha: 2, target_modules: ["q"] }),
  );
  await writeSafetensors(
    join(a, "adapter_model.safetensors"),
    new StateDict([
      ["base_model.model.l.q.lora_A.weight", f32([1, inFeatures], () => 1)],
      ["base_model.model.l.q.lora_B.weight", f32([2, 1], (i) => i + 1)],
    ]),
  );
  return a;
}

const base = () =>
  new StateDict([
    ["l.q.weight", f32([2, 2], () => 0)],
    ["norm.weight", f32([2], () => 1)],
  ]);

Deno.test("`mergeLora` stage merges an adapter folder and sets the adapter folder", async () => {
  await withTempDir(async (dir) => {
    await adapterDir(dir, 2);
    const ctx = fakeContext(join(dir, "out"), { baseDir: dir, stateDict: base() });
    await mergeLoraStage.run(
      ctx,
      parseStageOptions(mergeLoraStage, { adapter: "adapter", backend: "cpu" }),
    );
    // W + (alpha/r)·B·A = 0 + 2·[[1],[2]]·[[1, 1]]
    assert.deepEqual(await floats(ctx.stateDict!.require("l.q.weight")), [2, 2, 4, 4]);
    assert.deepEqual(await floats(ctx.stateDict!.require("norm.weight")), [1, 1]);
    assert.equal(ctx.adapterDir, join(dir, "adapter"));
    assert.equal(ctx.reports[0]?.data.modules, 1);
    assert.equal(ctx.reports[0]?.data.backend, "cpu");
    await ctx.stateDict?.close();
  });
});

Deno.test("`mergeLora` stage merges a PEFT-wrapped state dict with r and alpha, and asks for them", async () => {
  const wrapped = () =>
    new StateDict([
      ["base_model.model.l.q.base_layer.weight", f32([2, 2], () => 1)],
      ["base_model.model.l.q.lora_A.default.weight", f32([1, 2], () => 1)],
      ["base_model.model.l.q.lora_B.default.weight", f32([2, 1], () => 1)],
    ]);
  const missing = fakeContext("/tmp", { stateDict: wrapped() });
  await assert.rejects(
    mergeLoraStage.run(missing, parseStageOptions(mergeLoraStage, {})),
    (e) => e instanceof CkptError && e.code === "LORA_WRAPPED_OPTIONS",
  );
  const ctx = fakeContext("/tmp", { stateDict: wrapped() });
  await mergeLoraStage.run(
    ctx,
    parseStageOptions(mergeLoraStage, { r: 1, alpha: 4, backend: "cpu" }),
  );
  assert.deepEqual([...ctx.stateDict!.keys()], ["l.q.weight"]);
  assert.deepEqual(await floats(ctx.stateDict!.require("l.q.weight")), [5, 5, 5, 5]);
});

Deno.test("`mergeLora` stage refuses an adapter for another architecture before any output", async () => {
  await withTempDir(async (dir) => {
    await adapterDir(dir, 3); // A is [1, 3] but the base q is [2, 2]
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir, stateDict: base() });
    await assert.rejects(
      mergeLoraStage.run(
        ctx,
        parseStageOptions(mergeLoraStage, { adapter: "adapter", backend: "cpu" }),
      ),
      (e) => e instanceof CkptError && e.code.startsWith("LORA_"),
    );
    assert.deepEqual(await listFiles(out), []);
    await assert.rejects(
      mergeLoraStage.run(
        fakeContext(out),
        parseStageOptions(mergeLoraStage, { adapter: "adapter" }),
      ),
      (e) => e instanceof CkptError && e.code === "STAGE_ORDER",
    );
  });
});
