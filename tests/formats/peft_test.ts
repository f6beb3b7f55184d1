import assert from "node:assert/strict";
import { join } from "node:path";
import { type ErrorCode, isCkptError } from "../../errors.ts";
import {
  classifyAdapterKey,
  isWrappedStateDict,
  loadAdapter,
  readLoraConfig,
  splitWrappedStateDict,
} from "../../formats/peft.ts";
import {
  getPatternKey,
  matchesTargetModule,
  parseLoraConfig,
  resolveModuleScaling,
} from "../../formats/peft_config.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { LORA_FIXTURES } from "../merge/_lora_fixtures.ts";

Deno.test("`parseLoraConfig()` fills PEFT's defaults", () => {
  const c = parseLoraConfig({ peft_type: "LORA" });
  assert.deepEqual(
    [c.r, c.lora_alpha, c.use_rslora, c.fan_in_fan_out, c.bias, c.lora_bias, c.use_dora],
    [8, 8, false, false, "none", false, false],
  );
  assert.deepEqual(c.rank_pattern, {});
  assert.equal(c.trainable_token_indices, null);
});

Deno.test("`parseLoraConfig()` keeps unknown keys and accepts PEFT's saved defaults", () => {
  const c = parseLoraConfig({
    peft_type: "LORA",
    loftq_config: {},
    layer_replication: null,
    megatron_core: "megatron.core",
    eva_config: null,
    use_qalora: false,
    target_modules: "model.*(q|v)_proj",
    init_lora_weights: "gaussian",
  });
  assert.equal(c.megatron_core, "megatron.core");
  assert.equal(c.target_modules, "model.*(q|v)_proj");
});

Deno.test("`parseLoraConfig()` refuses what a weight merge cannot reproduce", async (t) => {
  const cases: [string, Record<string, unknown>, ErrorCode][] = [
    ["AdaLoRA", { peft_type: "ADALORA" }, "PEFT_UNSUPPORTED"],
    ["PiSSA init", { init_lora_weights: "pissa_niter_4" }, "PEFT_UNSUPPORTED"],
    ["OLoRA init", { init_lora_weights: "olora" }, "PEFT_UNSUPPORTED"],
    ["CorDA init", { init_lora_weights: "corda" }, "PEFT_UNSUPPORTED"],
    ["LoftQ init", { init_lora_weights: "loftq" }, "PEFT_UNSUPPORTED"],
    ["layer replication", { layer_replication: [[0, 4], [2, 5]] }, "PEFT_UNSUPPORTED"],
    ["target_parameters", { target_parameters: ["experts.gate_up_proj"] }, "PEFT_UNSUPPORTED"],
    ["aLoRA", { alora_invocation_tokens: [1, 2] }, "PEFT_UNSUPPORTED"],
    ["QALoRA", { use_qalora: true }, "PEFT_UNSUPPORTED"],
    ["rank 0", { r: 0 }, "PEFT_CONFIG"],
    ["alpha as string", { lora_alpha: "16" }, "PEFT_CONFIG"],
    ["bias value", { bias: "some" }, "PEFT_CONFIG"],
    ["missing peft_type", { peft_type: undefined }, "PEFT_CONFIG"],
  ];
  for (const [label, extra, code] of cases) {
    await t.step(label, () => {
      assert.throws(
        () => parseLoraConfig({ peft_type: "LORA", ...extra }, "adapter_config.json"),
        (e) => isCkptError(e, code) && e.file === "adapter_config.json",
      );
    });
  }
  assert.throws(() => parseLoraConfig([1]), (e) => isCkptError(e, "PEFT_CONFIG"));
});

Deno.test("`getPatternKey()` follows PEFT's current rule (first match, dot-suffix, full name)", () => {
  const m = "model.layers.10.self_attn.q_proj";
  assert.equal(getPatternKey(["q_proj"], m), "q_proj");
  assert.equal(getPatternKey([m], m), m);
  assert.equal(
    getPatternKey(["^model.layers.10.self_attn.q_proj"], m),
    "^model.layers.10.self_attn.q_proj",
  );
  // must match a whole dot-separated suffix
  assert.equal(getPatternKey(["proj"], m), m);
  assert.equal(getPatternKey(["_proj"], m), m);
  assert.equal(getPatternKey(["layers.1.self_attn.q_proj"], m), m);
  // insertion order decides between several matches
  assert.equal(getPatternKey(["self_attn.q_proj", "q_proj"], m), "self_attn.q_proj");
  assert.equal(getPatternKey(["q_proj", "self_attn.q_proj"], m), "q_proj");
  // regex syntax, including Python named groups
  assert.equal(
    getPatternKey([String.raw`layers\.\d+\.self_attn\.(q|k)_proj`], m),
    String.raw`layers\.\d+\.self_attn\.(q|k)_proj`,
  );
  assert.equal(getPatternKey(["(?P<n>q)_proj"], m), "(?P<n>q)_proj");
});

