import assert from "node:assert/strict";
import { acquireGpu } from "../../gpu/device.ts";
import { createMergeBackend } from "../../merge/backend.ts";
import { evalWithoutGpu } from "../_helpers/gpu.ts";
import { request } from "../kernels/_corpus.ts";

Deno.test("`createMergeBackend()` gives each choice and says why", async () => {
  const reqs = [request("BF16", "BF16", 9, 64, 16, 3), request("F16", "F32", 5, 33, 7, 4)];
  const results: Uint8Array[][] = [];
  for (const choice of ["cpu", "webgpu", "auto"] as const) {
    const { backend, reason } = await createMergeBackend(choice);
    try {
      assert.ok(reason.length > 0);
      if (choice !== "auto") {
        assert.equal(backend.kind, choice);
        assert.match(reason, /requested/);
      }
      results.push(await Promise.all(reqs.map((r) => backend.mergeRows(r))));
    } finally {
      await backend.dispose();
    }
  }
  assert.deepEqual(results[1], results[0]);
  assert.deepEqual(results[2], results[0]);
});

Deno.test('`createMergeBackend("auto")` uses the CPU on a fallback adapter unless told otherwise', async () => {
  const { backend, reason } = await createMergeBackend("auto");
  const gpu = await createMergeBackend("auto", { preferFallbackGpu: true });
  try {
    const probe = await acquireGpu();
    const fallback = probe.info.isFallbackAdapter;
    probe.device.destroy();
    // on a software adapter (llvmpipe in CI) auto picks the CPU and names the fallback adapter
    assert.equal(backend.kind, fallback ? "cpu" : "webgpu");
    assert.match(reason, fallback ? /fallback/ : /hardware/);
    assert.equal(gpu.backend.kind, "webgpu");
  } finally {
    await backend.dispose();
    await gpu.backend.dispose();
  }
});

Deno.test("`createMergeBackend()` without an adapter: auto falls back, webgpu fails", async () => {
  const url = JSON.stringify(new URL("../../merge/backend.ts", import.meta.url).href);
  const script = `
    import { createMergeBackend } from ${url};
    const a = await createMergeBackend("auto"); console.log(a.backend.kind); await a.backend.dispose();
    try { await createMergeBackend("webgpu"); console.log("webgpu"); } catch (e) { console.log(e.code); }`;
  assert.deepEqual(await evalWithoutGpu(script), ["cpu", "GPU_UNAVAILABLE"]);
});

Deno.test("`createMergeBackend()` rejects an unknown choice", async () => {
  await assert.rejects(createMergeBackend("tpu" as never), { code: "MERGE_BACKEND" });
});
