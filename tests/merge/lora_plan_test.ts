import assert from "node:assert/strict";
import { type ErrorCode, isCkptError } from "../../errors.ts";
import type { LoadedAdapter } from "../../formats/peft.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { mergeLora } from "../../merge/lora.ts";
import { referenceBackend, runCase } from "./_lora_fixtures.ts";
import { adapter, P, seq, t, values } from "./_lora_helpers.ts";

Deno.test("`mergeLora()` reports scaling per module with rank/alpha patterns", async () => {
  const r = await runCase("rslora_patterns");
  const by = Object.fromEntries(r.report.modules.map((m) => [m.module, m.adapters[0]!]));
  const q = by["model.layers.0.self_attn.q_proj"]!;
  assert.deepEqual([q.r, q.alpha, q.rankPattern], [4, 16, "self_attn.q_proj"]);
  assert.equal(q.scale, 16 / 2);
  const up = by["model.layers.0.mlp.up_proj"]!;
  assert.deepEqual([up.r, up.alpha, up.alphaPattern], [2, 3, "layers.0.mlp.up_proj"]);
  assert.equal(up.scale, 3 / Math.sqrt(2));
  const k = by["model.layers.0.self_attn.k_proj"]!;
  assert.deepEqual([k.r, k.alpha, k.rankPattern, k.alphaPattern], [8, 16, undefined, undefined]);
});

Deno.test("`mergeLora()` reports layouts, replacements, biases and tokens", async () => {
  const conv = await runCase("conv1d");
  assert.deepEqual(conv.report.modules.map((m) => m.layout), ["conv1d", "conv1d", "conv1d"]);
  const c2 = await runCase("conv2d");
  assert.deepEqual(c2.report.modules.map((m) => m.layout), ["conv", "conv"]);
  const emb = await runCase("embedding");
  assert.deepEqual(emb.report.modules.map((m) => m.layout).toSorted(), ["embedding", "linear"]);
  const bm = await runCase("bias_modules");
  assert.deepEqual(bm.report.biases, ["model.layers.0.self_attn.q_proj.bias"]);
  assert.deepEqual(bm.report.replaced.toSorted(), [
    "lm_head.weight",
    "model.layers.0.self_attn.k_proj.bias",
    "model.layers.0.self_attn.v_proj.bias",
  ]);
  const tok = await runCase("tokens");
  assert.deepEqual(tok.report.trainableTokens, [{ tensor: "model.embed_tokens.weight", rows: 3 }]);
  const dora = await runCase("dora");
  assert.deepEqual(
    dora.report.modules.map((m) => [m.module, m.dora]).toSorted(),
    [
      ["model.embed_tokens", "column"],
      ["model.layers.0.mlp.up_proj", "row"],
      ["model.layers.0.self_attn.q_proj", "row"],
    ],
  );
  const lin = await runCase("linear_bf16");
  assert.deepEqual(lin.report.unusedTargetModules, [{ adapter: "adapter", target: "k_proj" }]);
  assert.deepEqual(lin.report.targetModulesWithoutTensors, [
    { adapter: "adapter", module: "model.layers.0.self_attn.k_proj" },
  ]);
  assert.equal(lin.report.backend?.description, "cpu: scalar reference");
});

