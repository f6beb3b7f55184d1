import assert from "node:assert/strict";
import { decodeF32 } from "../../formats/dtype.ts";
import type { TensorRef } from "../../formats/state_dict.ts";
import { rowCount } from "../../formats/state_dict.ts";
import { mergeLora } from "../../merge/lora.ts";
import type { MergeReport } from "../../merge/lora_types.ts";
import { openCase } from "./_lora_fixtures.ts";

/** ‖W' − W‖/‖W‖ and max |W' − W| by a plain float64 loop over whole tensors. */
async function exactChange(w: TensorRef, merged: TensorRef) {
  const a = decodeF32(w.dtype, await w.read());
  const b = decodeF32(merged.dtype, await merged.read());
  let sw = 0, sd = 0, max = 0;
  for (let i = 0; i < a.length; i++) {
    sw += a[i]! * a[i]!;
    sd += (b[i]! - a[i]!) ** 2;
    max = Math.max(max, Math.abs(b[i]! - a[i]!));
  }
  return { relNorm: Math.sqrt(sd) / Math.sqrt(sw), maxAbs: max };
}

/**
 * Reads every row of `ref` in blocks of `step` rows, in order, as the writers do: into a block
 * buffer of their own (`readInto`, the CPU backend merges in place) or with `read`.
 */
async function readInBlocks(ref: TensorRef, step: number, into: boolean): Promise<void> {
  const rows = rowCount(ref.shape);
  const buf = new Uint8Array(step * (ref.shape[1] ?? 1) * 4);
  for (let s = 0; s < rows; s += step) {
    const e = Math.min(rows, s + step);
    if (into) await ref.readInto!(s, e, buf);
    else await ref.read(s, e);
  }
}

async function checkCase(
  name: string,
  step: number,
  backend: "cpu" | "webgpu" = "cpu",
  into = false,
): Promise<MergeReport> {
  const { base, adapters } = await openCase(name);
  const { stateDict, report } = await mergeLora(base, adapters, { backend, blockBytes: 96 });
  try {
    assert.ok(report.modules.length > 0);
    assert.equal(report.changes.length, 0, "nothing measured before anything is read");
    for (const m of report.modules) await readInBlocks(stateDict.require(m.tensor), step, into);
    assert.deepEqual(report.changes.map((c) => c.tensor), report.modules.map((m) => m.tensor));
    // the base as stored, opened again (the merge owns the first one)
    const { base: plain } = await openCase(name);
    await using _ = plain;
    for (const c of report.changes) {
      const want = await exactChange(plain.require(c.tensor), stateDict.require(c.tensor));
      assert.ok(
        Math.abs(c.relNorm - want.relNorm) < 1e-9,
        `${c.tensor}: ${c.relNorm} vs ${want.relNorm}`,
      );
      assert.equal(c.maxAbs, want.maxAbs, c.tensor);
      assert.ok(c.relNorm > 0, c.tensor);
    }
  } finally {
    await stateDict.close();
  }
  return report;
}

Deno.test("`mergeLora()` measures ||dW||/||W|| of each merged module while the writer reads it", async () => {
  await checkCase("linear_bf16", 1);
  await checkCase("linear_bf16", 3);
  // in place: W goes from the file into the kernel's memory, the result into the writer's buffer
  await checkCase("linear_bf16", 1, "cpu", true);
  await checkCase("linear_bf16", 3, "cpu", true);
});

Deno.test("`mergeLora()` measures the change of DoRA modules after their column norms", async () => {
  const report = await checkCase("dora", 2);
  assert.ok(report.modules.some((m) => m.dora !== false));
});

Deno.test("`mergeLora()` on WebGPU measures the change from the blocks the kernel returns", async () => {
  // Fails (does not skip) where no WebGPU adapter exists: CI must have one (llvmpipe here).
  const report = await checkCase("linear_bf16", 2, "webgpu");
  assert.equal(report.backend?.kind, "webgpu");
  await checkCase("dora", 2, "webgpu");
});

Deno.test("`mergeLora()` counts rows read twice, or computed ahead and dropped, once", async () => {
  const { base, adapters } = await openCase("linear_bf16");
  const { stateDict, report } = await mergeLora(base, adapters, { backend: "cpu", blockBytes: 96 });
  try {
    const m = report.modules[0]!;
    const ref = stateDict.require(m.tensor);
    const rows = rowCount(ref.shape);
    assert.ok(rows >= 4);
    await ref.read(0, 2); // computes [2, 4) ahead
    await ref.read(0, 2); // read again: not counted twice; the range ahead is dropped
    assert.equal(report.changes.length, 0);
    await ref.read(2, rows);
    assert.equal(report.changes.length, 1);
    const once = report.changes[0]!;
    const { base: plain } = await openCase("linear_bf16");
    await using _ = plain;
    const want = await exactChange(plain.require(m.tensor), ref);
    assert.ok(Math.abs(once.relNorm - want.relNorm) < 1e-9);
  } finally {
    await stateDict.close();
  }
});
