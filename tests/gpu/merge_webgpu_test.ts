import assert from "node:assert/strict";
import { createWebGpuBackend, type WebGpuMergeBackend } from "../../gpu/merge_webgpu.ts";
import { mergeRowsReference } from "../../kernels/reference.ts";
import type { MergeDType, MergeRowsRequest } from "../../kernels/types.ts";
import { assertSameBytes, corpus, request, roundingEdges } from "../kernels/_corpus.ts";

/** Distance in units in the last place between two encoded values (NaN == NaN counts as 0). */
function ulps(dtype: MergeDType, x: number, y: number): number {
  const bits = dtype === "F32" ? 32 : 16;
  const sign = bits === 32 ? 0x80000000 : 0x8000;
  const nanish = (v: number) =>
    bits === 32
      ? (v & 0x7fffffff) > 0x7f800000
      : dtype === "BF16"
      ? (v & 0x7fff) > 0x7f80
      : (v & 0x7fff) > 0x7c00;
  if (nanish(x) && nanish(y)) return 0;
  if (nanish(x) || nanish(y)) return Infinity;
  const ord = (v: number) => ((v & sign) !== 0 ? -(v & (sign - 1)) : v);
  return Math.abs(ord(x >>> 0) - ord(y >>> 0));
}

function compare(req: MergeRowsRequest, got: Uint8Array, want: Uint8Array) {
  const n = req.rows * req.cols;
  const dv1 = new DataView(got.buffer, got.byteOffset),
    dv2 = new DataView(want.buffer, want.byteOffset);
  let equal = 0, maxUlps = 0;
  for (let e = 0; e < n; e++) {
    const [x, y] = req.outDtype === "F32"
      ? [dv1.getUint32(e * 4, true), dv2.getUint32(e * 4, true)]
      : [dv1.getUint16(e * 2, true), dv2.getUint16(e * 2, true)];
    if (x === y) equal++;
    else maxUlps = Math.max(maxUlps, ulps(req.outDtype, x, y));
  }
  return { equal, n, maxUlps };
}

async function withGpu(fn: (gpu: WebGpuMergeBackend) => Promise<void>, opts = {}) {
  const gpu = await createWebGpuBackend(opts);
  try {
    await fn(gpu);
  } finally {
    await gpu.dispose();
  }
}

Deno.test("WebGPU merge equals the CPU reference bit for bit over the corpus", async () => {
  await withGpu(async (gpu) => {
    let equal = 0, n = 0, maxUlps = 0;
    const reqs = [...corpus(), request("BF16", "BF16", 256, 4096, 16, 77)];
    for (const req of reqs) {
      const c = compare(req, await gpu.mergeRows(req), mergeRowsReference(req));
      equal += c.equal;
      n += c.n;
      maxUlps = Math.max(maxUlps, c.maxUlps);
      assert.equal(
        c.equal,
        c.n,
        `${req.name} (${gpu.plan(req).spec.variant}): max ${c.maxUlps} ulps`,
      );
    }
    console.log(
      `${gpu.description}: ${reqs.length} requests, ${equal}/${n} elements equal (${
        (100 * equal / n).toFixed(4)
      }%), max ${maxUlps} ulps`,
    );
  });
});

Deno.test("WebGPU merge kernel forms (1, 8 and 32 rows per invocation) equal the reference", async () => {
  for (const rowsPerInvocation of [1, 8, 32]) {
    await withGpu(async (gpu) => {
      for (
        const req of [
          ...corpus().filter((r) => r.cols % 4 === 0 && !r.magnitude),
          request("F16", "BF16", 70, 256, 64, 31),
          request("BF16", "F32", 45, 128, 12, 32),
        ]
      ) {
        assertSameBytes(await gpu.mergeRows(req), mergeRowsReference(req), req.name);
      }
    }, { rowsPerInvocation });
  }
});

Deno.test("WebGPU merge rounds bf16/f16 edges exactly like the reference", async () => {
  await withGpu(async (gpu) => {
    for (const od of ["BF16", "F16", "F32"] as const) {
      const req = roundingEdges(od);
      assertSameBytes(await gpu.mergeRows(req), mergeRowsReference(req), req.name);
      const r1 = { ...req, rank: 1, a: new Float32Array(req.cols), b: new Float32Array(1) };
      assertSameBytes(await gpu.mergeRows(r1), mergeRowsReference(r1), `${req.name}.r1`);
      const even = { ...r1, cols: r1.cols & ~3, w: r1.w.subarray(0, (r1.cols & ~3) * 4) };
      even.a = new Float32Array(even.cols);
      assertSameBytes(await gpu.mergeRows(even), mergeRowsReference(even), `${req.name}.aligned`);
    }
  });
});