Deno.test("`resolveModuleScaling()` resolves rank and alpha independently", () => {
  const c = parseLoraConfig({
    peft_type: "LORA",
    r: 8,
    lora_alpha: 16,
    rank_pattern: { "q_proj": 4 },
    alpha_pattern: { "v_proj": 2 },
  });
  assert.deepEqual(resolveModuleScaling(c, "a.q_proj"), {
    r: 4,
    alpha: 16,
    scale: 4,
    rankPattern: "q_proj",
  });
  assert.deepEqual(resolveModuleScaling(c, "a.v_proj"), {
    r: 8,
    alpha: 2,
    scale: 0.25,
    alphaPattern: "v_proj",
  });
  assert.deepEqual(resolveModuleScaling(c, "a.o_proj"), { r: 8, alpha: 16, scale: 2 });
  const rs = parseLoraConfig({ peft_type: "LORA", r: 64, lora_alpha: 16, use_rslora: true });
  assert.equal(resolveModuleScaling(rs, "x").scale, 2);
});

Deno.test("`matchesTargetModule()` uses suffix match for lists and full match for a regex", () => {
  assert.ok(matchesTargetModule(["q_proj"], "model.layers.0.self_attn.q_proj"));
  assert.ok(matchesTargetModule(["q_proj"], "q_proj"));
  assert.ok(!matchesTargetModule(["proj"], "model.layers.0.self_attn.q_proj"));
  assert.ok(matchesTargetModule(".*\\.(q|v)_proj", "model.layers.0.self_attn.v_proj"));
  assert.ok(!matchesTargetModule("(q|v)_proj", "model.layers.0.self_attn.v_proj"));
});

Deno.test("`classifyAdapterKey()` names every kind of saved and wrapped key", () => {
  const M = "model.layers.0.self_attn.q_proj";
  const cases: [string, string, string, string][] = [
    [`base_model.model.${M}.lora_A.weight`, "lora_A", M, `${M}.weight`],
    [`base_model.model.${M}.lora_B.weight`, "lora_B", M, `${M}.weight`],
    [`base_model.model.${M}.lora_B.bias`, "lora_B_bias", M, `${M}.bias`],
    [`${M}.lora_A.default.weight`, "lora_A", M, `${M}.weight`],
    [`${M}.lora_B.default.bias`, "lora_B_bias", M, `${M}.bias`],
    [
      "base_model.model.model.embed_tokens.lora_embedding_A",
      "lora_embedding_A",
      "model.embed_tokens",
      "model.embed_tokens.weight",
    ],
    [
      "model.embed_tokens.lora_embedding_B.default",
      "lora_embedding_B",
      "model.embed_tokens",
      "model.embed_tokens.weight",
    ],
    [`base_model.model.${M}.lora_magnitude_vector`, "magnitude", M, `${M}.weight`],
    [`${M}.lora_magnitude_vector.default.weight`, "magnitude", M, `${M}.weight`],
    [
      "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
      "trainable_tokens",
      "model.embed_tokens",
      "model.embed_tokens.weight",
    ],
    [`base_model.model.${M}.base_layer.bias`, "replacement", M, `${M}.bias`],
    [
      "base_model.model.model.embed_tokens.base_layer.weight",
      "replacement",
      "model.embed_tokens",
      "model.embed_tokens.weight",
    ],
    ["base_model.model.lm_head.weight", "replacement", "lm_head", "lm_head.weight"],
    [
      "base_model.model.lm_head.modules_to_save.default.weight",
      "replacement",
      "lm_head",
      "lm_head.weight",
    ],
    ["base_model.model.score.bias", "replacement", "score", "score.bias"],
    ["model.norm.weight", "replacement", "model.norm", "model.norm.weight"],
  ];
  for (const [key, kind, module, target] of cases) {
    const c = classifyAdapterKey(key);
    assert.deepEqual([c.kind, c.module, c.target], [kind, module, target], key);
  }
  assert.equal(classifyAdapterKey(`${M}.lora_A.default.weight`).adapterName, "default");
  assert.equal(classifyAdapterKey(`${M}.lora_A.weight`).adapterName, undefined);
  assert.equal(classifyAdapterKey(`${M}.lora_magnitude_vector.weight`).adapterName, undefined);
});

