import assert from "node:assert/strict";
import { encodeF32 } from "../../../formats/dtype.ts";
import { StateDict, tensorFromBytes, type TensorRef } from "../../../formats/state_dict.ts";
import { TensorComparer, ulpDistance, ulpDType } from "../../../pipelines/diff/_compare.ts";
import { diffStateDicts, unflatten } from "../../../pipelines/diff/diff.ts";

const f32 = (shape: number[], v: ArrayLike<number>) =>
  tensorFromBytes("F32", shape, new Uint8Array(new Float32Array(v).buffer));
const bf16 = (shape: number[], v: ArrayLike<number>) =>
  tensorFromBytes("BF16", shape, encodeF32("BF16", new Float32Array(v)));

/** A ref that counts the rows read and fails when a row is read twice. */
function counted(ref: TensorRef, seen: number[]): TensorRef {
  return {
    dtype: ref.dtype,
    shape: ref.shape,
    async read(s?: number, e?: number) {
      const start = s ?? 0, end = e ?? (ref.shape[0] ?? 1);
      for (let r = start; r < end; r++) {
        if (seen[r]) throw new Error(`row ${r} read twice`);
        seen[r] = 1;
      }
      return await ref.read(s, e);
    },
  };
}

function noRead(ref: TensorRef): TensorRef {
  return { dtype: ref.dtype, shape: ref.shape, read: () => Promise.reject(new Error("read")) };
}

Deno.test("ulpDistance() counts representable values between two numbers of the wider dtype", () => {
  assert.equal(ulpDType("BF16", "BF16"), "BF16");
  assert.equal(ulpDType("BF16", "F32"), "F32");
  assert.equal(ulpDType("F16", "BF16"), "F32");
  assert.equal(ulpDType("I64", "I64"), "int");
  assert.equal(ulpDistance("BF16", 1, 1.0078125), 1); // bf16 neighbours above 1
  assert.equal(ulpDistance("BF16", 1, 1.015625), 2);
  assert.equal(ulpDistance("F32", 1, 1 + 2 ** -23), 1);
  assert.equal(ulpDistance("F16", 1, 1 + 2 ** -10), 1);
  assert.equal(ulpDistance("F64", 1, 1 + 2 ** -52), 1);
  assert.equal(ulpDistance("F32", 0, -0), 0);
  // across zero: the smallest subnormals on both sides are two steps apart
  assert.equal(ulpDistance("F32", 2 ** -149, -(2 ** -149)), 2);
  assert.equal(ulpDistance("F16", 2 ** -24, -(2 ** -24)), 2);
  assert.equal(ulpDistance("int", 7, 3), 4);
});

Deno.test("TensorComparer counts NaN against NaN as equal and NaN against a number as a difference", () => {
  const c = new TensorComparer("F32", "F32");
  const b = (v: number[]) => new Uint8Array(new Float32Array(v).buffer);
  c.add(b([NaN, NaN, 1, -0]), b([NaN, 2, 1, 0]));
  assert.equal(c.figures.differing, 1);
  assert.equal(c.figures.nanMismatch, 1);
  assert.equal(c.figures.maxUlp, Infinity);
  assert.equal(c.figures.maxAbs, 0);
  assert.deepEqual(c.figures.first, { index: 1, a: NaN, b: 2 });
});

Deno.test("TensorComparer tells I64 values apart beyond 2^53", () => {
  const c = new TensorComparer("I64", "I64");
  const b = (v: bigint[]) => new Uint8Array(new BigInt64Array(v).buffer);
  c.add(b([2n ** 60n, 5n]), b([2n ** 60n + 1n, 5n]));
  assert.equal(c.figures.differing, 1);
  assert.equal(c.figures.first?.index, 0);
});

Deno.test("diffStateDicts() of a state dict with itself finds every tensor equal", async () => {
  const sd = new StateDict([
    ["a", f32([3, 2], [1, 2, 3, 4, 5, 6])],
    ["b", bf16([4], [0.5, -1, 2, 8])],
    ["s", f32([], [3])],
  ]);
  const r = await diffStateDicts(sd, sd);
  assert.equal(r.equal, true);
  assert.deepEqual(r.tensors.map((t) => t.status), ["equal", "equal", "equal"]);
  assert.equal(r.totals.elements, 11);
  assert.equal(r.totals.differing, 0);
  for (const t of r.tensors) {
    assert.equal(t.relNorm, 0);
    assert.equal(t.cosine, 1);
    assert.equal(t.maxAbs, 0);
  }
});

