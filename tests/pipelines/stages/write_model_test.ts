import { parseStageOptions } from "../../../pipelines/stage.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { StateDict, tensorFromBytes, type TensorRef } from "../../../formats/state_dict.ts";
import { openHfShards, openSafetensors, writeSafetensors } from "../../../formats/safetensors.ts";
import { openTorchStateDict } from "../../../formats/torch/state_dict.ts";
import { writeModelStage } from "../../../pipelines/stages/write_model.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { f32Tensor, fakeContext, listFiles } from "../_context.ts";

function f32(shape: number[], start: number): TensorRef {
  return f32Tensor(shape, (i) => start + i * 0.5);
}

const CONFIG =
  '{\n  "architectures": ["LlamaForCausalLM"],\n  "hidden_size": 2,\n  "rope_theta": 10000.0,\n' +
  '  "tie_word_embeddings": true,\n  "torch_dtype": "float32",\n  "vocab_size": 4\n}\n';

async function baseDir(dir: string): Promise<string> {
  const base = join(dir, "base");
  await Deno.mkdir(base, { recursive: true });
  await Deno.writeTextFile(join(base, "config.json"), CONFIG);
  await Deno.writeTextFile(join(base, "generation_config.json"), '{"eos_token_id": 3}');
  return base;
}

function tiedModel(lmDiffers: boolean): StateDict {
  const emb = f32([4, 2], 0);
  return new StateDict([
    ["model.embed_tokens.weight", emb],
    ["model.layers.0.mlp.weight", f32([2, 2], 10)],
    ["model.norm.weight", f32([2], 20)],
    ["lm_head.weight", lmDiffers ? f32([4, 2], 1) : f32([4, 2], 0)],
    ["model.step", tensorFromBytes("I64", [1], new Uint8Array(8).fill(1))],
  ]);
}

Deno.test("`writeModel` drops an equal tied lm_head, casts floats and updates config.json", async () => {
  await withTempDir(async (dir) => {
    const base = await baseDir(dir);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, {
      stateDict: tiedModel(false),
      modelDir: base,
      modelConfig: JSON.parse(CONFIG),
    });
    await writeModelStage.run(ctx, parseStageOptions(writeModelStage, { dtype: "bfloat16" }));
    assert.deepEqual(await listFiles(out), [
      "config.json",
      "generation_config.json",
      "model.safetensors",
    ]);
    await using sd = await openSafetensors(join(out, "model.safetensors"));
    assert.deepEqual([...sd.keys()].sort(), [
      "model.embed_tokens.weight",
      "model.layers.0.mlp.weight",
      "model.norm.weight",
      "model.step",
    ]);
    assert.equal(sd.require("model.norm.weight").dtype, "BF16");
    assert.equal(sd.require("model.step").dtype, "I64");
    const norm = new Uint16Array((await sd.require("model.norm.weight").read()).slice().buffer);
    assert.deepEqual([...norm], [0x41a0, 0x41a4]); // 20, 20.5
    const cfg = await Deno.readTextFile(join(out, "config.json"));
    assert.match(cfg, /"torch_dtype": "bfloat16"/);
    assert.match(cfg, /"dtype": "bfloat16"/);
    assert.match(cfg, /"rope_theta": 10000\.0/); // float kept a float
    assert.equal(JSON.parse(cfg).tie_word_embeddings, true);
    assert.equal(
      await Deno.readTextFile(join(out, "generation_config.json")),
      '{"eos_token_id": 3}',
    );
    assert.equal(ctx.reports[0]?.data.tied, "dropped-lm-head");
  });
});

