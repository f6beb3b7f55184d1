import assert from "node:assert/strict";
import { type ErrorCode, isCkptError } from "../../errors.ts";
import { decodeF32, type DType, encodeF32 } from "../../formats/dtype.ts";
import type { LoadedAdapter } from "../../formats/peft.ts";
import { parseLoraConfig } from "../../formats/peft_config.ts";
import { StateDict, tensorFromBytes, type TensorRef } from "../../formats/state_dict.ts";
import { mergeLora, mergeLoraTensor } from "../../merge/lora.ts";
import { createMergeBackend } from "../../merge/backend.ts";
import type { MergeBackend, MergeRowsRequest } from "../../kernels/types.ts";
import { compareUlps, LORA_CASES, referenceBackend, runCase, ulpOf } from "./_lora_fixtures.ts";

function t(dtype: DType, shape: number[], values: ArrayLike<number>): TensorRef {
  return tensorFromBytes(dtype, shape, encodeF32(dtype, Float32Array.from(values)));
}

function seq(n: number, seed: number, scale = 1): number[] {
  const out: number[] = [];
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push((s / 2 ** 32 - 0.5) * scale);
  }
  return out;
}

async function values(ref: TensorRef): Promise<number[]> {
  return [...decodeF32(ref.dtype, await ref.read())];
}

function adapter(
  tensors: [string, TensorRef][],
  config: Record<string, unknown> = {},
  name = "a",
): LoadedAdapter {
  return {
    name,
    config: parseLoraConfig({ peft_type: "LORA", r: 2, lora_alpha: 4, ...config }),
    tensors: new StateDict(tensors),
  };
}

const P = "base_model.model.";

/** A backend that records requests (and merges with the CPU backend). */
function recording(): { backend: MergeBackend; reqs: MergeRowsRequest[] } {
  const cpu = referenceBackend();
  const reqs: MergeRowsRequest[] = [];
  return {
    reqs,
    backend: {
      kind: "cpu",
      description: "recording",
      mergeRows(req) {
        reqs.push(req);
        return cpu.mergeRows(req);
      },
      dispose: () => cpu.dispose(),
    },
  };
}

Deno.test("`mergeLora()` matches torch's PEFT merge and the float64 result on every fixture", async (t) => {
  const { backend } = await createMergeBackend("cpu", { workers: 2 });
  try {
    for (const name of LORA_CASES) {
      await t.step(name, async () => {
        const r = await runCase(name, backend);
        assert.deepEqual(r.problems, []);
        assert.ok(r.elements > 0);
        // torch's fp32 matmul/conv sums in another order: for 16-bit outputs that is at most one
        // ulp; for F32 outputs the float64 check below is the bound.
        if (!r.f32) assert.ok(r.maxUlpTorch <= 1, `${name}: ${r.maxUlpTorch} ulps from torch`);
        assert.ok(r.maxExactRatio <= 1, `${name}: exact ratio ${r.maxExactRatio}`);
        assert.ok(r.report.modules.length + r.report.replaced.length > 0);
        console.log(
          `${name}: ${r.equal}/${r.elements} equal to torch, max ${r.maxUlpTorch} ulp, exact ratio ${
            r.maxExactRatio.toFixed(3)
          }`,
        );
      });
    }
  } finally {
    await backend.dispose();
  }
});

Deno.test("`mergeLora()` gives the same bytes for any block size", async () => {
  const a = await runCase("dora", undefined, 64);
  const b = await runCase("dora", undefined, 1 << 20);
  assert.deepEqual([...a.bytes.keys()], [...b.bytes.keys()]);
  for (const [k, v] of a.bytes) assert.deepEqual(v, b.bytes.get(k), k);
});

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