Deno.test("diffStateDicts() finds one flipped element with its index, across row blocks", async () => {
  const shape = [40, 3, 5];
  const n = 600;
  const v = Float32Array.from({ length: n }, (_, i) => Math.sin(i) + 2);
  const w = v.slice();
  const flat = 29 * 15 + 2 * 5 + 4; // [29, 2, 4]
  w[flat] = -w[flat]!;
  const seenA: number[] = [], seenB: number[] = [];
  const a = new StateDict([["t", counted(f32(shape, v), seenA)]]);
  const b = new StateDict([["t", counted(f32(shape, w), seenB)]]);
  // 60 bytes per row, 128-byte blocks: two rows per block, 20 blocks
  const r = await diffStateDicts(a, b, { blockBytes: 128 });
  const t = r.tensors[0]!;
  assert.equal(t.status, "different");
  assert.equal(t.differing, 1);
  assert.deepEqual(t.first?.at, [29, 2, 4]);
  assert.deepEqual(t.maxAbsAt, [29, 2, 4]);
  assert.equal(t.first?.a, v[flat]);
  assert.equal(t.first?.b, -v[flat]!);
  assert.equal(t.maxAbs, 2 * v[flat]!);
  assert.equal(r.equal, false);
  assert.equal(seenA.filter(Boolean).length, 40, "every row of A read once");
  assert.equal(seenB.filter(Boolean).length, 40, "every row of B read once");
  // figures against a float64 computation
  let sa = 0, sd = 0, dot = 0, sb = 0;
  for (let i = 0; i < n; i++) {
    sa += v[i]! * v[i]!;
    sb += w[i]! * w[i]!;
    sd += (v[i]! - w[i]!) ** 2;
    dot += v[i]! * w[i]!;
  }
  assert.ok(Math.abs(t.relNorm - Math.sqrt(sd / sa)) < 1e-12);
  assert.ok(Math.abs(t.cosine - dot / Math.sqrt(sa * sb)) < 1e-12);
});

Deno.test("diffStateDicts() reports shape mismatches without reading them, and names on one side", async () => {
  const a = new StateDict([
    ["same", f32([2], [1, 2])],
    ["reshaped", noRead(f32([2, 2], [1, 2, 3, 4]))],
    ["gone", f32([1], [1])],
  ]);
  const b = new StateDict([
    ["new", f32([1], [1])],
    ["reshaped", noRead(f32([4], [1, 2, 3, 4]))],
    ["same", f32([2], [1, 2])],
  ]);
  const r = await diffStateDicts(a, b);
  assert.equal(r.equal, false);
  assert.deepEqual(r.onlyA, ["gone"]);
  assert.deepEqual(r.onlyB, ["new"]);
  assert.deepEqual(r.tensors.map((t) => [t.name, t.status]), [["same", "equal"], [
    "reshaped",
    "shape",
  ]]);
  assert.deepEqual(r.tensors[1]!.shapeA, [2, 2]);
  assert.deepEqual(r.tensors[1]!.shapeB, [4]);
  assert.equal(r.totals.shape, 1);
  assert.equal(r.totals.onlyA, 1);
  assert.equal(r.totals.onlyB, 1);
});

Deno.test("diffStateDicts() judges by the tolerance: ulps of the wider dtype or an absolute bound", async () => {
  const a = new StateDict([["w", bf16([2], [1, 2])]]);
  const b = new StateDict([["w", bf16([2], [1.0078125, 2])]]); // one bf16 ulp
  const exact = await diffStateDicts(a, b);
  assert.equal(exact.tensors[0]!.status, "different");
  assert.equal(exact.tensors[0]!.maxUlp, 1);
  assert.equal(exact.equal, false);
  const ulp = await diffStateDicts(a, b, { tolerance: { ulp: 1 } });
  assert.equal(ulp.tensors[0]!.status, "close");
  assert.equal(ulp.equal, true);
  assert.equal((await diffStateDicts(a, b, { tolerance: { abs: 0.01 } })).equal, true);
  assert.equal((await diffStateDicts(a, b, { tolerance: { abs: 0.005 } })).equal, false);
});

Deno.test("diffStateDicts() compares values across dtypes in ulps of the wider one", async () => {
  const a = new StateDict([["w", bf16([2], [1, 2])]]);
  const b = new StateDict([["w", f32([2], [1, 2 + 2 ** -22])]]);
  const r = await diffStateDicts(a, b);
  assert.equal(r.tensors[0]!.ulpOf, "F32");
  assert.equal(r.tensors[0]!.maxUlp, 1);
  assert.equal(r.tensors[0]!.status, "different");
  const same = new StateDict([["w", f32([2], [1, 2])]]);
  const byDtype = await diffStateDicts(a, same);
  assert.equal(byDtype.tensors[0]!.status, "dtype");
  assert.equal(byDtype.equal, false);
  const allowed = await diffStateDicts(a, same, { allowDtype: true });
  assert.equal(allowed.tensors[0]!.status, "equal");
  assert.equal(allowed.equal, true);
});

Deno.test("unflatten() turns a flat index into one index per dimension", () => {
  assert.deepEqual(unflatten(0, []), []);
  assert.deepEqual(unflatten(7, [2, 4]), [1, 3]);
  assert.deepEqual(unflatten(23, [2, 3, 4]), [1, 2, 3]);
});