Deno.test("`mergeLora()` refuses bad input with coded errors before reading data", async (t2) => {
  const base = () =>
    new StateDict([
      ["m.weight", t("BF16", [4, 3], seq(12, 1))],
      ["c.weight", t("F32", [4, 2, 3, 3], seq(72, 2))],
      ["i.weight", tensorFromBytes("I32", [4, 3], new Uint8Array(48))],
    ]);
  const A = (shape: number[]) => t("F32", shape, seq(shape.reduce((a, b) => a * b, 1), 5));
  const cases: [string, ErrorCode, LoadedAdapter, Record<string, unknown>?][] = [
    [
      "shape mismatch A/W",
      "LORA_SHAPE",
      adapter([
        [`${P}m.lora_A.weight`, A([2, 5])],
        [`${P}m.lora_B.weight`, A([4, 2])],
      ]),
    ],
    [
      "rank of A ≠ B",
      "LORA_SHAPE",
      adapter([
        [`${P}m.lora_A.weight`, A([2, 3])],
        [`${P}m.lora_B.weight`, A([4, 3])],
      ]),
    ],
    [
      "config rank ≠ tensors",
      "LORA_RANK_MISMATCH",
      adapter([
        [`${P}m.lora_A.weight`, A([3, 3])],
        [`${P}m.lora_B.weight`, A([4, 3])],
      ]),
    ],
    [
      "adapter key without base",
      "LORA_NO_BASE",
      adapter([
        [`${P}x.lora_A.weight`, A([2, 3])],
        [`${P}x.lora_B.weight`, A([4, 2])],
      ]),
    ],
    ["only lora_A", "LORA_FACTOR_MISSING", adapter([[`${P}m.lora_A.weight`, A([2, 3])]])],
    ["only lora_B", "LORA_FACTOR_MISSING", adapter([[`${P}m.lora_B.weight`, A([4, 2])]])],
    ["full tensor without base", "LORA_UNMATCHED", adapter([[`${P}score.weight`, A([2, 3])]])],
    [
      "grouped conv",
      "LORA_CONV_GROUPS",
      adapter([
        [`${P}c.lora_A.weight`, A([2, 4, 3, 3])],
        [`${P}c.lora_B.weight`, A([4, 2, 1, 1])],
      ]),
    ],
    [
      "integer weight",
      "LORA_DTYPE",
      adapter([
        [`${P}i.lora_A.weight`, A([2, 3])],
        [`${P}i.lora_B.weight`, A([4, 2])],
      ]),
    ],
    [
      "lora_bias without base bias",
      "LORA_BIAS_MISSING",
      adapter([
        [`${P}m.lora_A.weight`, A([2, 3])],
        [`${P}m.lora_B.weight`, A([4, 2])],
        [`${P}m.lora_B.bias`, A([4])],
      ], { lora_bias: true }),
    ],
    [
      "magnitude without use_dora",
      "LORA_DORA",
      adapter([
        [`${P}m.lora_A.weight`, A([2, 3])],
        [`${P}m.lora_B.weight`, A([4, 2])],
        [`${P}m.lora_magnitude_vector`, A([4])],
      ]),
    ],
    [
      "use_dora without magnitude",
      "LORA_DORA",
      adapter([
        [`${P}m.lora_A.weight`, A([2, 3])],
        [`${P}m.lora_B.weight`, A([4, 2])],
      ], { use_dora: true }),
    ],
    [
      "magnitude of the wrong size",
      "LORA_DORA",
      adapter([
        [`${P}m.lora_A.weight`, A([2, 3])],
        [`${P}m.lora_B.weight`, A([4, 2])],
        [`${P}m.lora_magnitude_vector`, A([3])],
      ], { use_dora: true }),
    ],
    [
      "tokens without indices",
      "LORA_TOKENS",
      adapter([
        [`${P}m.token_adapter.trainable_tokens_delta`, A([1, 3])],
      ]),
    ],
    [
      "token index out of range",
      "LORA_TOKENS",
      adapter([
        [`${P}m.token_adapter.trainable_tokens_delta`, A([1, 3])],
      ], { trainable_token_indices: { m: [4] } }),
    ],
    [
      "non-finite factor with safe",
      "LORA_NONFINITE",
      adapter([
        [`${P}m.lora_A.weight`, t("F32", [2, 3], [1, 2, NaN, 4, 5, 6])],
        [`${P}m.lora_B.weight`, A([4, 2])],
      ]),
      { safe: true },
    ],
  ];
  for (const [label, code, ad, opts] of cases) {
    await t2.step(label, async () => {
      let reads = 0;
      const b = base();
      const watched = new StateDict();
      for (const [k, ref] of b) {
        watched.set(k, {
          dtype: ref.dtype,
          shape: ref.shape,
          read: (s, e) => {
            reads++;
            return ref.read(s, e);
          },
        });
      }
      await assert.rejects(
        mergeLora(watched, [ad], { backend: referenceBackend(), ...opts }),
        (e) => {
          assert.ok(isCkptError(e, code), `${label}: ${e}`);
          assert.ok(e.tensor, "names the tensor");
          return true;
        },
      );
      assert.equal(reads, 0, "no base data read");
    });
  }
});

