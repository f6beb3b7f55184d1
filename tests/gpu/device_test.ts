import assert from "node:assert/strict";
import { acquireGpu, REQUIRED_GPU_LIMITS } from "../../gpu/device.ts";
import { evalWithoutGpu } from "../_helpers/gpu.ts";

Deno.test("`acquireGpu()` describes the adapter and grants the merge's limits", async () => {
  const gpu = await acquireGpu();
  try {
    assert.equal(typeof gpu.info.isFallbackAdapter, "boolean");
    assert.ok(gpu.info.description.length > 0 || gpu.info.vendor.length > 0);
    const limits = gpu.info.limits as unknown as Record<string, number>;
    for (const [name, min] of Object.entries(REQUIRED_GPU_LIMITS)) {
      if (name in limits) assert.ok(limits[name]! >= min, name);
    }
    // the device really has the adapter's maximum binding size, not the default 128 MiB floor
    assert.equal(
      gpu.device.limits.maxStorageBufferBindingSize,
      gpu.adapter.limits.maxStorageBufferBindingSize,
    );
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("`acquireGpu()` fails with GPU_UNAVAILABLE when WebGPU finds no adapter", async () => {
  const script = `
    import { acquireGpu } from ${
    JSON.stringify(new URL("../../gpu/device.ts", import.meta.url).href)
  };
    try { await acquireGpu(); console.log("acquired"); } catch (e) { console.log(e.code); }`;
  assert.deepEqual(await evalWithoutGpu(script), ["GPU_UNAVAILABLE"]);
});