Deno.test("`writeModel` keeps a changed lm_head and unties the config; shards when asked", async () => {
  await withTempDir(async (dir) => {
    const base = await baseDir(dir);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, {
      stateDict: tiedModel(true),
      modelDir: base,
      modelConfig: JSON.parse(CONFIG),
    });
    await writeModelStage.run(ctx, parseStageOptions(writeModelStage, { maxShardSize: "40B" }));
    const files = await listFiles(out);
    assert.ok(files.includes("model.safetensors.index.json"), files.join(","));
    await using sd = await openHfShards(out);
    assert.ok(sd.has("lm_head.weight"));
    const index = JSON.parse(await Deno.readTextFile(join(out, "model.safetensors.index.json")));
    assert.equal(index.metadata.total_parameters, 8 + 4 + 2 + 8); // floats only
    assert.equal(index.metadata.total_size, 4 * (8 + 4 + 2 + 8) + 8);
    const cfg = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
    assert.equal(cfg.tie_word_embeddings, false);
    assert.equal(cfg.torch_dtype, "float32");
    assert.equal(ctx.modelConfig?.tie_word_embeddings, false);
  });
});

Deno.test("`writeModel` writes pytorch_model.bin keeping tied keys, and fixes vocab_size", async () => {
  await withTempDir(async (dir) => {
    const base = await baseDir(dir);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const cfg = { ...JSON.parse(CONFIG), vocab_size: 8 };
    const ctx = fakeContext(out, { stateDict: tiedModel(false), modelDir: base, modelConfig: cfg });
    await writeModelStage.run(ctx, parseStageOptions(writeModelStage, { format: "bin" }));
    assert.deepEqual(await listFiles(out), [
      "config.json",
      "generation_config.json",
      "pytorch_model.bin",
    ]);
    await using sd = await openTorchStateDict(join(out, "pytorch_model.bin"));
    assert.ok(sd.has("lm_head.weight") && sd.has("model.embed_tokens.weight"));
    assert.equal(JSON.parse(await Deno.readTextFile(join(out, "config.json"))).vocab_size, 4);
  });
});

Deno.test("`writeModel` refuses adapter files in a merged folder and a dry run writes nothing", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const dry = fakeContext(out, { stateDict: tiedModel(false), dryRun: true });
    await writeModelStage.run(dry, parseStageOptions(writeModelStage, {}));
    assert.deepEqual(await listFiles(out), []);
    const files = dry.reports[0]?.data.files as { path: string; bytes: number }[];
    assert.equal(files[0]?.path, "model.safetensors");
    await Deno.writeTextFile(join(out, "adapter_config.json"), "{}");
    await assert.rejects(
      writeModelStage.run(
        fakeContext(out, { stateDict: tiedModel(false) }),
        parseStageOptions(writeModelStage, {}),
      ),
      (e) => isCkptError(e, "ADAPTER_IN_MERGED"),
    );
    await assert.rejects(
      writeModelStage.run(fakeContext(out), parseStageOptions(writeModelStage, {})),
      (e) => isCkptError(e, "STAGE_ORDER"),
    );
    const wrapped = new StateDict([
      ["base_model.model.l.q.base_layer.weight", f32([2, 2], 0)],
      ["base_model.model.l.q.lora_A.default.weight", f32([1, 2], 0)],
      ["base_model.model.l.q.lora_B.default.weight", f32([2, 1], 0)],
    ]);
    await assert.rejects(
      writeModelStage.run(
        fakeContext(join(dir, "w"), { stateDict: wrapped }),
        parseStageOptions(writeModelStage, {}),
      ),
      (e) => isCkptError(e, "MODEL_WRAPPED"),
    );
  });
});

