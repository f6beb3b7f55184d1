import assert from "node:assert/strict";
import { decodeF32, encodeF32 } from "../../formats/dtype.ts";
import { mergeLoraTensor } from "../../merge/lora_tensor.ts";
import { referenceBackend, ulpOf } from "./_lora_fixtures.ts";
import { seq, t } from "./_lora_helpers.ts";

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
