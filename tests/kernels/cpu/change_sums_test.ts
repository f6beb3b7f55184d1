import assert from "node:assert/strict";
import { blockChangeSums, type CpuTask } from "../../../kernels/cpu/_rows.ts";
import { addBlockChange } from "../../../merge/_lora_change.ts";
import type { MergeDType } from "../../../kernels/types.ts";
import { weights } from "../_corpus.ts";

Deno.test("`blockChangeSums()` equals the scalar sums for every length around the 8-element SIMD groups and every 16-bit pair", () => {
  const mem = new WebAssembly.Memory({ initial: 2, maximum: 16, shared: true });
  const bytes = new Uint8Array(mem.buffer as unknown as ArrayBuffer);
  const pairs: [MergeDType, MergeDType][] = [["BF16", "BF16"], ["BF16", "F16"], ["F16", "F16"]];
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