Deno.test("`writeModel` what=adapter writes the adapter alone, from a folder or wrapped weights", async () => {
  await withTempDir(async (dir) => {
    const adapter = join(dir, "adapter");
    await Deno.mkdir(adapter);
    const cfgText = JSON.stringify(
      { peft_type: "LORA", r: 1, lora_alpha: 2, target_modules: ["mlp"] },
      null,
      2,
    );
    await Deno.writeTextFile(join(adapter, "adapter_config.json"), cfgText);
    await writeSafetensors(
      join(adapter, "adapter_model.safetensors"),
      new StateDict([
        ["base_model.model.model.layers.0.mlp.lora_A.weight", f32([1, 2], 0)],
        ["base_model.model.model.layers.0.mlp.lora_B.weight", f32([2, 1], 0)],
      ]),
    );
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir });
    await writeModelStage.run(
      ctx,
      parseStageOptions(writeModelStage, { what: "adapter", adapter: "adapter" }),
    );
    assert.deepEqual(await listFiles(out), ["adapter_config.json", "adapter_model.safetensors"]);
    assert.equal(await Deno.readTextFile(join(out, "adapter_config.json")), cfgText);

    const out2 = join(dir, "out2");
    await Deno.mkdir(out2);
    const wrapped = new StateDict([
      ["base_model.model.model.layers.0.mlp.base_layer.weight", f32([2, 2], 0)],
      ["base_model.model.model.layers.0.mlp.lora_A.default.weight", f32([1, 2], 0)],
      ["base_model.model.model.layers.0.mlp.lora_B.default.weight", f32([2, 1], 0)],
    ]);
    const ctx2 = fakeContext(out2, { stateDict: wrapped });
    await writeModelStage.run(
      ctx2,
      parseStageOptions(writeModelStage, { what: "adapter", r: 1, alpha: 2 }),
    );
    await using sd = await openSafetensors(join(out2, "adapter_model.safetensors"));
    assert.deepEqual([...sd.keys()].sort(), [
      "base_model.model.model.layers.0.mlp.lora_A.weight",
      "base_model.model.model.layers.0.mlp.lora_B.weight",
    ]);
    const cfg = JSON.parse(await Deno.readTextFile(join(out2, "adapter_config.json")));
    assert.equal(cfg.lora_alpha, 2);
    assert.deepEqual(cfg.target_modules, ["mlp"]);
  });
});

Deno.test("`writeModel` what=adapter refuses an adapter for another architecture", async () => {
  await withTempDir(async (dir) => {
    const adapter = join(dir, "adapter");
    await Deno.mkdir(adapter);
    await Deno.writeTextFile(
      join(adapter, "adapter_config.json"),
      JSON.stringify({ peft_type: "LORA", r: 1, lora_alpha: 2, target_modules: ["mlp"] }),
    );
    await writeSafetensors(
      join(adapter, "adapter_model.safetensors"),
      new StateDict([
        ["base_model.model.model.layers.0.mlp.lora_A.weight", f32([1, 5], 0)],
        ["base_model.model.model.layers.0.mlp.lora_B.weight", f32([2, 1], 0)],
      ]),
    );
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir, stateDict: tiedModel(false) });
    await assert.rejects(
      writeModelStage.run(
        ctx,
        parseStageOptions(writeModelStage, { what: "adapter", adapter: "adapter" }),
      ),
      (e) => isCkptError(e, "ADAPTER_MISMATCH"),
    );
    assert.deepEqual(await listFiles(out), []);
  });
});

Deno.test("`writeModel` refuses, before any stage runs, a generation_config.json transformers cannot read, and never takes an unreadable config for a missing one", async () => {
  await withTempDir(async (dir) => {
    const base = await baseDir(dir);
    const gen = join(base, "generation_config.json");
    const preflight = () =>
      writeModelStage.preflight!(
        fakeContext(join(dir, "out"), { modelDir: base }),
        parseStageOptions(writeModelStage, {}),
      );
    await preflight(); // a JSON object: copied as it is
    for (
      const [text, code] of [
        ['{"eos_token_id": 3', "JSON_PARSE"],
        ["", "JSON_PARSE"],
        ["[1, 2]", "CONFIG_JSON"],
      ] as const
    ) {
      await Deno.writeTextFile(gen, text);
      await assert.rejects(preflight, (e) => isCkptError(e, code) && e.file === gen, text);
    }
    // a folder where the file should be: not "absent", an error naming it
    await Deno.remove(gen);
    await Deno.mkdir(gen);
    await assert.rejects(preflight, (e) => isCkptError(e, "CONFIG_JSON") && e.file === gen);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    await Deno.remove(gen);
    await Deno.remove(join(base, "config.json"));
    await Deno.mkdir(join(base, "config.json"));
    const ctx = fakeContext(out, { stateDict: tiedModel(false), modelDir: base });
    await assert.rejects(
      () => writeModelStage.run(ctx, parseStageOptions(writeModelStage, {})),
      (e) => isCkptError(e, "CONFIG_JSON") && e.file === join(base, "config.json"),
    );
  });
});
