/**
 * One rounding, to the final dtype: merged tensors read as BF16, F16 or F32 (through `outDtype`,
 * through `castRef` of a merged tensor, and through writeModel's plan) from BF16, F16 and F32
 * bases equal the float64 result rounded once into that dtype, on the scalar reference, the CPU
 * (wasm) and the WebGPU backend alike, bit for bit.
 */
import assert from "node:assert/strict";
import { castRef } from "../../formats/cast.ts";
import { decodeF32 } from "../../formats/dtype.ts";
import { StateDict, type TensorRef } from "../../formats/state_dict.ts";
import { MERGE_DTYPES, type MergeDType } from "../../kernels/types.ts";
import { createMergeBackend } from "../../merge/backend.ts";
import { mergeLora } from "../../merge/lora.ts";
import type { MergeLoraOptions } from "../../merge/lora_types.ts";
import { planModel } from "../../pipelines/stages/model/plan.ts";
import { referenceBackend } from "./_lora_fixtures.ts";
import { adapter, P, seq, t } from "./_lora_helpers.ts";
import { checkOneRounding, type Exact, exactLinear } from "./_one_rounding.ts";

const R = 8, ALPHA = 20, S = ALPHA / R; // s = 2.5
const ROWS = 24, COLS = 40, V = 30, D = 16;
const TOKENS = [3, 7];

interface Case {
  dtype: MergeDType;
  base: StateDict;
  exact: Map<string, Exact>;
  adapterTensors: [string, TensorRef][];
}

/**
 * A base in `dtype` with a Linear LoRA (with `lora_B.bias`), an embedding LoRA with two trainable
 * token rows, an F32 `modules_to_save` head and an untouched norm; and every output tensor's
 * float64 result.
 */
async function makeCase(dtype: MergeDType): Promise<Case> {
  const dec = async (ref: TensorRef) => [...decodeF32(ref.dtype, await ref.read())];
  const w = t(dtype, [ROWS, COLS], seq(ROWS * COLS, 1, 1));
  const bias = t(dtype, [ROWS], seq(ROWS, 2, 0.5));
  const emb = t(dtype, [V, D], seq(V * D, 3, 1));
  const head = t(dtype, [V, D], seq(V * D, 4, 1));
  const norm = t(dtype, [D], seq(D, 5, 2));
  const base = new StateDict([
    ["l.weight", w],
    ["l.bias", bias],
    ["emb.weight", emb],
    ["head.weight", head],
    ["norm.weight", norm],
  ]);
  // f32 factors with 24 significant bits: their products are not representable in bf16 or f16
  const a = seq(R * COLS, 6, 0.2), b = seq(ROWS * R, 7, 0.2), lb = seq(ROWS, 8, 0.3);
  const ea = seq(R * V, 9, 0.2), eb = seq(D * R, 10, 0.2);
  const tok = seq(TOKENS.length * D, 11, 1), headNew = seq(V * D, 12, 1);
  const f32 = (n: number[]) => [...Float32Array.from(n)];
  const adapterTensors: [string, TensorRef][] = [
    [`${P}l.lora_A.weight`, t("F32", [R, COLS], a)],
    [`${P}l.lora_B.weight`, t("F32", [ROWS, R], b)],
    [`${P}l.lora_B.bias`, t("F32", [ROWS], lb)],
    [`${P}emb.lora_embedding_A`, t("F32", [R, V], ea)],
    [`${P}emb.lora_embedding_B`, t("F32", [D, R], eb)],
    [`${P}emb.token_adapter.trainable_tokens_delta`, t("F32", [TOKENS.length, D], tok)],
    [`${P}head.weight`, t("F32", [V, D], headNew)],
  ];
  const exact = new Map<string, Exact>();
  exact.set("l.weight", exactLinear(await dec(w), f32(a), f32(b), S, ROWS, COLS, R));
  // the bias: b + f32(s)·lb with the product and the sum rounded to f32
  const bv = await dec(bias);
  exact.set("l.bias", {
    value: Float64Array.from(bv, (x, i) => x + S * Math.fround(lb[i]!)),
    slack: Float64Array.from(bv, (x, i) => 3 * 2 ** -24 * (Math.abs(x) + S * Math.abs(lb[i]!))),
  });
  // the embedding: W[v, d] + s·Σ_k B[d, k]·A[k, v] (the transposed delta), token rows replaced
  const ebT = new Array<number>(V * R), eaT = new Array<number>(R * D);
  for (let v = 0; v < V; v++) for (let k = 0; k < R; k++) ebT[v * R + k] = f32(ea)[k * V + v]!;
  for (let k = 0; k < R; k++) for (let d = 0; d < D; d++) eaT[k * D + d] = f32(eb)[d * R + k]!;
  const e = exactLinear(await dec(emb), eaT, ebT, S, V, D, R);
  TOKENS.forEach((row, j) => {
    for (let d = 0; d < D; d++) {
      e.value[row * D + d] = Math.fround(tok[j * D + d]!);
      e.slack[row * D + d] = 0;
    }
  });
  exact.set("emb.weight", e);
  exact.set("head.weight", {
    value: Float64Array.from(f32(headNew)),
    slack: new Float64Array(V * D),
  });
  exact.set("norm.weight", {
    value: Float64Array.from(await dec(norm)),
    slack: new Float64Array(D),
  });
  return { dtype, base, exact, adapterTensors };
}