Deno.test("`mergeLora()` with allowUnmatched reports and adds instead of refusing", async () => {
  const base = new StateDict([["m.weight", t("F32", [2, 2], [1, 2, 3, 4])]]);
  const ad = adapter([
    [`${P}x.lora_A.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
    [`${P}x.lora_B.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
    [`${P}score.weight`, t("F32", [1, 2], [5, 6])],
  ]);
  const { stateDict, report } = await mergeLora(base, [ad], {
    backend: referenceBackend(),
    allowUnmatched: true,
  });
  assert.deepEqual([...stateDict.keys()], ["m.weight", "score.weight"]);
  assert.deepEqual(report.unmatchedKeys.toSorted(), [
    `${P}score.weight`,
    `${P}x.lora_A.weight`,
    `${P}x.lora_B.weight`,
  ]);
  assert.deepEqual(report.added, ["score.weight"]);
  assert.equal(report.backend, undefined);
  await stateDict.close();
});

Deno.test("`mergeLora()` applies a saved full tensor before the LoRA delta (resized embedding)", async () => {
  const base = new StateDict([["e.weight", t("F32", [2, 2], [1, 1, 1, 1])]]);
  const ad = adapter([
    [`${P}e.base_layer.weight`, t("F32", [3, 2], [1, 2, 3, 4, 5, 6])],
    [`${P}e.lora_embedding_A`, t("F32", [1, 3], [1, 0, 2])],
    [`${P}e.lora_embedding_B`, t("F32", [2, 1], [10, 100])],
  ], { r: 1, lora_alpha: 1 });
  const { stateDict, report } = await mergeLora(base, [ad], { backend: referenceBackend() });
  assert.deepEqual(stateDict.require("e.weight").shape, [3, 2]);
  // ΔW[v, d] = B[d]·A[v]
  assert.deepEqual(await values(stateDict.require("e.weight")), [11, 102, 3, 4, 25, 206]);
  assert.deepEqual(report.replaced, ["e.weight"]);
  await stateDict.close();
});

Deno.test("`mergeLora()` applies trainable tokens to a tied lm_head with tieWordEmbeddings", async () => {
  const base = () =>
    new StateDict([
      ["model.embed_tokens.weight", t("BF16", [3, 2], [0, 0, 0, 0, 0, 0])],
      ["lm_head.weight", t("BF16", [3, 2], [0, 0, 0, 0, 0, 0])],
    ]);
  const ad = () =>
    adapter([[
      `${P}model.embed_tokens.token_adapter.trainable_tokens_delta`,
      t("F32", [1, 2], [5, 6]),
    ]], {
      trainable_token_indices: [2],
    });
  const tied = await mergeLora(base(), [ad()], { tieWordEmbeddings: true });
  assert.deepEqual(await values(tied.stateDict.require("lm_head.weight")), [0, 0, 0, 0, 5, 6]);
  assert.deepEqual(await values(tied.stateDict.require("model.embed_tokens.weight")), [
    0,
    0,
    0,
    0,
    5,
    6,
  ]);
  assert.equal(tied.report.backend, undefined);
  const untied = await mergeLora(base(), [ad()]);
  assert.deepEqual(await values(untied.stateDict.require("lm_head.weight")), [0, 0, 0, 0, 0, 0]);
});

Deno.test("`mergeLora()` applies rename rules to adapter module paths", async () => {
  const base = new StateDict([["model.layers.0.q.weight", t("F32", [1, 1], [1])]]);
  const ad = adapter([
    [`${P}model.language_model.layers.0.q.lora_A.weight`, t("F32", [1, 1], [2])],
    [`${P}model.language_model.layers.0.q.lora_B.weight`, t("F32", [1, 1], [3])],
  ], { r: 1, lora_alpha: 1 });
  await assert.rejects(mergeLora(base, [ad]), (e) => isCkptError(e, "LORA_NO_BASE"));
  const { stateDict, report } = await mergeLora(base, [ad], {
    backend: referenceBackend(),
    renames: [["^model\\.language_model\\.", "model."]],
  });
  assert.deepEqual(await values(stateDict.require("model.layers.0.q.weight")), [7]);
  assert.equal(report.modules[0]!.module, "model.layers.0.q");
  await assert.rejects(
    mergeLora(base, [ad], { renames: [["(", ""]] }),
    (e) => isCkptError(e, "LORA_RENAME"),
  );
});

Deno.test("`mergeLora()` mixes a Linear and a Conv1D adapter on one square weight", async () => {
  const base = new StateDict([["m.weight", t("F32", [2, 2], [0, 0, 0, 0])]]);
  const pair = (name: string, fanInFanOut: boolean) =>
    adapter(
      [
        [`${P}m.lora_A.weight`, t("F32", [1, 2], [1, 2])],
        [`${P}m.lora_B.weight`, t("F32", [2, 1], [10, 100])],
      ],
      { r: 1, lora_alpha: 1, fan_in_fan_out: fanInFanOut },
      name,
    );
  const { stateDict, report } = await mergeLora(base, [pair("lin", false), pair("c1d", true)], {
    backend: referenceBackend(),
  });
  // B@A = [[10, 20], [100, 200]]; the Conv1D adapter adds its transpose
  assert.deepEqual(await values(stateDict.require("m.weight")), [20, 120, 120, 400]);
  assert.equal(report.modules[0]!.adapters.length, 2);
});
