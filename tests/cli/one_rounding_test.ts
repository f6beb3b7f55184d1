/**
 * `--dtype` / writeModel's `dtype` reaches the merge from every command-line entry point: the
 * merged weights of `ckpt merge --dtype`, of `ckpt run <config>` (mergeLora, then writeModel with a
 * dtype) and of a preset run are the float64 merge rounded once into the final dtype, not rounded
 * to the base's dtype first and widened or narrowed afterwards.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { verifyCheckpoint } from "../../pipelines/verify.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { checkFolderOneRounding } from "../merge/_one_rounding.ts";
import { ckpt } from "./_cli.ts";

Deno.test("every CLI entry point rounds merged weights once, into the final dtype", async (t) => {
  await withTempDir(async (dir) => {
    const bf16 = await makeDemoRun(join(dir, "bf16"), { size: "tiny" });

    await t.step("ckpt merge --dtype float32 of a bf16 base", async () => {
      const out = join(dir, "merge-f32");
      const r = await ckpt([
        "merge",
        ...["--base", bf16.base, "--adapter", bf16.adapter, "--out", out],
        ...["--dtype", "float32", "--backend", "cpu", "--log", "quiet"],
      ]);
      assert.equal(r.code, 0, r.stderr);
      const st = await checkFolderOneRounding(bf16.base, bf16.adapter, out, "F32");
      assert.equal(st.modules, bf16.loraParams.length / 2);
      const manifest = JSON.parse(await Deno.readTextFile(join(out, "ckpt-manifest.json")));
      const write = manifest.stages.find((s: { name: string }) => s.name === "writeModel");
      assert.equal(write.report.recomputedInDtype, st.modules);
      // ckpt verify recomputes sampled rows at f32 tolerance: a widened bf16 merge fails it
      const v = await verifyCheckpoint(out, { base: bf16.base, adapter: bf16.adapter });
      const merges = v.checks.filter((c) => c.kind === "merge");
      assert.ok(merges.length > 0 && merges.every((c) => c.ok), JSON.stringify(merges));
    });

    await t.step("ckpt run halos-final --var dtype=float16 (a preset) of a bf16 base", async () => {
      const out = join(dir, "preset-f16");
      const r = await ckpt([
        "run",
        "halos-final",
        ...["--var", `run=${bf16.dir}`, "--var", `out=${out}`, "--var", "dtype=float16"],
        ...["--var", "format=safetensors", "--backend", "cpu", "--log", "quiet"],
      ]);
      assert.equal(r.code, 0, r.stderr);
      const st = await checkFolderOneRounding(bf16.base, bf16.adapter, out, "F16");
      assert.ok(st.decided / st.elements > 0.99, `${st.decided}/${st.elements}`);
    });

    await t.step(
      "ckpt run <config>: mergeLora, then writeModel bfloat16, of an f32 base",
      async () => {
        const f32 = await makeDemoRun(join(dir, "f32"), { size: "tiny", dtype: "F32" });
        const out = join(dir, "config-bf16");
        const config = join(dir, "merge.jsonc");
        await Deno.writeTextFile(
          config,
          JSON.stringify({
            output: out,
            stages: [
              { use: "gatherShards", from: f32.base },
              { use: "mergeLora", adapter: f32.adapter },
              { use: "writeModel", dtype: "bfloat16" },
            ],
          }),
        );
        const r = await ckpt(["run", config, "--backend", "cpu", "--log", "quiet"]);
        assert.equal(r.code, 0, r.stderr);
        const st = await checkFolderOneRounding(f32.base, f32.adapter, out, "BF16");
        assert.ok(st.decided / st.elements > 0.99, `${st.decided}/${st.elements}`);
      },
    );
  });
});