function loaded(c: Case) {
  return adapter(c.adapterTensors, {
    r: R,
    lora_alpha: ALPHA,
    lora_bias: true,
    modules_to_save: ["head"],
    trainable_token_indices: { emb: TOKENS },
  });
}

/** The three library entry points: the merge's `outDtype`, `castRef` of its refs, writeModel's plan. */
const ENTRIES = ["outDtype", "castRef", "planModel"] as const;
type Entry = (typeof ENTRIES)[number];

/** Reads every output tensor of the merge of `c` as `out` through `entry` on `backend`. */
async function mergedAs(
  c: Case,
  out: MergeDType,
  entry: Entry,
  backend: NonNullable<MergeLoraOptions["backend"]>,
): Promise<Map<string, Uint8Array>> {
  const { stateDict } = await mergeLora(c.base, [loaded(c)], {
    backend,
    blockBytes: 256, // several blocks per tensor
    ...(entry === "outDtype" ? { outDtype: out } : {}),
  });
  try {
    let refs: [string, TensorRef][];
    if (entry !== "planModel") {
      // with outDtype the merged refs are `out` already; the untouched norm is cast as usual
      refs = [...stateDict].map(([k, r]) => [k, castRef(r, out)]);
    } else {
      const plan = await planModel(stateDict, {
        dtype: out,
        format: "safetensors",
        tied: "auto",
        writeConfig: false,
      });
      refs = [...plan.stateDict];
      // the merged weight and embedding, the bias sum and the replaced head (an F32 head over an
      // F32 base is passed through as the adapter's tensor, whose plain cast is one rounding too)
      const computed = c.dtype === "F32" ? 3 : 4;
      assert.equal(plan.recomputedInDtype, out === c.dtype ? 0 : computed);
    }
    const bytes = new Map<string, Uint8Array>();
    for (const [k, r] of refs) {
      assert.equal(r.dtype, out, `${k} dtype`);
      // read in two row ranges, as a writer does
      const rows = r.shape[0]!;
      const half = Math.floor(rows / 2);
      const x = await r.read(0, half), y = await r.read(half, rows);
      const all = new Uint8Array(x.byteLength + y.byteLength);
      all.set(x);
      all.set(y, x.byteLength);
      bytes.set(k, all);
    }
    return bytes;
  } finally {
    await stateDict.close();
  }
}

