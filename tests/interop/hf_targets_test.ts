/**
 * ckpt merges what real PEFT 0.21 applies, read from the adapter's own config (the `hf` peer;
 * Python side in `hf/peft_targets.py`): `layers_to_transform` / `layers_pattern`,
 * `exclude_modules` (list and regex), a regex `target_modules`, a negative `lora_alpha`. An adapter
 * holding tensors its config would not adapt is refused by default (`LORA_UNTARGETED`, naming
 * exactly the modules PEFT left without a layer) and, with `untargeted: "skip"`, merged as
 * `PeftModel.from_pretrained(...).merge_and_unload()` merges it. Fails (never skips) when the peer
 * is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import { openSafetensors } from "../../formats/safetensors.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { verifyCheckpoint } from "../../pipelines/verify.ts";
import { runHfPython } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const PEER = "tests/interop/hf/peft_targets.py";

interface CaseResult {
  keys_equal: boolean;
  max_diff: number;
  max_abs: number;
  changed_peft: string[];
  changed_ckpt: string[];
}

/** The modules the adapter file holds LoRA tensors for. */
async function adapterModules(adapter: string): Promise<string[]> {
  await using sd = await openSafetensors(join(adapter, "adapter_model.safetensors"));
  const out = new Set<string>();
  for (const k of sd.keys()) {
    const m = /^base_model\.model\.(.*)\.lora_[AB]\.weight$/.exec(k);
    if (m) out.add(m[1]!);
  }
  return [...out].sort();
}

function merge(dir: string, c: string, out: string, extra: Record<string, unknown> = {}) {
  return runPipeline({
    output: out,
    stages: [
      { use: "gatherShards", from: join(dir, "base") },
      { use: "mergeLora", adapter: join(dir, c, "adapter"), ...extra },
      { use: "writeModel" },
    ],
  }, { backend: "cpu" });
}

Deno.test("ckpt merges exactly what PEFT 0.21 applies from the adapter's config, and refuses tensors it would ignore", async () => {
  await withTempDir(async (dir) => {
    const cases = await runHfPython<string[]>(PEER, ["make", dir]);
    assert.deepEqual(cases, ["disagree", "excluded", "negative", "regex"]);
    const outputs: Record<string, string> = {};
    const reports: Record<string, Record<string, unknown>> = {};

    // The adapter's tensors and config disagree: refused, naming the modules PEFT gives no layer.
    const adapted: string[] = JSON.parse(
      await Deno.readTextFile(join(dir, "disagree", "adapted.json")),
    );
    const held = await adapterModules(join(dir, "disagree", "adapter"));
    const ignored = held.filter((m) => !adapted.includes(m));
    assert.ok(adapted.length === 2 && ignored.length === 7, `${adapted} / ${ignored}`);
    await assert.rejects(
      () => merge(dir, "disagree", join(dir, "refused")),
      (e: unknown) => {
        assert.ok(isCkptError(e, "LORA_UNTARGETED"), String(e));
        const named = (e.details!.modules as { module: string }[]).map((m) => m.module).sort();
        assert.deepEqual(named, ignored);
        return true;
      },
    );
    await assert.rejects(Deno.stat(join(dir, "refused")));

    for (const c of cases) {
      outputs[c] = join(dir, `ckpt_${c}`);
      const result = await merge(
        dir,
        c,
        outputs[c]!,
        c === "disagree" ? { untargeted: "skip" } : {},
      );
      reports[c] = result.manifest.stages.find((s) => s.name === "mergeLora")!.report;
    }
    const res = await runHfPython<Record<string, CaseResult>>(PEER, [
      "check",
      dir,
      JSON.stringify(outputs),
    ]);
    for (const c of cases) {
      const r = res[c]!;
      assert.ok(r.keys_equal, c);
      assert.ok(r.changed_peft.length > 0, `${c}: PEFT changed nothing`);
      assert.deepEqual(r.changed_ckpt, r.changed_peft, `${c}: the same tensors change`);
      // both compute W + s·B·A in float32; only the summation order differs
      assert.ok(r.max_diff <= 1e-6 * r.max_abs, `${c}: ${r.max_diff} of ${r.max_abs}`);
    }
    assert.deepEqual(
      (reports.disagree!.untargeted as { module: string }[]).map((u) => u.module).sort(),
      ignored,
    );
    assert.ok(
      (reports.negative!.warnings as string[]).some((w) => /lora_alpha is -16 is negative/.test(w)),
      JSON.stringify(reports.negative),
    );
    assert.equal(reports.regex!.warnings, undefined);
    // ckpt verify recomputes the same: adapted modules merged, the others left as the base
    for (const c of cases) {
      const v = await verifyCheckpoint(outputs[c]!, {
        base: join(dir, "base"),
        adapter: join(dir, c, "adapter"),
      });
      assert.ok(v.ok, `${c}: ${JSON.stringify(v.checks.filter((x) => !x.ok))}`);
    }
  });
});