Deno.test("`mergeLora()` keeps base_layer biases of a wrapped state dict and drops adapter keys", async () => {
  const r = await runCase("wrapped");
  assert.ok(r.keys.includes("model.layers.0.self_attn.q_proj.bias"));
  assert.ok(r.keys.every((k) => !k.includes("lora_") && !k.includes("base_layer")));
  assert.ok(r.keys.every((k) => !k.startsWith("base_model.")));
  assert.deepEqual(r.report.replaced, ["lm_head.weight"]);
  assert.deepEqual(r.keys.toSorted(), r.expectedKeys.toSorted());
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

Deno.test("`mergeLora()` reads nothing before a tensor is read, and splits reads into blocks", async () => {
  let reads = 0;
  const w = t("BF16", [8, 4], seq(32, 1));
  const counted: TensorRef = {
    dtype: w.dtype,
    shape: w.shape,
    read(s, e) {
      reads++;
      return w.read(s, e);
    },
  };
  const base = new StateDict([["m.weight", counted]]);
  const { backend, reqs } = recording();
  const ad = adapter([
    [`${P}m.lora_A.weight`, t("F32", [2, 4], seq(8, 2))],
    [`${P}m.lora_B.weight`, t("F32", [8, 2], seq(16, 3))],
  ]);
  const { stateDict } = await mergeLora(base, [ad], { backend, blockBytes: 16, prefetch: false });
  assert.equal(reads, 0);
  const rows = await stateDict.require("m.weight").read(1, 7);
  assert.equal(rows.byteLength, 6 * 4 * 2);
  assert.equal(reqs.length, 3); // 2 rows (16 bytes) per block
  assert.deepEqual(reqs.map((r) => r.rows), [2, 2, 2]);
  assert.equal(reqs[0]!.scale, 2);
  const whole = await stateDict.require("m.weight").read();
  assert.deepEqual(whole.subarray(8, 56), rows);
  await stateDict.close();
  await backend.dispose();
});

Deno.test("`mergeLora()` folds weights and scales of several adapters into one rounding", async () => {
  const W = seq(6, 9);
  const base = new StateDict([["m.weight", t("F32", [2, 3], W)]]);
  const a1 = adapter(
    [
      [`${P}m.lora_A.weight`, t("F32", [1, 3], [1, 2, 3])],
      [`${P}m.lora_B.weight`, t("F32", [2, 1], [1, -1])],
    ],
    { r: 1, lora_alpha: 2 },
    "one",
  );
  const a2 = adapter(
    [
      [`${P}m.lora_A.weight`, t("F32", [2, 3], [1, 0, 0, 0, 0, 1])],
      [`${P}m.lora_B.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
    ],
    { r: 2, lora_alpha: 2 },
    "two",
  );
  const { stateDict, report } = await mergeLora(
    base,
    [{ ...a1, weight: 0.5 }, { ...a2, weight: 2 }],
    { backend: referenceBackend() },
  );
  const got = await values(stateDict.require("m.weight"));
  const d1 = [[1, 2, 3], [-1, -2, -3]].map((r) => r.map((v) => v * 2 * 0.5));
  const d2 = [[1, 0, 2], [3, 0, 4]].map((r) => r.map((v) => v * 1 * 2));
  const want = W.map((w, i) =>
    Math.fround(w + d1[Math.floor(i / 3)]![i % 3]! + d2[Math.floor(i / 3)]![i % 3]!)
  );
  assert.deepEqual(got, want);
  assert.deepEqual(report.adapters.map((a) => [a.name, a.weight, a.tensors, a.useDora]), [
    ["one", 0.5, 2, false],
    ["two", 2, 2, false],
  ]);
  assert.deepEqual(report.modules[0]!.adapters.map((a) => [a.name, a.weight, a.scale]), [
    ["one", 0.5, 2],
    ["two", 2, 1],
  ]);
  await stateDict.close();
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

Deno.test("`mergeLora()` with safe refuses a non-finite result when the block is read", async () => {
  const base = new StateDict([["m.weight", t("F16", [2, 2], [60000, 1, 2, 3])]]);
  const ad = adapter([
    [`${P}m.lora_A.weight`, t("F32", [1, 2], [1, 0])],
    [`${P}m.lora_B.weight`, t("F32", [2, 1], [10000, 0])],
  ], { r: 1, lora_alpha: 1 });
  const { stateDict } = await mergeLora(base, [ad], { backend: referenceBackend(), safe: true });
  await assert.rejects(stateDict.require("m.weight").read(), (e) => {
    assert.ok(isCkptError(e, "LORA_NONFINITE"));
    assert.equal(e.tensor, "m.weight");
    assert.deepEqual(e.details, { row: 0, column: 0 });
    return true;
  });
  assert.equal((await stateDict.require("m.weight").read(1, 2)).byteLength, 4);
  await stateDict.close();
});

Deno.test("`mergeLora()` casts merged tensors to outDtype and leaves others alone", async () => {
  const base = new StateDict([
    ["m.weight", t("F32", [1, 2], [1, 2])],
    ["n.weight", t("F32", [2], [1, 2])],
  ]);
  const ad = adapter([
    [`${P}m.lora_A.weight`, t("F32", [1, 2], [1, 1])],
    [`${P}m.lora_B.weight`, t("F32", [1, 1], [1])],
  ], { r: 1, lora_alpha: 1 });
  const { stateDict, report } = await mergeLora(base, [ad], {
    backend: referenceBackend(),
    outDtype: "BF16",
  });
  assert.equal(stateDict.require("m.weight").dtype, "BF16");
  assert.equal(stateDict.require("n.weight").dtype, "F32");
  assert.deepEqual(await values(stateDict.require("m.weight")), [2, 3]);
  assert.equal(report.modules[0]!.dtype, "BF16");
  await stateDict.close();
});

Deno.test("`mergeLoraTensor()` merges Linear, Embedding and DoRA pairs", async () => {
  const W = seq(12, 4);
  const A = seq(8, 5);
  const B = seq(6, 6);
  const lin = await mergeLoraTensor({
    weight: t("F32", [3, 4], W),
    loraA: t("F32", [2, 4], A),
    loraB: t("F32", [3, 2], B),
    scale: 0.5,
  }, { backend: "cpu" });
  assert.equal(lin.layout, "linear");
  const got = new Float32Array(lin.data.buffer, lin.data.byteOffset, 12);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 4; j++) {
      const d = B[i * 2]! * A[j]! + B[i * 2 + 1]! * A[4 + j]!;
      assert.ok(Math.abs(got[i * 4 + j]! - (W[i * 4 + j]! + 0.5 * d)) < 1e-6);
    }
  }
  const emb = await mergeLoraTensor({
    weight: t("F32", [4, 3], W),
    loraA: t("F32", [2, 4], A),
    loraB: t("F32", [3, 2], B),
    scale: 1,
    embedding: true,
  }, { backend: referenceBackend() });
  assert.equal(emb.layout, "embedding");
  const e = new Float32Array(emb.data.buffer, emb.data.byteOffset, 12);
  // ΔW[v, d] = Σ_k B[d, k] A[k, v]
  const d01 = B[1 * 2]! * A[0]! + B[1 * 2 + 1]! * A[4]!;
  assert.ok(Math.abs(e[1]! - (W[1]! + d01)) < 1e-6);
  const dora = await mergeLoraTensor({
    weight: t("F32", [3, 4], W),
    loraA: t("F32", [2, 4], A),
    loraB: t("F32", [3, 2], B),
    scale: 1,
    magnitude: t("F32", [3], [1, 2, 3]),
  }, { backend: referenceBackend() });
  const dv = new Float32Array(dora.data.buffer, dora.data.byteOffset, 12);
  for (let i = 0; i < 3; i++) {
    let n = 0;
    for (let j = 0; j < 4; j++) n += dv[i * 4 + j]! ** 2;
    assert.ok(Math.abs(Math.sqrt(n) - (i + 1)) < 1e-5);
  }
});

Deno.test("`mergeLora()` on WebGPU equals the CPU backend bit for bit on every fixture", async () => {
  // Fails (does not skip) where no WebGPU adapter exists: CI must have one (llvmpipe here).
  const { backend: gpu } = await createMergeBackend("webgpu");
  const { backend: cpu } = await createMergeBackend("cpu", { workers: 2 });
  let elements = 0;
  let equal = 0;
  let maxUlp = 0;
  try {
    for (const name of LORA_CASES) {
      const g = await runCase(name, gpu);
      const c = await runCase(name, cpu);
      assert.deepEqual(g.problems, []);
      assert.ok(g.maxExactRatio <= 1, `${name}: exact ratio ${g.maxExactRatio}`);
      assert.deepEqual([...g.bytes.keys()], [...c.bytes.keys()]);
      for (const [k, cb] of c.bytes) {
        const d = compareUlps(c.dtypes.get(k)!, cb, g.bytes.get(k)!);
        elements += d.elements;
        equal += d.equal;
        maxUlp = Math.max(maxUlp, d.maxUlp);
      }
    }
  } finally {
    await gpu.dispose();
    await cpu.dispose();
  }
  console.log(`webgpu vs cpu: ${equal}/${elements} elements equal, max ${maxUlp} ulp`);
  assert.equal(equal, elements);
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

Deno.test("`mergeLora()` refuses conflicting adapters and unexplained wrapped state dicts", async (t2) => {
  const W = () => new StateDict([["m.weight", t("F32", [2, 2], [1, 2, 3, 4])]]);
  const pair = (name: string, extra: [string, TensorRef][] = [], cfg = {}) =>
    adapter(
      [
        [`${P}m.lora_A.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
        [`${P}m.lora_B.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
        ...extra,
      ],
      cfg,
      name,
    );
  const mag: [string, TensorRef] = [`${P}m.lora_magnitude_vector`, t("F32", [2], [1, 1])];
  await t2.step("two DoRA adapters on one module", async () => {
    await assert.rejects(
      mergeLora(W(), [pair("a", [mag], { use_dora: true }), pair("b", [mag], { use_dora: true })]),
      (e) => isCkptError(e, "LORA_DORA"),
    );
  });
  await t2.step("a LoRA adapter after a DoRA one", async () => {
    await assert.rejects(
      mergeLora(W(), [pair("a", [mag], { use_dora: true }), pair("b")]),
      (e) => isCkptError(e, "LORA_DORA"),
    );
  });
  await t2.step("two adapters replacing one tensor", async () => {
    const r = (n: string) => adapter([[`${P}m.weight`, t("F32", [2, 2], [0, 0, 0, 0])]], {}, n);
    await assert.rejects(mergeLora(W(), [r("a"), r("b")]), (e) => isCkptError(e, "LORA_CONFLICT"));
  });
  await t2.step("a wrapped state dict without wrapped options", async () => {
    const sd = new StateDict([
      [`${P}m.base_layer.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
      [`${P}m.lora_A.default.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
      [`${P}m.lora_B.default.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
    ]);
    await assert.rejects(mergeLora(sd, []), (e) => isCkptError(e, "LORA_WRAPPED"));
    sd.set(`${P}m.lora_A.other.weight`, t("F32", [2, 2], [1, 2, 3, 4]));
    await assert.rejects(
      mergeLora(sd, [], { wrapped: { r: 2, alpha: 2 } }),
      (e) => isCkptError(e, "LORA_UNMATCHED"),
    );
    const ok = await mergeLora(sd, [], {
      wrapped: { r: 2, alpha: 2 },
      allowUnmatched: true,
      backend: referenceBackend(),
    });
    assert.deepEqual([...ok.stateDict.keys()], ["m.weight"]);
    assert.deepEqual(ok.report.otherAdapterKeys, [`${P}m.lora_A.other.weight`]);
    // W + 1·B@A with B = A = [[1, 2], [3, 4]]: B@A = [[7, 10], [15, 22]]
    assert.deepEqual(await values(ok.stateDict.require("m.weight")), [8, 12, 18, 26]);
  });
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

Deno.test("`mergeLora()` computes the next row range ahead and serves it to an in-order reader", async () => {
  const w = t("BF16", [64, 8], seq(512, 11));
  const ad = () =>
    adapter([
      [`${P}m.lora_A.weight`, t("F32", [2, 8], seq(16, 12))],
      [`${P}m.lora_B.weight`, t("F32", [64, 2], seq(128, 13))],
    ]);
  const { backend, reqs } = recording();
  const on = await mergeLora(new StateDict([["m.weight", w]]), [ad()], {
    backend,
    blockBytes: 1 << 20,
  });
  const chunks: Uint8Array[] = [];
  for (let s = 0; s < 64; s += 10) {
    chunks.push(await on.stateDict.require("m.weight").read(s, Math.min(64, s + 10)));
  }
  // seven ranges, each computed once (the first on demand, the others ahead)
  assert.deepEqual(reqs.map((r) => r.rows), [10, 10, 10, 10, 10, 10, 4]);
  const off = await mergeLora(new StateDict([["m.weight", w]]), [ad()], {
    backend: referenceBackend(),
    prefetch: false,
  });
  const whole = await off.stateDict.require("m.weight").read();
  const joined = new Uint8Array(whole.length);
  let o = 0;
  for (const c of chunks) {
    joined.set(c, o);
    o += c.length;
  }
  assert.deepEqual(joined, whole);
  // an out-of-order read is computed on demand, and close waits for work computed ahead
  await on.stateDict.require("m.weight").read(3, 5);
  await on.stateDict.close();
  await off.stateDict.close();
});

Deno.test("`mergeLoraTensor()` stays within half an ulp (+ fp32 slack) of float64 on random layouts", async () => {
  let seed = 12345;
  const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const dtypes = ["BF16", "F16", "F32"] as const;
  let cases = 0;
  let worst = 0;
  for (let n = 0; n < 60; n++) {
    const kind = pick(["linear", "conv1d", "embedding", "conv"] as const);
    const r = pick([1, 2, 3, 8, 17, 64]);
    const rows = 1 + Math.floor(rnd() * 40);
    const cols = 1 + Math.floor(rnd() * 40);
    const wDtype = pick(dtypes);
    const outDtype = pick(dtypes);
    const fDtype = pick(dtypes);
    const dora = kind !== "conv" && rnd() < 0.3;
    const scale = pick([0.5, 2, 1 / Math.sqrt(r), 3.7]);
    // stored weight [rows, cols]; factor shapes by layout
    const k = kind === "conv" ? 3 : 1;
    const inC = kind === "conv" ? Math.max(1, Math.floor(cols / 3)) : cols;
    const wShape = kind === "conv" ? [rows, inC, k] : [rows, cols];
    const realCols = kind === "conv" ? inC * k : cols;
    const [aShape, bShape] = kind === "linear"
      ? [[r, cols], [rows, r]]
      : kind === "conv"
      ? [[r, inC, k], [rows, r, 1]]
      : [[r, rows], [cols, r]]; // transposed: A over the stored rows, B over the stored columns
    const q = (
      dt: typeof dtypes[number],
      v: number[],
    ) => [...decodeF32(dt, encodeF32(dt, Float32Array.from(v)))];
    const W = q(wDtype, seq(rows * realCols, n * 7 + 1, 2));
    const A = q(fDtype, seq(aShape[0]! * aShape[1]! * (aShape[2] ?? 1), n * 7 + 2, 0.5));
    const B = q(fDtype, seq(bShape[0]! * bShape[1]!, n * 7 + 3, 0.5));
    const M = seq(dora ? (kind === "linear" ? rows : cols) : 0, n * 7 + 4, 2).map((x) => 1 + x);
    const input = {
      weight: t(wDtype, wShape, W),
      loraA: t(fDtype, aShape, A),
      loraB: t(fDtype, bShape, B),
      scale,
      embedding: kind === "embedding",
      fanInFanOut: kind === "conv1d",
      ...(dora ? { magnitude: t("F32", [M.length], M) } : {}),
    };
    const got = decodeF32(
      outDtype,
      (await mergeLoraTensor(input, {
        backend: referenceBackend(),
        outDtype,
        blockBytes: 1 + Math.floor(rnd() * 300),
      })).data,
    );
    // float64 reference
    const exact = new Float64Array(rows * realCols);
    const absTerms = new Float64Array(rows * realCols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < realCols; j++) {
        let d = 0;
        let ad = 0;
        for (let kk = 0; kk < r; kk++) {
          const p = kind === "linear" || kind === "conv"
            ? B[i * r + kk]! * A[kk * realCols + j]!
            : B[j * r + kk]! * A[kk * rows + i]!;
          d += p;
          ad += Math.abs(p);
        }
        exact[i * realCols + j] = W[i * realCols + j]! + scale * d;
        absTerms[i * realCols + j] = Math.abs(W[i * realCols + j]!) + Math.abs(scale) * ad;
      }
    }
    if (dora) {
      const byRow = kind === "linear";
      const len = byRow ? rows : realCols;
      for (let x = 0; x < len; x++) {
        let s2 = 0;
        const at = (y: number) => byRow ? x * realCols + y : y * realCols + x;
        const other = byRow ? realCols : rows;
        for (let y = 0; y < other; y++) s2 += exact[at(y)]! ** 2;
        const f = M[x]! / Math.sqrt(s2);
        for (let y = 0; y < other; y++) {
          exact[at(y)] = exact[at(y)]! * f;
          absTerms[at(y)] = absTerms[at(y)]! * Math.abs(f) * (other + 8);
        }
      }
    }
    for (let i = 0; i < exact.length; i++) {
      const e = exact[i]!;
      const slack = 2 ** -24 * (r + 4) * absTerms[i]!;
      const ratio = Math.abs(got[i]! - e) / (ulpOf(outDtype, e) / 2 + slack);
      if (Number.isFinite(e)) {
        assert.ok(
          ratio <= 1,
          `case ${n} ${kind} r=${r} ${wDtype}->${outDtype} [${i}]: ${got[i]} vs ${e}`,
        );
        worst = Math.max(worst, ratio);
      }
    }
    cases++;
  }
  assert.equal(cases, 60);
  console.log(`60 random cases: worst |ours − exact| / (½ulp + slack) = ${worst.toFixed(3)}`);
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

Deno.test("`mergeLora()` merges an lm_head LoRA into the shared embedding of a tied checkpoint", async () => {
  const base = () =>
    new StateDict([["model.embed_tokens.weight", t("F32", [3, 2], [1, 1, 1, 1, 1, 1])]]);
  const ad = adapter([
    [`${P}lm_head.lora_A.weight`, t("F32", [1, 2], [1, 2])],
    [`${P}lm_head.lora_B.weight`, t("F32", [3, 1], [1, 0, -1])],
  ], { r: 1, lora_alpha: 1 });
  await assert.rejects(mergeLora(base(), [ad]), (e) => isCkptError(e, "LORA_NO_BASE"));
  const { stateDict, report } = await mergeLora(base(), [ad], {
    tieWordEmbeddings: true,
    backend: referenceBackend(),
  });
  assert.deepEqual([...stateDict.keys()], ["model.embed_tokens.weight"]);
  assert.deepEqual(await values(stateDict.require("model.embed_tokens.weight")), [
    2,
    3,
    1,
    1,
    0,
    -1,
  ]);
  assert.equal(report.tiedLmHead, "model.embed_tokens.weight");
  assert.equal(report.modules[0]!.module, "lm_head");
});
