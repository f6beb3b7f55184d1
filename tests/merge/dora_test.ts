import assert from "node:assert/strict";
import { isCkptError } from "../../errors.ts";
import { decodeF32, encodeF32 } from "../../formats/dtype.ts";
import { tensorFromBytes } from "../../formats/state_dict.ts";
import { applyColumnFactors, checkMagnitude, ColumnNorms, doraModeFor } from "../../merge/dora.ts";
import { mergeLoraTensor } from "../../merge/lora_tensor.ts";
import { referenceBackend } from "./_lora_fixtures.ts";

Deno.test("`doraModeFor()` is per row for Linear/Conv and per column for transposed layouts", () => {
  assert.equal(doraModeFor(false), "row");
  assert.equal(doraModeFor(true), "column");
});

Deno.test("`checkMagnitude()` checks the count against rows or columns", () => {
  checkMagnitude("m", "row", [4], [4, 3], 4, 3);
  checkMagnitude("m", "column", [1, 3], [4, 3], 4, 3);
  checkMagnitude("c", "row", [1, 8, 1, 1], [8, 4, 3, 3], 8, 36);
  assert.throws(
    () => checkMagnitude("m", "row", [3], [4, 3], 4, 3),
    (e) => isCkptError(e, "LORA_DORA"),
  );
  assert.throws(
    () => checkMagnitude("m", "column", [4], [4, 3], 4, 3),
    (e) => isCkptError(e, "LORA_DORA"),
  );
});

Deno.test("`ColumnNorms` accumulates over blocks like one pass over the whole matrix", () => {
  const rows = 7;
  const cols = 5;
  const v = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i) * 3);
  const whole = new ColumnNorms(cols);
  whole.add(v, rows);
  const blocks = new ColumnNorms(cols);
  blocks.add(v.subarray(0, 3 * cols), 3);
  blocks.add(v.subarray(3 * cols), 4);
  const m = Float32Array.from({ length: cols }, (_, j) => j + 1);
  assert.deepEqual(whole.factors(m), blocks.factors(m));
  const f = whole.factors(m);
  for (let j = 0; j < cols; j++) {
    let s = 0;
    for (let i = 0; i < rows; i++) s += v[i * cols + j]! ** 2;
    assert.equal(f[j], Math.fround(m[j]! / Math.fround(Math.sqrt(s))));
  }
  const scaled = v.slice();
  applyColumnFactors(scaled, rows, f);
  assert.equal(scaled[cols + 2], Math.fround(v[cols + 2]! * f[2]!));
});

Deno.test("column DoRA (embedding) rescales every column to its magnitude, in two passes", async () => {
  const V = 9;
  const D = 4;
  const r = 2;
  const vals = (n: number, k: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.cos(i * k));
  const w = tensorFromBytes("BF16", [V, D], encodeF32("BF16", vals(V * D, 1.3)));
  const a = tensorFromBytes("F32", [r, V], encodeF32("F32", vals(r * V, 0.7)));
  const b = tensorFromBytes("F32", [D, r], encodeF32("F32", vals(D * r, 2.1)));
  const m = tensorFromBytes("F32", [D], encodeF32("F32", new Float32Array([1, 2, 3, 4])));
  let passes = 0;
  const counting = {
    ...w,
    read: (s?: number, e?: number) => {
      if ((s ?? 0) === 0) passes++;
      return w.read(s, e);
    },
  };
  const out = await mergeLoraTensor(
    { weight: counting, loraA: a, loraB: b, scale: 0.5, embedding: true, magnitude: m },
    { backend: referenceBackend(), outDtype: "F32", blockBytes: 16 },
  );
  assert.equal(passes, 2);
  const y = decodeF32("F32", out.data);
  for (let j = 0; j < D; j++) {
    let s = 0;
    for (let i = 0; i < V; i++) s += y[i * D + j]! ** 2;
    assert.ok(Math.abs(Math.sqrt(s) - (j + 1)) < 1e-5, `column ${j}`);
  }
});
