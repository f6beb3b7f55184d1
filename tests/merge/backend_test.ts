import assert from "node:assert/strict";
import { join } from "node:path";
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

Deno.test('`createMergeBackend("auto")` with calibrate measures both backends, caches the figures and uses the faster', async () => {
  const dir = await Deno.makeTempDir();
  const cache = join(dir, "calibration.json");
  try {
    const shape = { rank: 16, cols: 512 };
    const first = await createMergeBackend("auto", { calibrate: shape, calibrationCache: cache });
    await first.backend.dispose();
    const cal = first.calibration!;
    assert.ok(cal.cpu > 0 && cal.webgpu > 0 && !cal.cached, JSON.stringify(cal));
    assert.equal(first.backend.kind, cal.webgpu > 1.1 * cal.cpu ? "webgpu" : "cpu");
    assert.match(first.reason, /M weights\/s.*measured now/);
    const stored = JSON.parse(await Deno.readTextFile(cache));
    const [key] = Object.keys(stored);
    assert.match(key!, new RegExp(`^${navigator.hardwareConcurrency} cores\\|.+\\|r16\\|c512$`));

    // the cache decides the next runs: same figures, no measuring; figures written there rule
    const again = await createMergeBackend("auto", { calibrate: shape, calibrationCache: cache });
    await again.backend.dispose();
    assert.deepEqual(again.calibration, { ...cal, cached: true });
    assert.equal(again.backend.kind, first.backend.kind);
    for (const [cpu, webgpu, kind] of [[1, 1000, "webgpu"], [1000, 1, "cpu"], [100, 105, "cpu"]]) {
      await Deno.writeTextFile(cache, JSON.stringify({ [key!]: { ...cal, cpu, webgpu } }));
      const { backend, reason } = await createMergeBackend("auto", {
        calibrate: shape,
        calibrationCache: cache,
      });
      await backend.dispose();
      assert.equal(backend.kind, kind, `cpu ${cpu}, webgpu ${webgpu}`);
      assert.match(
        reason,
        new RegExp(`cpu ${cpu} M weights/s, webgpu ${webgpu} M weights/s.*cached`),
      );
    }
    // another rank is another entry; a cache that cannot be written only costs a new measurement
    const r8 = await createMergeBackend("auto", {
      calibrate: { rank: 8, cols: 512 },
      calibrationCache: join(dir, "missing-parent", "x", "\0bad"),
    });
    await r8.backend.dispose();
    assert.equal(r8.calibration?.cached, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
