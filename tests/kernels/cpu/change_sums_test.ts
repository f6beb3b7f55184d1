import assert from "node:assert/strict";
import { blockChangeSums, type CpuTask } from "../../../kernels/cpu/_rows.ts";
import { addBlockChange } from "../../../merge/_lora_change.ts";
import { MERGE_DTYPE_SIZE, type MergeDType } from "../../../kernels/types.ts";
import { bf16ToF32, encodeF32, f16ToF32 } from "../../../formats/dtype.ts";
import { seeded, weights } from "../_corpus.ts";

Deno.test("`blockChangeSums()` equals the scalar sums for every length around the 8-element SIMD groups and every 16-bit pair", () => {
  const mem = new WebAssembly.Memory({ initial: 2, maximum: 16, shared: true });
  const bytes = new Uint8Array(mem.buffer as unknown as ArrayBuffer);
  const pairs: [MergeDType, MergeDType][] = [
    ["BF16", "BF16"],
    ["BF16", "F16"],
    ["F16", "BF16"],
    ["F16", "F16"],
  ];
  for (const [wd, od] of pairs) {
    const shapes: [number, number][] = [[1, 1], [1, 7], [1, 8], [1, 9], [3, 17], [5, 64], [7, 129]];
    for (const [rows, cols] of shapes) {
      const n = rows * cols;
      // special values (NaN, ±Inf, subnormals) among random ones, W at 0 and W' at 4096
      const w = weights(wd, n, rows * 31 + cols);
      const o = weights(od, n, rows * 17 + cols + 1);
      bytes.set(w, 0);
      bytes.set(o, 4096);
      const t = {
        wDtype: wd,
        outDtype: od,
        wPtr: 0,
        outPtr: 4096,
        row0: 1 % rows,
        row1: rows,
        cols,
      } as CpuTask;
      const got = blockChangeSums(mem, t);
      const want = { sumSqW: 0, sumSqDelta: 0, maxAbs: 0 };
      const from = t.row0 * cols;
      addBlockChange(want, wd, w.subarray(from * 2), od, o.subarray(from * 2, n * 2));
      const same = (a: number, b: number) =>
        a === b || (Number.isNaN(a) && Number.isNaN(b)) || Math.abs(a - b) <= 1e-12 * Math.abs(b);
      for (const k of ["sumSqW", "sumSqDelta", "maxAbs"] as const) {
        assert.ok(
          same(got[k], want[k]),
          `${wd}>${od} ${rows}x${cols} ${k}: ${got[k]} vs ${want[k]}`,
        );
      }
    }
  }
});

Deno.test("`blockChangeSums()` with f32 on either side equals the scalar sums on finite values, around its 4096-element chunks", () => {
  const mem = new WebAssembly.Memory({ initial: 4, maximum: 16, shared: true });
  const bytes = new Uint8Array(mem.buffer as unknown as ArrayBuffer);
  const pairs: [MergeDType, MergeDType][] = [
    ["F32", "F32"],
    ["F32", "BF16"],
    ["BF16", "F32"],
    ["F16", "F32"],
    ["F32", "F16"],
  ];
  // elements after row0: 1, one short of a chunk, a chunk, one past, two chunks and one
  const shapes: [number, number][] = [[2, 1], [2, 4095], [2, 4096], [1, 4097], [3, 4097]];
  for (const [wd, od] of pairs) {
    for (const [rows, cols] of shapes) {
      const n = rows * cols;
      // finite values only, so that a wrong sum cannot hide behind NaN
      const finite = (dtype: MergeDType, seed: number) =>
        encodeF32(dtype, Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed) * 3));
      const w = finite(wd, 1);
      const o = finite(od, 2);
      bytes.set(w, 0);
      bytes.set(o, 65536);
      const row0 = rows === 1 ? 0 : 1;
      const t = { wDtype: wd, outDtype: od, wPtr: 0, outPtr: 65536, row0, row1: rows, cols };
      const got = blockChangeSums(mem, t as CpuTask);
      const want = { sumSqW: 0, sumSqDelta: 0, maxAbs: 0 };
      const from = row0 * cols;
      const [ws, os] = [MERGE_DTYPE_SIZE[wd], MERGE_DTYPE_SIZE[od]];
      addBlockChange(want, wd, w.subarray(from * ws), od, o.subarray(from * os));
      for (const k of ["sumSqW", "sumSqDelta", "maxAbs"] as const) {
        assert.ok(want[k] > 0 && Number.isFinite(want[k]), `${k} of the scalar sums`);
        assert.ok(
          Math.abs(got[k] - want[k]) <= 1e-12 * want[k],
          `${wd}>${od} ${rows}x${cols} ${k}: ${got[k]} vs ${want[k]}`,
        );
      }
    }
  }
});

Deno.test("`blockChangeSums()` of finite 16-bit blocks equals the scalar sums to 1e-12 for each dtype pair, subnormals included", () => {
  const mem = new WebAssembly.Memory({ initial: 4, maximum: 16, shared: true });
  const bytes = new Uint8Array(mem.buffer as unknown as ArrayBuffer);
  const n = 8 * 1000 + 5;
  // magnitudes from 1e-6 (f16 subnormals) to 100, W' = W plus a small change
  const x = seeded(n, 3, 2).map((v, i) => v * 10 ** ((i % 9) - 6));
  const y = x.map((v, i) => v + (i % 4 === 0 ? 0 : v * 0.01 * ((i % 7) - 3)));
  for (const wd of ["BF16", "F16"] as const) {
    for (const od of ["BF16", "F16"] as const) {
      const w = encodeF32(wd, x), o = encodeF32(od, y);
      bytes.set(w, 0);
      bytes.set(o, 65536);
      const t = { wDtype: wd, outDtype: od, wPtr: 0, outPtr: 65536, row0: 0, row1: 1, cols: n };
      const got = blockChangeSums(mem, t as CpuTask);
      const want = { sumSqW: 0, sumSqDelta: 0, maxAbs: 0 };
      addBlockChange(want, wd, w, od, o);
      for (const k of ["sumSqW", "sumSqDelta", "maxAbs"] as const) {
        assert.ok(want[k] > 0 && Number.isFinite(want[k]), `${wd}>${od} ${k} is ${want[k]}`);
        assert.ok(
          Math.abs(got[k] - want[k]) <= 1e-12 * want[k],
          `${wd}>${od} ${k}: ${got[k]} vs ${want[k]}`,
        );
      }
    }
  }
});

Deno.test("`blockChangeSums()` decodes every one of the 65,536 bf16 and f16 patterns as formats/dtype does", () => {
  const mem = new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
  const u16 = new Uint16Array(mem.buffer as unknown as ArrayBuffer);
  const decoders = { BF16: bf16ToF32, F16: f16ToF32 } as const;
  for (const dtype of ["BF16", "F16"] as const) {
    // one element W = the pattern, W' = +0: Σ W² is its square and max |ΔW| its size (NaN skipped)
    const t = { wDtype: dtype, outDtype: dtype, wPtr: 0, outPtr: 64, row0: 0, row1: 1, cols: 1 };
    u16[32] = 0;
    let wrong = 0;
    for (let p = 0; p < 65536; p++) {
      u16[0] = p;
      const x = decoders[dtype](p);
      const got = blockChangeSums(mem, t as CpuTask);
      if (!Object.is(got.sumSqW, x * x) || got.maxAbs !== (Number.isNaN(x) ? 0 : Math.abs(x))) {
        wrong++;
      }
    }
    assert.equal(wrong, 0, `${dtype}: ${wrong} patterns decoded otherwise`);
  }
});
