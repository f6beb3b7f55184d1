import assert from "node:assert/strict";
import { bf16ToF32, decodeF32, f16ToF32 } from "../../formats/dtype.ts";
import { doraSumOfSquares, mergeRowsReference } from "../../kernels/reference.ts";
import type { MergeDType } from "../../kernels/types.ts";
import { request, seeded } from "./_corpus.ts";

function ulp(dtype: MergeDType, x: number): number {
  const mant = dtype === "BF16" ? 7 : dtype === "F16" ? 10 : 23;
  const minExp = dtype === "F16" ? -14 : -126;
  const e = Math.max(Math.floor(Math.log2(Math.abs(x) || 2 ** minExp)), minExp);
  return 2 ** (e - mant);
}

function decodeOut(dtype: MergeDType, bytes: Uint8Array): Float32Array {
  return decodeF32(dtype, bytes);
}

Deno.test("`mergeRowsReference()` is within half an output ulp plus f32 slack of a float64 merge", () => {
  for (
    const [wd, od] of [["BF16", "BF16"], ["F16", "F16"], ["F32", "BF16"], ["BF16", "F32"]] as const
  ) {
    for (const rank of [1, 8, 64]) {
      const rows = 4, cols = 96;
      const req = request(wd, od, rows, cols, rank, rank * 7 + 3);
      // finite weights only: rebuild W from plain random values
      const wf = seeded(rows * cols, rank, 6);
      const wBytes = new Uint8Array(rows * cols * (wd === "F32" ? 4 : 2));
      const dv = new DataView(wBytes.buffer);
      for (let i = 0; i < wf.length; i++) {
        if (wd === "F32") dv.setFloat32(i * 4, wf[i]!, true);
        else {dv.setUint16(
            i * 2,
            new Uint32Array(wf.buffer)[i]! >>> (wd === "BF16" ? 16 : 19),
            true,
          );}
      }
      req.w = wBytes;
      const w = decodeF32(wd, wBytes);
      const out = decodeOut(od, mergeRowsReference(req));
      const s = Math.fround(req.scale);
      let checked = 0;
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          let sum = 0, mag = 0;
          for (let k = 0; k < rank; k++) {
            const p = req.b[i * rank + k]! * req.a[k * cols + j]!;
            sum += p;
            mag += Math.abs(p);
          }
          const wv = w[i * cols + j]!;
          if (!Number.isFinite(wv)) continue;
          const exact = wv + s * sum;
          const slack = (rank + 3) * 2 ** -24 * (Math.abs(wv) + Math.abs(s) * mag);
          const got = out[i * cols + j]!;
          assert.ok(
            Math.abs(got - exact) <= 0.5 * ulp(od, exact) + slack,
            `${req.name} [${i},${j}]: ${got} vs exact ${exact}`,
          );
          checked++;
        }
      }
      assert.ok(checked > rows * cols * 0.9);
    }
  }
});

Deno.test("`mergeRowsReference()` rounds once, to nearest even, and writes canonical NaNs", () => {
  const base = {
    name: "t",
    wDtype: "F32" as const,
    rows: 1,
    cols: 4,
    rank: 1,
    a: new Float32Array([1, 1, 1, 1]),
    scale: 1,
  };
  // 1 + 2^-8 is a bf16 tie: rounds to even (1); 1 + 3·2^-8 rounds up to 1 + 2^-6
  const w = new Uint8Array(new Float32Array([1, 1, NaN, -Infinity]).buffer);
  const out = mergeRowsReference({
    ...base,
    outDtype: "BF16",
    w,
    b: new Float32Array([2 ** -8]),
  });
  const bits = new Uint16Array(out.buffer);
  assert.equal(bf16ToF32(bits[0]!), 1);
  assert.equal(bits[2], 0xffff);
  assert.equal(bits[3], 0xff80);
  const f16 = new Uint16Array(
    mergeRowsReference({ ...base, outDtype: "F16", w, b: new Float32Array([3 * 2 ** -11]) }).buffer,
  );
  // 1 + 3·2^-11 lies halfway between 1 + 2^-10 and 1 + 2^-9: the tie goes to the even mantissa
  assert.equal(f16ToF32(f16[0]!), 1 + 2 ** -9);
  assert.equal(f16[2], 0x7e00);
  const f32 = new Uint32Array(
    mergeRowsReference({ ...base, outDtype: "F32", w, b: new Float32Array([1]) }).buffer,
  );
  assert.equal(f32[2], 0x7fc00000);
});

