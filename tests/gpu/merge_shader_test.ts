import assert from "node:assert/strict";
import { pipelineKey } from "../../gpu/merge_plan.ts";
import { mergeShaderSource } from "../../gpu/merge_shader.ts";

Deno.test("`mergeShaderSource()` bakes the rank and dtypes into each variant", () => {
  for (const variant of ["aligned", "flat", "dora"] as const) {
    const spec = {
      variant,
      wDtype: "F16",
      outDtype: "BF16",
      rank: 24,
      rowsPerInvocation: variant === "aligned" ? 4 : 1,
      workgroupSize: 64,
    } as const;
    const src = mergeShaderSource(spec);
    assert.match(src, /const RANK: u32 = 24u;/);
    assert.match(src, /f16_to_f32\(/);
    assert.match(src, /f32_to_bf16\(/);
    assert.ok(src.includes(pipelineKey(spec)));
    assert.equal(src.includes("atomicOr"), variant === "dora");
    assert.equal(src.includes("vec4<f32>>"), variant === "aligned");
  }
  assert.notEqual(
    pipelineKey({
      variant: "flat",
      wDtype: "BF16",
      outDtype: "BF16",
      rank: 8,
      rowsPerInvocation: 1,
      workgroupSize: 64,
    }),
    pipelineKey({
      variant: "flat",
      wDtype: "BF16",
      outDtype: "BF16",
      rank: 16,
      rowsPerInvocation: 1,
      workgroupSize: 64,
    }),
  );
});
