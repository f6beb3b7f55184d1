import assert from "node:assert/strict";
import { foldDispatch, planMerge } from "../../gpu/merge_plan.ts";

const LLVMPIPE = {
  maxStorageBufferBindingSize: 128 << 20,
  maxBufferSize: 2 ** 31 - 1,
  maxComputeWorkgroupsPerDimension: 65535,
};

Deno.test("`foldDispatch()` folds more than 65535 workgroups into two dimensions", () => {
  assert.deepEqual(foldDispatch(10, 65535), [10, 1]);
  assert.deepEqual(foldDispatch(65535, 65535), [65535, 1]);
  const [x, y] = foldDispatch(65536, 65535);
  assert.ok(x <= 65535 && y <= 65535 && x * y >= 65536 && y === 2);
  const big = 1_000_000_007;
  const [bx, by] = foldDispatch(big, 65535);
  assert.ok(bx <= 65535 && by <= 65535 && bx * by >= big && (bx - 1) * by < big);
  assert.throws(() => foldDispatch(65535 * 65535 + 1, 65535), { code: "GPU_DISPATCH_TOO_LARGE" });
});

Deno.test("`planMerge()` splits blocks to stay within the 128 MiB binding", () => {
  // 32000 x 8192 bf16 = 500 MiB of W: four blocks of at most 128 MiB each
  const plan = planMerge(
    { rows: 32000, cols: 8192, rank: 16, wDtype: "BF16", outDtype: "BF16", dora: false },
    LLVMPIPE,
  );
  assert.equal(plan.spec.variant, "aligned");
  assert.ok(plan.blocks.length >= 4);
  let next = 0;
  for (const b of plan.blocks) {
    assert.equal(b.row0, next);
    next = b.row1;
    assert.ok(b.wBytes <= 128 << 20 && b.outBytes <= 128 << 20 && b.bBytes <= 128 << 20);
    assert.ok(b.dispatch[0] <= 65535 && b.dispatch[1] <= 65535);
    assert.ok(b.dispatch[0] * b.dispatch[1] >= b.workgroups);
  }
  assert.equal(next, 32000);
  // f32 output doubles the bytes per row: more blocks
  const f32 = planMerge(
    { rows: 32000, cols: 8192, rank: 16, wDtype: "BF16", outDtype: "F32", dora: false },
    LLVMPIPE,
  );
  assert.ok(f32.blocks.length >= 2 * plan.blocks.length - 1);
});

Deno.test("`planMerge()` picks the kernel by shape and folds big dispatches", () => {
  const shape = { rows: 11008, cols: 4096, rank: 64, wDtype: "BF16", outDtype: "BF16" } as const;
  const flat = planMerge({ ...shape, cols: 4095, dora: false }, LLVMPIPE, { workgroupSize: 1 });
  assert.equal(flat.spec.variant, "flat");
  assert.ok(flat.blocks[0]!.workgroups > 65535);
  assert.ok(flat.blocks[0]!.dispatch[1] > 1);
  assert.equal(planMerge({ ...shape, dora: true }, LLVMPIPE).spec.variant, "dora");
  assert.equal(planMerge({ ...shape, rows: 0, dora: false }, LLVMPIPE).blocks.length, 1);
});

Deno.test("`planMerge()` refuses what cannot fit with GPU_LIMIT naming the limit", () => {
  const small = { ...LLVMPIPE, maxStorageBufferBindingSize: 1 << 20 };
  assert.throws(
    () =>
      planMerge(
        { rows: 4, cols: 1 << 20, rank: 1, wDtype: "BF16", outDtype: "BF16", dora: false },
        small,
      ),
    (e: { code?: string; details?: { limit?: string } }) =>
      e.code === "GPU_LIMIT" && e.details?.limit === "maxStorageBufferBindingSize",
  );
});