Deno.test("`mergeRowsReference()` scales DoRA rows by magnitude over the merged row norm", () => {
  const rows = 3, cols = 300, rank = 4;
  const req = request("F32", "F32", rows, cols, rank, 11, { dora: true });
  // Finite weights only, so that every row is checked: W from plain random values.
  const w = seeded(rows * cols, 5, 6);
  req.w = new Uint8Array(w.buffer);
  const dora = decodeF32("F32", mergeRowsReference(req));
  const s = Math.fround(req.scale);
  let checked = 0;
  for (let i = 0; i < rows; i++) {
    // float64: y = W + s·B·A, norm = ||y||, out = m / norm · y
    const y = new Float64Array(cols);
    for (let j = 0; j < cols; j++) {
      let sum = 0;
      for (let k = 0; k < rank; k++) sum += req.b[i * rank + k]! * req.a[k * cols + j]!;
      y[j] = w[i * cols + j]! + s * sum;
    }
    const norm = Math.sqrt(y.reduce((acc, v) => acc + v * v, 0));
    const f = req.magnitude![i]! / norm;
    assert.ok(Number.isFinite(f) && Math.abs(Math.abs(f) - 1) > 0.1, `row ${i}: factor ${f}`);
    const big = Math.max(...y.map(Math.abs));
    for (let j = 0; j < cols; j++) {
      const want = f * y[j]!;
      const got = dora[i * cols + j]!;
      // f32 rounding of the k-sum, the norm over 300 squares and the two products.
      const tol = 2 ** -24 * (Math.abs(want) * 8 + Math.abs(f) * big * (rank + 4));
      assert.ok(Math.abs(got - want) <= tol, `[${i},${j}]: ${got} vs float64 ${want}`);
      checked++;
    }
  }
  assert.equal(checked, rows * cols);
});

Deno.test("`doraSumOfSquares()` is the float64 sum of squares up to f32 rounding, over all 256 lanes", () => {
  assert.equal(doraSumOfSquares(new Float32Array([3, 4])), 25);
  for (const n of [1, 255, 256, 257, 1000, 4099]) {
    const y = seeded(n, n, 8);
    const exact = y.reduce((acc, v) => acc + v * v, 0);
    const got = doraSumOfSquares(y);
    assert.ok(
      Math.abs(got - exact) <= exact * 2 ** -24 * (n / 256 + 10),
      `n=${n}: ${got} vs ${exact}`,
    );
    // A change in any one element moves the sum (no lane is dropped).
    for (const at of [0, n - 1, Math.floor(n / 2)]) {
      const z = y.slice();
      z[at] = 64;
      assert.ok(doraSumOfSquares(z) > got + 4000, `n=${n}: element ${at} ignored`);
    }
  }
});

Deno.test("`doraSumOfSquares()` sums each lane's strided squares first and adds the lanes in a pairwise tree: four 2^-24 in odd lanes survive beside a 1", () => {
  // y² = [1, 2^-24, 0, 2^-24, 0, 2^-24, 0, 2^-24]: the odd lanes meet the 1 only at the tree's last
  // step, as 4 · 2^-24 = 2^-22. Summed in any order that adds a 2^-24 to the 1 alone, each is lost
  // (1 + 2^-24 rounds to even, to 1): a running sum gives 1, pairs (0,1), (2,3), … give 1 + 2^-23.
  const e = 2 ** -12;
  const y = new Float32Array([1, e, 0, e, 0, e, 0, e]);
  assert.equal(doraSumOfSquares(y), 1 + 2 ** -22);
  // and what a DoRA merge makes of it: norm = f32(sqrt(1 + 2^-22)) = 1 + 2^-23, m / norm with
  // m = 1 is 1 - 2^-23 (W itself at rank 1 with B = 0)
  const out = mergeRowsReference({
    name: "dora.lanes",
    w: new Uint8Array(y.buffer),
    wDtype: "F32",
    outDtype: "F32",
    rows: 1,
    cols: 8,
    rank: 1,
    a: new Float32Array(8).fill(1),
    b: new Float32Array(1),
    scale: 1,
    magnitude: new Float32Array([1]),
  });
  const f = 1 - 2 ** -23;
  assert.deepEqual([...decodeOut("F32", out)], [...y].map((v) => Math.fround(f * v)));
});

Deno.test("`mergeRowsReference()` validates shapes before computing", () => {
  const req = request("BF16", "BF16", 2, 8, 2, 1);
  assert.throws(() => mergeRowsReference({ ...req, a: new Float32Array(15) }), {
    code: "MERGE_SHAPE",
  });
  assert.throws(() => mergeRowsReference({ ...req, outDtype: "I8" as never }), {
    code: "MERGE_DTYPE",
  });
  assert.throws(() => mergeRowsReference({ ...req, scale: NaN }), { code: "MERGE_SCALE" });
  // Dimensions must be whole and not negative, even where the buffer lengths happen to agree:
  // 0.5 rows of 8 BF16 columns are 8 bytes of W and, at rank 2, one element of B.
  const half = { ...req, rows: 0.5, w: new Uint8Array(8), b: new Float32Array(1) };
  assert.throws(() => mergeRowsReference(half), {
    code: "MERGE_SHAPE",
    message: /: rows is 0\.5$/,
  });
  const negative = { ...req, rows: -1, rank: 0, a: new Float32Array(0), b: new Float32Array(0) };
  assert.throws(() => mergeRowsReference(negative), {
    code: "MERGE_SHAPE",
    message: /: rows is -1$/,
  });
  assert.throws(() => mergeRowsReference({ ...req, rank: NaN }), {
    code: "MERGE_SHAPE",
    message: /: rank is NaN$/,
  });
});
