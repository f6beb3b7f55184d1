import assert from "node:assert/strict";
import { join } from "node:path";
import { acquireGpu } from "../../gpu/device.ts";
import { createMergeBackend } from "../../merge/backend.ts";
import {
  cachedCalibration,
  calibrationKey,
  gpuHardware,
  machineKey,
  type SystemFiles,
} from "../../merge/_calibrate.ts";
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
    assert.equal(key, calibrationKey(shape));
    assert.ok(cal.adapter.length > 0 && stored[key!].adapter === cal.adapter, JSON.stringify(cal));
    assert.ok(first.reason.includes(`on "${cal.adapter}"`), first.reason);

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
    // a WebGPU win measured on another adapter than the one at hand is measured again
    const elsewhere = { ...cal, cpu: 1, webgpu: 1000, adapter: "Another GPU" };
    await Deno.writeTextFile(cache, JSON.stringify({ [key!]: elsewhere }));
    const remeasured = await createMergeBackend("auto", {
      calibrate: shape,
      calibrationCache: cache,
    });
    await remeasured.backend.dispose();
    assert.equal(remeasured.calibration?.cached, false);
    assert.equal(remeasured.calibration?.adapter, cal.adapter);
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

/** Runs `fn` with `navigator.gpu.requestAdapter` replaced by `stub`; gives how often it was called. */
async function withRequestAdapter(
  stub: () => Promise<GPUAdapter | null>,
  fn: () => Promise<void>,
): Promise<number> {
  const gpu = navigator.gpu as unknown as Record<string, unknown>;
  let calls = 0;
  Object.defineProperty(gpu, "requestAdapter", {
    configurable: true,
    value: () => (calls++, stub()),
  });
  try {
    await fn();
  } finally {
    delete gpu.requestAdapter;
  }
  return calls;
}

/** Runs `fn` with a cache file holding `entry` under the machine's key for `shape`. */
async function withCachedEntry(
  shape: { rank: number; cols: number },
  entry: Record<string, unknown>,
  fn: (cache: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const cache = join(dir, "calibration.json");
  try {
    await Deno.writeTextFile(cache, JSON.stringify({ [calibrationKey(shape)]: entry }));
    await fn(cache);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const measured = "2026-01-01T00:00:00.000Z";

Deno.test("`auto` with a cached CPU win does not load the WebGPU driver", async () => {
  const shape = { rank: 16, cols: 2048 };
  const entry = { cpu: 1000, webgpu: 1, adapter: "Cached GPU 9000", measured };
  await withCachedEntry(shape, entry, async (cache) => {
    const calls = await withRequestAdapter(() => Promise.resolve(null), async () => {
      const { backend, reason, calibration } = await createMergeBackend("auto", {
        calibrate: shape,
        calibrationCache: cache,
      });
      await backend.dispose();
      assert.equal(backend.kind, "cpu");
      assert.match(
        reason,
        /cpu 1000 M weights\/s, webgpu 1 M weights\/s on "Cached GPU 9000".*cached/,
      );
      assert.deepEqual(calibration, { ...entry, cached: true });
    });
    assert.equal(calls, 0);
  });
});

Deno.test("`auto` with a cached WebGPU win but no adapter runs on the CPU and says why", async () => {
  const shape = { rank: 16, cols: 2048 };
  const entry = { cpu: 1, webgpu: 1000, adapter: "Cached GPU 9000", measured };
  await withCachedEntry(shape, entry, async (cache) => {
    const calls = await withRequestAdapter(() => Promise.resolve(null), async () => {
      const { backend, reason, calibration } = await createMergeBackend("auto", {
        calibrate: shape,
        calibrationCache: cache,
      });
      await backend.dispose();
      assert.equal(backend.kind, "cpu");
      assert.match(reason, /no usable WebGPU adapter \(.*no adapter was found\)/);
      assert.match(reason, /webgpu 1000 M weights\/s on "Cached GPU 9000".*cached/);
      assert.equal(calibration?.cached, true);
    });
    assert.equal(calls, 1);
  });
});

Deno.test("the calibration key names the machine and the shape without calling WebGPU", async () => {
  let keys: string[] = [];
  const calls = await withRequestAdapter(() => Promise.resolve(null), () => {
    keys = [
      calibrationKey({ rank: 16, cols: 2048 }),
      calibrationKey({ rank: 16, cols: 2000 }),
      calibrationKey({ rank: 8, cols: 2048 }),
    ];
    return Promise.resolve();
  });
  assert.equal(calls, 0);
  assert.equal(keys[0], keys[1], "the column count is rounded to a power of 2");
  assert.notEqual(keys[2], keys[0]);
  assert.ok(keys[0]!.endsWith("|r16|c2048") && keys[2]!.endsWith("|r8|c2048"), keys.join("\n"));
  assert.ok(keys[0]!.startsWith(`${navigator.hardwareConcurrency} cores|`), keys[0]);
  assert.ok(keys[0]!.includes(`|deno ${Deno.version.deno}|`), keys[0]);
  assert.equal(machineKey(), machineKey());
});

Deno.test("the machine key names the render nodes' PCI ids and the NVIDIA driver, and needs none", () => {
  const sysfs: Record<string, string> = {
    "/sys/class/drm/renderD129/device/vendor": "0x1002\n",
    "/sys/class/drm/renderD129/device/device": "0x73bf\n",
    "/sys/class/drm/renderD128/device/vendor": "0x10de\n",
    "/sys/class/drm/renderD128/device/device": "0x2330\n",
    "/sys/class/drm/card0/device/vendor": "0x8086\n",
    "/proc/driver/nvidia/version": "NVRM version: NVIDIA 550.54.15\nGCC version: 12\n",
  };
  const files: SystemFiles = {
    read: (path) => sysfs[path],
    list: (dir) => dir === "/sys/class/drm" ? ["version", "renderD128", "card0", "renderD129"] : [],
  };
  assert.equal(
    gpuHardware(files, "linux"),
    "pci 1002:73bf,10de:2330|nvidia NVRM version: NVIDIA 550.54.15",
  );
  assert.ok(
    machineKey(files).endsWith("|pci 1002:73bf,10de:2330|nvidia NVRM version: NVIDIA 550.54.15"),
  );
  const nothing: SystemFiles = { read: () => undefined, list: () => [] };
  assert.equal(gpuHardware(nothing, "linux"), "pci none");
  assert.equal(gpuHardware(files, "darwin"), "gpu ?");
  const broken: SystemFiles = { read: () => undefined, list: () => ["renderD128"] };
  assert.equal(gpuHardware(broken, "linux"), "pci ?:?");
});

Deno.test("a cache entry without its adapter (the old format) is not used", async () => {
  const shape = { rank: 4, cols: 64 };
  await withCachedEntry(shape, { cpu: 1000, webgpu: 1, measured }, async (cache) => {
    assert.equal(await cachedCalibration(cache, calibrationKey(shape)), undefined);
  });
  await withCachedEntry(shape, { cpu: 1000, webgpu: 1, adapter: "A", measured }, async (cache) => {
    assert.equal((await cachedCalibration(cache, calibrationKey(shape)))?.adapter, "A");
  });
});