const f32 = (n: number) => tensorFromBytes("F32", [n], new Uint8Array(4 * n));

Deno.test("`splitWrappedStateDict()` keeps base_layer biases, maps modules_to_save and drops other adapters", () => {
  const P = "base_model.model.";
  const sd = new StateDict([
    [`${P}model.embed_tokens.weight`, f32(1)],
    [`${P}model.layers.0.q.base_layer.weight`, f32(1)],
    [`${P}model.layers.0.q.base_layer.bias`, f32(1)],
    [`${P}model.layers.0.q.lora_A.default.weight`, f32(1)],
    [`${P}model.layers.0.q.lora_B.default.weight`, f32(1)],
    [`${P}model.layers.0.q.lora_A.other.weight`, f32(1)],
    [`${P}model.layers.0.q.lora_magnitude_vector.default.weight`, f32(1)],
    [`${P}lm_head.original_module.weight`, f32(1)],
    [`${P}lm_head.modules_to_save.default.weight`, f32(1)],
    [`${P}lm_head.modules_to_save.other.weight`, f32(1)],
    [`${P}model.emb2.token_adapter.base_layer.weight`, f32(1)],
    [`${P}model.emb2.token_adapter.trainable_tokens_delta.default`, f32(1)],
  ]);
  assert.ok(isWrappedStateDict(sd));
  const { base, adapter, otherAdapterKeys } = splitWrappedStateDict(sd, {
    r: 4,
    alpha: 8,
    trainableTokenIndices: [1],
  });
  assert.deepEqual([...base.keys()], [
    "model.embed_tokens.weight",
    "model.layers.0.q.weight",
    "model.layers.0.q.bias",
    "lm_head.weight",
    "model.emb2.weight",
  ]);
  assert.deepEqual([...adapter.tensors.keys()], [
    "model.layers.0.q.lora_A.default.weight",
    "model.layers.0.q.lora_B.default.weight",
    "model.layers.0.q.lora_magnitude_vector.default.weight",
    "lm_head.modules_to_save.default.weight",
    "model.emb2.token_adapter.trainable_tokens_delta.default",
  ]);
  assert.deepEqual(otherAdapterKeys, [
    `${P}model.layers.0.q.lora_A.other.weight`,
    `${P}lm_head.modules_to_save.other.weight`,
  ]);
  assert.equal(adapter.config.use_dora, true);
  assert.equal(adapter.config.r, 4);
  assert.ok(!isWrappedStateDict(base));
});

Deno.test("`loadAdapter()` opens a folder, a weights file, and a .bin adapter", async () => {
  const dir = join(LORA_FIXTURES, "linear_bf16", "adapter");
  const a = await loadAdapter(dir);
  assert.equal(a.name, "adapter");
  assert.equal(a.config.r, 4);
  assert.ok(a.tensors.has("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  await a.tensors.close();
  const f = await loadAdapter(join(dir, "adapter_model.safetensors"), "named");
  assert.equal(f.name, "named");
  assert.equal(f.tensors.size, a.tensors.size);
  await f.tensors.close();
  const bin = await loadAdapter(join(LORA_FIXTURES, "bin_adapter", "adapter"));
  assert.equal(bin.tensors.size, 4);
  assert.equal(
    bin.tensors.require("base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight").dtype,
    "F32",
  );
  await bin.tensors.close();
});

Deno.test("`loadAdapter()` and `readLoraConfig()` fail with codes on missing or broken files", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(
      loadAdapter(join(dir, "nope")),
      (e) => isCkptError(e, "PEFT_ADAPTER_MISSING"),
    );
    await assert.rejects(loadAdapter(dir), (e) => isCkptError(e, "PEFT_ADAPTER_MISSING"));
    await Deno.writeTextFile(join(dir, "adapter_config.json"), "{ not json");
    await assert.rejects(
      readLoraConfig(join(dir, "adapter_config.json")),
      (e) => isCkptError(e, "PEFT_CONFIG"),
    );
    await Deno.writeTextFile(join(dir, "adapter_model.safetensors"), "x");
    await assert.rejects(loadAdapter(dir), (e) => isCkptError(e, "PEFT_CONFIG"));
  });
});
