import assert from "node:assert/strict";
import {
  blockChangeSums,
  type CpuTask,
  KernelCache,
  runCpuTask,
} from "../../../kernels/cpu/_rows.ts";
import { addBlockChange } from "../../../merge/_lora_change.ts";
import { MERGE_DTYPE_SIZE, type MergeDType } from "../../../kernels/types.ts";
import { bf16ToF32, decodeF32, encodeF32, f16ToF32 } from "../../../formats/dtype.ts";
import { createCpuBackend } from "../../../kernels/cpu/backend.ts";
import { oneRowF32Task, seeded, weights } from "../_corpus.ts";

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

/** Σ W², Σ ΔW² and max |ΔW| in float64, element by element (exact for the small values below). */
function exactSums(w: readonly number[], o: readonly number[]) {
  let sumSqW = 0, sumSqDelta = 0, maxAbs = 0;
  w.forEach((x, i) => {
    const d = o[i]! - x;
    sumSqW += x * x;
    sumSqDelta += d * d;
    maxAbs = Math.max(maxAbs, Math.abs(d));
  });
  return { sumSqW, sumSqDelta, maxAbs };
}

Deno.test("`blockChangeSums()` finds the largest |ΔW| wherever it sits: either lane of either 8-element SIMD group or the scalar tail, beside equal runners-up", () => {
  const mem = new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
  const bytes = new Uint8Array(mem.buffer as unknown as ArrayBuffer);
  // 19 elements: two SIMD groups (the kernel keeps one max per f64 lane: even and odd elements)
  // and a scalar tail of 3. Every other change is at most 5 in size, 5 itself in both lanes and
  // the tail; the largest, -6 (a fall), is put at each position in turn.
  const w = [2, 1, -3, 0.5, 4, -2, 1.5, 0, -1, 3, 2.5, -4, 1, 0.25, -0.5, 6, 3, -2, 1];
  const change = [1, 5, -2, 0, 3, -5, 2, -1, 0.5, 4, -5, 1, 5, -3, -0.5, 2, 5, -5, 1];
  for (const [wd, od] of [["BF16", "BF16"], ["BF16", "F16"], ["F16", "F16"], ["F32", "BF16"]]) {
    for (let at = 0; at < w.length; at++) {
      const d = change.map((v, i) => (i === at ? -6 : v));
      const o = w.map((x, i) => x + d[i]!);
      const want = exactSums(w, o);
      assert.equal(want.maxAbs, 6);
      bytes.set(encodeF32(wd as MergeDType, Float32Array.from(w)), 0);
      bytes.set(encodeF32(od as MergeDType, Float32Array.from(o)), 4096);
      const t = { wDtype: wd, outDtype: od, wPtr: 0, outPtr: 4096, row0: 0, row1: 1, cols: 19 };
      assert.deepEqual(blockChangeSums(mem, t as CpuTask), want, `${wd}>${od}, -6 at ${at}`);
    }
  }
});

Deno.test("`runCpuTask()` measures the change only for a task that asks for it", () => {
  const mem = new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
  const f32 = new Float32Array(mem.buffer as unknown as ArrayBuffer);
  // one row of 3 columns (all scalar tail), rank 1: W' = W + 0.5 · 1 · 1 for W at 0, A at 64,
  // B at 128, the output at 192 (byte offsets)
  f32.set([1, -2, 3], 0);
  f32.set([1, 1, 1], 16);
  f32.set([1], 32);
  const task = oneRowF32Task(1, 192, 0.5);
  const cache = new KernelCache(mem);
  assert.equal(runCpuTask(mem, cache, task), undefined);
  assert.deepEqual([...f32.subarray(48, 51)], [1.5, -1.5, 3.5]);
  assert.deepEqual(runCpuTask(mem, cache, { ...task, change: true }), {
    sumSqW: 14,
    sumSqDelta: 0.75,
    maxAbs: 0.5,
  });
});

Deno.test("`mergeRowsInto()` adds a block's exact Σ W², Σ ΔW² and max |ΔW| to the request's sums, merged on this thread and split between workers", async () => {
  // 6 × 40 (two 16-column tiles and a tail of 8), rank 2: W whole numbers in -5 … 5, A and B
  // quarters and whole numbers, so that s·B·A and W' are exact in bf16 and every sum exact in f64
  const rows = 6, cols = 40, rank = 2, scale = 2;
  const w = Array.from(
    { length: rows * cols },
    (_, e) => ((e * 3 + Math.floor(e / cols)) % 11) - 5,
  );
  const a = Float32Array.from({ length: rank * cols }, (_, e) => ((e * 7) % 9 - 4) / 4);
  const b = Float32Array.from({ length: rows * rank }, (_, e) => (e % 3) - 1);
  const o = w.map((x, e) => {
    const i = Math.floor(e / cols), j = e % cols;
    let acc = 0;
    for (let k = 0; k < rank; k++) acc += b[i * rank + k]! * a[k * cols + j]!;
    return x + scale * acc;
  });
  const block = exactSums(w, o);
  assert.ok(block.sumSqW > 0 && block.sumSqDelta > 0 && block.maxAbs > 1);
  for (const [wd, od] of [["BF16", "BF16"], ["F16", "F32"]] as const) {
    for (const workers of [0, 2]) {
      const cpu = await createCpuBackend({ workers, inlineBelow: 0, chunkElements: 64 });
      try {
        const wBytes = encodeF32(wd, Float32Array.from(w));
        const out = new Uint8Array(rows * cols * MERGE_DTYPE_SIZE[od]);
        // sums already there (an earlier block of the tensor): the block's are added to them
        const change = { sumSqW: 100, sumSqDelta: 10, maxAbs: 1 };
        await cpu.mergeRowsInto({
          name: "exact",
          wDtype: wd,
          outDtype: od,
          rows,
          cols,
          rank,
          a,
          b,
          scale,
          readW: () => Promise.resolve(wBytes),
          change,
        }, out);
        assert.deepEqual([...decodeF32(od, out)], o, `${wd}>${od}, ${workers} workers: W'`);
        assert.deepEqual(change, {
          sumSqW: 100 + block.sumSqW,
          sumSqDelta: 10 + block.sumSqDelta,
          maxAbs: block.maxAbs,
        }, `${wd}>${od}, ${workers} workers`);
      } finally {
        await cpu.dispose();
      }
    }
  }
});
