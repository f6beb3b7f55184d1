import assert from "node:assert/strict";
import { type ErrorCode, isCkptError } from "../../errors.ts";
import { factorA, factorB, planLayout, type PlanLayoutInput } from "../../merge/layouts.ts";

const base: Omit<PlanLayoutInput, "weightShape" | "aShape" | "bShape"> = {
  module: "m",
  factorKind: "lora",
  fanInFanOut: false,
};

Deno.test("`planLayout()` decides Linear and Conv1D by shape", () => {
  const lin = planLayout({ ...base, weightShape: [6, 4], aShape: [2, 4], bShape: [6, 2] });
  assert.deepEqual(lin, { layout: "linear", transposed: false, rows: 6, cols: 4, rank: 2 });
  // the flag does not override a shape that is unambiguous
  const lin2 = planLayout({
    ...base,
    fanInFanOut: true,
    weightShape: [6, 4],
    aShape: [2, 4],
    bShape: [6, 2],
  });
  assert.equal(lin2.layout, "linear");
  const c1 = planLayout({ ...base, weightShape: [4, 6], aShape: [2, 4], bShape: [6, 2] });
  assert.deepEqual(c1, { layout: "conv1d", transposed: true, rows: 4, cols: 6, rank: 2 });
});

Deno.test("`planLayout()` uses fan_in_fan_out only for square weights", () => {
  const sq = { ...base, weightShape: [4, 4], aShape: [2, 4], bShape: [4, 2] };
  assert.equal(planLayout(sq).layout, "linear");
  assert.equal(planLayout({ ...sq, fanInFanOut: true }).layout, "conv1d");
});

Deno.test("`planLayout()` handles embeddings and convolutions", () => {
  const e = planLayout({
    ...base,
    factorKind: "embedding",
    weightShape: [100, 8],
    aShape: [4, 100],
    bShape: [8, 4],
  });
  assert.deepEqual(e, { layout: "embedding", transposed: true, rows: 100, cols: 8, rank: 4 });
  const c = planLayout({
    ...base,
    weightShape: [8, 4, 3, 3],
    aShape: [2, 4, 3, 3],
    bShape: [8, 2, 1, 1],
  });
  assert.deepEqual(c, { layout: "conv", transposed: false, rows: 8, cols: 36, rank: 2 });
  const c1x1 = planLayout({
    ...base,
    weightShape: [8, 8, 1, 1],
    aShape: [2, 8, 1, 1],
    bShape: [8, 2, 1, 1],
  });
  assert.equal(c1x1.cols, 8);
  const conv1d = planLayout({
    ...base,
    weightShape: [8, 4, 5],
    aShape: [2, 4, 5],
    bShape: [8, 2, 1],
  });
  assert.equal(conv1d.cols, 20);
});

Deno.test("`planLayout()` refuses shapes that do not fit, naming the module and the shapes", async (t) => {
  const bad: [string, Partial<PlanLayoutInput>, ErrorCode][] = [
    ["A cols ≠ W", { weightShape: [6, 4], aShape: [2, 5], bShape: [6, 2] }, "LORA_SHAPE"],
    ["B rows ≠ W", { weightShape: [6, 4], aShape: [2, 4], bShape: [7, 2] }, "LORA_SHAPE"],
    ["ranks differ", { weightShape: [6, 4], aShape: [2, 4], bShape: [6, 3] }, "LORA_SHAPE"],
    ["1-D weight", { weightShape: [6], aShape: [2, 4], bShape: [6, 2] }, "LORA_SHAPE"],
    [
      "3-D factors on 2-D",
      { weightShape: [6, 4], aShape: [2, 4, 1], bShape: [6, 2, 1] },
      "LORA_SHAPE",
    ],
    ["embedding mismatch", {
      factorKind: "embedding",
      weightShape: [100, 8],
      aShape: [4, 99],
      bShape: [8, 4],
    }, "LORA_SHAPE"],
    [
      "conv kernel",
      { weightShape: [8, 4, 3, 3], aShape: [2, 4, 1, 1], bShape: [8, 2, 1, 1] },
      "LORA_SHAPE",
    ],
    [
      "conv B kernel",
      { weightShape: [8, 4, 3, 3], aShape: [2, 4, 3, 3], bShape: [8, 2, 3, 3] },
      "LORA_SHAPE",
    ],
    ["grouped conv (in)", {
      weightShape: [8, 2, 3, 3],
      aShape: [2, 4, 3, 3],
      bShape: [8, 2, 1, 1],
    }, "LORA_CONV_GROUPS"],
    ["grouped conv (B)", {
      weightShape: [8, 4, 3, 3],
      aShape: [4, 4, 3, 3],
      bShape: [8, 2, 1, 1],
    }, "LORA_CONV_GROUPS"],
  ];
  for (const [label, patch, code] of bad) {
    await t.step(label, () => {
      assert.throws(
        () => planLayout({ ...base, weightShape: [], aShape: [], bShape: [], ...patch }),
        (e) => {
          assert.ok(isCkptError(e, code), String(e));
          assert.equal(e.tensor, "m.weight");
          if (code === "LORA_SHAPE") assert.match(e.message, /weight \[.*lora_A \[.*lora_B \[/);
          return true;
        },
      );
    });
  }
});

Deno.test("`factorA()`/`factorB()` swap and transpose the factors of transposed layouts", () => {
  // Conv1D: W [in=3, out=2], A [r=1, in=3], B [out=2, r=1]
  const layout = planLayout({ ...base, weightShape: [3, 2], aShape: [1, 3], bShape: [2, 1] });
  const a = new Float32Array([1, 2, 3]);
  const b = new Float32Array([10, 20]);
  assert.deepEqual([...factorA(layout, a, b)], [10, 20]); // Bᵀ: rank × out
  assert.deepEqual([...factorB(layout, a, b)], [1, 2, 3]); // Aᵀ: in × rank
  const r2 = planLayout({ ...base, weightShape: [3, 2], aShape: [2, 3], bShape: [2, 2] });
  const a2 = new Float32Array([1, 2, 3, 4, 5, 6]); // [[1,2,3],[4,5,6]]
  const b2 = new Float32Array([7, 8, 9, 10]); // [[7,8],[9,10]]
  assert.deepEqual([...factorA(r2, a2, b2)], [7, 9, 8, 10]);
  assert.deepEqual([...factorB(r2, a2, b2)], [1, 4, 2, 5, 3, 6]);
  const lin = planLayout({ ...base, weightShape: [2, 3], aShape: [2, 3], bShape: [2, 2] });
  assert.equal(factorA(lin, a2, b2), a2);
  assert.equal(factorB(lin, a2, b2), b2);
});
