import assert from "node:assert/strict";
import { join } from "node:path";
import { phaseClock } from "../../formats/phase_clock.ts";
import { castRef } from "../../formats/cast.ts";
import { openSafetensors, writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { createCpuBackend } from "../../kernels/cpu/backend.ts";
import { mergeLora } from "../../merge/lora.ts";
import { adapter, P, seq, t } from "../merge/_lora_helpers.ts";

Deno.test("`phaseClock` counts nothing while disabled", async () => {
  phaseClock.disable();
  const dir = await Deno.makeTempDir();
  try {
    const sd = new StateDict([["a", tensorFromBytes("F32", [4], new Uint8Array(16))]]);
    await writeSafetensors(join(dir, "a.safetensors"), sd);
    assert.deepEqual(phaseClock.snapshot(), {});
    assert.equal(phaseClock.start(), 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`phaseClock` gives the bytes each phase moved while a merge is read and written", async () => {
  const dir = await Deno.makeTempDir();
  const cpu = await createCpuBackend({ workers: 0 });
  try {
    const src = join(dir, "base.safetensors");
    await writeSafetensors(
      src,
      new StateDict([
        ["m.weight", t("BF16", [64, 32], seq(64 * 32, 1))],
        ["n.weight", t("F32", [8], seq(8, 2))],
      ]),
    );
    await using base = await openSafetensors(src);
    phaseClock.enable(); // after the header was read
    const ad = adapter([
      [`${P}m.lora_A.weight`, t("F32", [2, 32], seq(64, 3))],
      [`${P}m.lora_B.weight`, t("F32", [64, 2], seq(128, 4))],
    ]);
    const { stateDict } = await mergeLora(base, [ad], { backend: cpu });
    const out = new StateDict([
      ["m.weight", stateDict.require("m.weight")],
      ["n.weight", castRef(stateDict.require("n.weight"), "BF16")],
    ]);
    const { bytes } = await writeSafetensors(join(dir, "out.safetensors"), out);
    const p = phaseClock.snapshot();
    phaseClock.disable();
    // W of m (64 × 32 bf16) and n (8 f32) read from the base, once each
    assert.equal(p.read?.bytes, 64 * 32 * 2 + 8 * 4);
    assert.equal(p.merge?.bytes, 64 * 32 * 2);
    assert.equal(p.cast?.bytes, 8 * 4);
    assert.equal(p.write?.bytes, bytes);
    for (const phase of ["read", "merge", "cast", "write", "wait-data"] as const) {
      assert.ok(p[phase]!.calls > 0 && p[phase]!.ms >= 0, phase);
    }
  } finally {
    phaseClock.disable();
    await cpu.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