Deno.test("merged tensors are the float64 result rounded once into the final dtype, from every base dtype and entry point", async () => {
  const decided = { BF16: 0, F16: 0, F32: 0 }, elements = { BF16: 0, F16: 0, F32: 0 };
  for (const baseDtype of MERGE_DTYPES) {
    const c = await makeCase(baseDtype);
    for (const out of MERGE_DTYPES) {
      for (const entry of ENTRIES) {
        const bytes = await mergedAs(c, out, entry, referenceBackend());
        for (const [name, ex] of c.exact) {
          const got = decodeF32(out, bytes.get(name)!);
          const st = checkOneRounding(`${baseDtype}→${out} ${entry} ${name}`, out, got, ex);
          decided[out] += st.decided;
          elements[out] += st.elements;
        }
      }
    }
  }
  // The check has teeth: a 16-bit output is away from a rounding boundary almost everywhere, so
  // it must be exactly the float64 result rounded once. An f32 output is allowed the merge's f32
  // accumulation error (a few f32 ulps), which a widened bf16 or f16 rounding exceeds 1000-fold.
  for (const od of ["BF16", "F16"] as const) {
    assert.ok(decided[od] / elements[od] > 0.99, `${od}: ${decided[od]}/${elements[od]} decided`);
  }
});

Deno.test("an f32 output of a bf16 base keeps the merge's low bits (no bf16 rounding widened)", async () => {
  const c = await makeCase("BF16");
  const bytes = await mergedAs(c, "F32", "planModel", referenceBackend());
  const u = new Uint32Array(bytes.get("l.weight")!.slice().buffer);
  const lowBits = u.filter((x) => (x & 0xffff) !== 0).length;
  assert.ok(lowBits > u.length * 0.9, `${lowBits}/${u.length} values have low 16 bits set`);
});

Deno.test("the CPU (wasm) and WebGPU backends round into every final dtype bit-equal to the reference", async () => {
  const backends = [
    (await createMergeBackend("cpu", { workers: 2, inlineBelow: 0 })).backend,
    (await createMergeBackend("webgpu")).backend,
  ];
  try {
    for (const baseDtype of MERGE_DTYPES) {
      const c = await makeCase(baseDtype);
      for (const out of MERGE_DTYPES) {
        const want = await mergedAs(c, out, "castRef", referenceBackend());
        for (const backend of backends) {
          const got = await mergedAs(c, out, "castRef", backend);
          for (const [name, w] of want) {
            assert.deepEqual(got.get(name), w, `${backend.kind} ${baseDtype}→${out} ${name}`);
          }
        }
      }
    }
  } finally {
    for (const b of backends) await b.dispose();
  }
});

Deno.test("a merged tensor cast to a dtype the kernels do not write (F64) is the f32 merge, exactly", async () => {
  const c = await makeCase("BF16");
  const { stateDict } = await mergeLora(c.base, [loaded(c)], { backend: referenceBackend() });
  try {
    const ref = stateDict.require("l.weight");
    const f64 = castRef(ref, "F64");
    assert.equal(f64.dtype, "F64");
    assert.deepEqual(
      [...decodeF32("F64", await f64.read(2, 9))],
      [...decodeF32("F32", await castRef(ref, "F32").read(2, 9))],
    );
  } finally {
    await stateDict.close();
  }
});

Deno.test("with safe, a merge that overflows the final dtype is refused when read in it", async () => {
  const base = new StateDict([["m.weight", t("F32", [1, 2], [60000, 1])]]);
  const ad = adapter([
    [`${P}m.lora_A.weight`, t("F32", [1, 2], [1, 1])],
    [`${P}m.lora_B.weight`, t("F32", [1, 1], [10000])],
  ], { r: 1, lora_alpha: 1 });
  const { stateDict } = await mergeLora(base, [ad], { backend: referenceBackend(), safe: true });
  try {
    const ref = stateDict.require("m.weight");
    assert.equal((await ref.read()).byteLength, 8); // 70000 is finite in F32
    await assert.rejects(castRef(ref, "F16").read(), { code: "LORA_NONFINITE" });
  } finally {
    await stateDict.close();
  }
});