Deno.test("WebGPU merge runs a dispatch folded into two dimensions", async () => {
  await withGpu(async (gpu) => {
    const req = request("BF16", "F16", 73, 4099, 4, 5);
    const plan = gpu.plan(req);
    assert.equal(plan.spec.variant, "flat");
    assert.ok(plan.blocks[0]!.workgroups > 65535 && plan.blocks[0]!.dispatch[1] > 1);
    assertSameBytes(await gpu.mergeRows(req), mergeRowsReference(req), "block");
  }, { workgroupSize: 1 });
});

Deno.test("WebGPU merge splits a request into blocks when bindings are small", async () => {
  await withGpu(async (gpu) => {
    for (
      const req of [
        request("BF16", "BF16", 101, 1000, 8, 6),
        request("F32", "BF16", 37, 333, 3, 7),
        request("BF16", "F32", 100, 130, 5, 8, { dora: true }),
      ]
    ) {
      assert.ok(gpu.plan(req).blocks.length >= 3, req.name);
      assertSameBytes(await gpu.mergeRows(req), mergeRowsReference(req), req.name);
    }
  }, { maxBlockBytes: 16384 });
});

Deno.test("WebGPU merge pools buffers, caches pipelines and A, and leaks nothing", async () => {
  const gpu = await createWebGpuBackend();
  const reqs = [0, 1, 2, 3].map((n) => request("BF16", "BF16", 16, 64, 8, 40 + n));
  // every block of one tensor shares the same A
  for (const r of reqs) r.a = reqs[0]!.a;
  await Promise.all(reqs.map((r) => gpu.mergeRows(r)));
  const warm = gpu.stats();
  assert.equal(warm.pipelinesCompiled, 1);
  assert.equal(warm.aUploads, 1);
  assert.equal(warm.aReuses, 3);
  assert.equal(warm.buffersInUse, 1); // the cached A
  const got = await Promise.all(reqs.map((r) => gpu.mergeRows(r)));
  reqs.forEach((r, n) => assertSameBytes(got[n]!, mergeRowsReference(r), r.name));
  const after = gpu.stats();
  assert.equal(after.buffersCreated, warm.buffersCreated, "second round reuses pooled buffers");
  assert.equal(after.pipelinesCompiled, 1);
  assert.ok(after.pipelineCacheHits >= warm.pipelineCacheHits + 4);
  gpu.trim();
  assert.equal(gpu.stats().buffersPooled, 0);
  await gpu.dispose();
  const end = gpu.stats();
  assert.equal(end.buffersInUse, 0);
  assert.equal(end.buffersCreated, end.buffersDestroyed);
  await assert.rejects(gpu.mergeRows(reqs[0]!), { code: "MERGE_DISPOSED" });
});

Deno.test("WebGPU merge keeps concurrent calls of different tensors apart", async () => {
  const gpu = await createWebGpuBackend();
  try {
    const t1 = [0, 1, 2].map((n) => request("BF16", "BF16", 8, 96, 4, 60 + n));
    const t2 = [0, 1, 2].map((n) => request("F16", "F32", 8, 96, 4, 70 + n));
    for (const r of t1) r.a = t1[0]!.a;
    for (const r of t2) r.a = t2[0]!.a;
    // interleaved: the cached A switches while calls using the previous one are in flight
    const reqs = [t1[0]!, t2[0]!, t1[1]!, t2[1]!, t1[2]!, t2[2]!];
    const got = await Promise.all(reqs.map((r) => gpu.mergeRows(r)));
    reqs.forEach((r, n) => assertSameBytes(got[n]!, mergeRowsReference(r), r.name));
    assert.equal(gpu.stats().buffersInUse, 1);
  } finally {
    await gpu.dispose();
  }
  const end = gpu.stats();
  assert.equal(end.buffersCreated, end.buffersDestroyed);
});

Deno.test("WebGPU merge rejects bad requests before creating buffers", async () => {
  await withGpu(async (gpu) => {
    const req = request("BF16", "BF16", 2, 8, 2, 9);
    await assert.rejects(gpu.mergeRows({ ...req, a: new Float32Array(3) }), {
      code: "MERGE_SHAPE",
    });
    await assert.rejects(gpu.mergeRows({ ...req, wDtype: "I8" as never }), { code: "MERGE_DTYPE" });
    assert.equal(gpu.stats().buffersCreated, 0);
  });
});
