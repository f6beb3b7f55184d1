/**
 * The CPU backend's machinery around the kernel, which its results do not show: the compiled
 * kernel caches (counted by `kernelsCompiled`, which also shows where a block was merged), the two
 * memory slots that let a block be read in while another is in flight, the phase clock's merge
 * entry, its description, and what a worker answers.
 */
import assert from "node:assert/strict";
import { createCpuBackend } from "../../../kernels/cpu/backend.ts";
import { KernelCache, kernelKind, kernelsCompiled } from "../../../kernels/cpu/_rows.ts";
import { chunkRows } from "../../../kernels/cpu/_chunks.ts";
import { mergeRowsReference } from "../../../kernels/reference.ts";
import { MERGE_DTYPE_SIZE } from "../../../kernels/types.ts";
import { mergeKernelWasm } from "../../../kernels/cpu/kernel.ts";
import { phaseClock } from "../../../formats/phase_clock.ts";
import { assertSameBytes, oneRowF32Task, request } from "../_corpus.ts";

/** 66 kernel kinds, each its own kernel (rank 1 unrolled for 16 to 81 columns). */
const KINDS = Array.from({ length: 66 }, (_, i) => kernelKind("BF16", "BF16", 1, 16 + i));

Deno.test("`KernelCache.get()` compiles a kind once, keeps up to 65 kinds and starts over at the 66th", () => {
  const mem = new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
  const cache = new KernelCache(mem);
  const compiled = () => kernelsCompiled.count;
  const at = compiled();
  const first = cache.get(KINDS[0]!);
  assert.equal(cache.get(KINDS[0]!), first, "the same kind again is the same kernel");
  assert.equal(compiled() - at, 1);
  for (const k of KINDS.slice(1, 65)) cache.get(k);
  assert.equal(compiled() - at, 65);
  cache.get(KINDS[0]!); // 65 kinds held: the first is still there
  assert.equal(compiled() - at, 65);
  cache.get(KINDS[65]!); // the 66th clears the cache first
  cache.get(KINDS[0]!);
  assert.equal(compiled() - at, 67);
});

Deno.test("`KernelCache.get()` instantiates a module it is given without compiling one", () => {
  const mem = new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
  const other = new KernelCache(mem);
  const at = kernelsCompiled.count;
  other.get(KINDS[1]!);
  assert.equal(kernelsCompiled.count - at, 1);
  // a worker's cache: the module comes from the backend
  const cache = new KernelCache(mem);
  const k = KINDS[1]!;
  const module = new WebAssembly.Module(mergeKernelWasm(k.wDtype, k.kernelOut, k.unroll));
  assert.equal(typeof cache.get(KINDS[1]!, module), "function");
  assert.equal(kernelsCompiled.count - at, 1);
});

Deno.test("`createCpuBackend()` with workers compiles each kernel kind once for all its blocks and workers", async () => {
  const cpu = await createCpuBackend({ workers: 2, inlineBelow: 0, chunkElements: 64 });
  try {
    const at = kernelsCompiled.count;
    for (const seed of [1, 2, 3]) {
      const r = request("BF16", "F16", 8, 48, 4, seed);
      assertSameBytes(await cpu.mergeRows(r), mergeRowsReference(r), r.name);
    }
    assert.equal(kernelsCompiled.count - at, 1);
    const r = request("BF16", "F16", 8, 64, 4, 4); // another width: another kernel
    assertSameBytes(await cpu.mergeRows(r), mergeRowsReference(r), r.name);
    assert.equal(kernelsCompiled.count - at, 2);
  } finally {
    await cpu.dispose();
  }
});

Deno.test("`createCpuBackend()` with workers keeps up to 65 compiled kinds and starts over at the 66th", async () => {
  // two workers: a block of two rows is split between them (with one, it merges on this thread)
  const cpu = await createCpuBackend({ workers: 2, inlineBelow: 0, chunkElements: 1 });
  try {
    const merge = async (cols: number) => {
      const r = request("BF16", "BF16", 2, cols, 1, cols);
      assertSameBytes(await cpu.mergeRows(r), mergeRowsReference(r), r.name);
    };
    const at = kernelsCompiled.count;
    for (let cols = 16; cols < 16 + 65; cols++) await merge(cols);
    await merge(16);
    assert.equal(kernelsCompiled.count - at, 65);
    await merge(16 + 65);
    await merge(16);
    assert.equal(kernelsCompiled.count - at, 67);
  } finally {
    await cpu.dispose();
  }
});

Deno.test("`mergeRowsInto()` reads the next block in while the one before is still being read: two slots take turns", async () => {
  for (const workers of [0, 1]) {
    const cpu = await createCpuBackend({ workers, inlineBelow: 0, chunkElements: 64 });
    try {
      const reqs = [1, 2, 3].map((seed) => request("BF16", "BF16", 4, 32, 2, seed));
      const reads: number[] = [];
      let releaseFirst = () => {};
      const firstHeld = new Promise<void>((r) => (releaseFirst = r));
      const outs = reqs.map((r) => new Uint8Array(r.rows * r.cols * MERGE_DTYPE_SIZE[r.outDtype]));
      const done = reqs.map((r, n) => {
        const { w, ...rest } = r;
        const readW = async (into: Uint8Array) => {
          reads.push(n);
          if (n === 0) await firstHeld;
          into.set(w);
          return into;
        };
        return cpu.mergeRowsInto({ ...rest, readW }, outs[n]!);
      });
      await new Promise((r) => setTimeout(r, 0));
      // the second block has its own slot; the third waits for the first's
      assert.deepEqual(reads, [0, 1], `${workers} workers`);
      releaseFirst();
      await Promise.all(done);
      assert.deepEqual(reads, [0, 1, 2]);
      reqs.forEach((r, n) => assertSameBytes(outs[n]!, mergeRowsReference(r), r.name));
    } finally {
      await cpu.dispose();
    }
  }
});

Deno.test("`createCpuBackend()` adds each merged block to the phase clock once, and a kernel timing not at all", async () => {
  const cpu = await createCpuBackend({ workers: 0 });
  phaseClock.enable();
  try {
    const r = request("BF16", "BF16", 4, 32, 2, 7);
    await cpu.mergeRows(r);
    await cpu.timeKernel(r, 3);
    const merge = phaseClock.snapshot().merge;
    assert.deepEqual([merge?.calls, merge?.bytes], [1, r.w.byteLength]);
  } finally {
    phaseClock.disable();
    await cpu.dispose();
  }
});

Deno.test("`createCpuBackend()` describes its worker count in words", async () => {
  for (const [workers, words] of [[0, "0 workers"], [1, "1 worker"], [2, "2 workers"]] as const) {
    const cpu = await createCpuBackend({ workers });
    assert.equal(cpu.description, `cpu: WebAssembly SIMD, ${words}`);
    await cpu.dispose();
  }
});

Deno.test("`createCpuBackend()` merges, on a fresh backend, a block whose factors alone are larger than the memory it starts with, and a tall DoRA block", async () => {
  // rank 64 × 4168 columns: A is 1,067,008 bytes, past the first 16 pages (1 MiB) of the memory
  const plain = request("BF16", "BF16", 3, 4168, 64, 11, { factorScale: 0.05 });
  const dora = request("BF16", "F16", 3, 4168, 64, 12, { factorScale: 0.05, dora: true });
  // and a DoRA block of many rows: its magnitudes need their own room beside the rows' scratch
  const tall = request("BF16", "BF16", 33, 512, 16, 13, { dora: true });
  assert.ok(plain.a.byteLength > 16 * 65536);
  for (const workers of [0, 2]) {
    for (const r of [plain, dora, tall]) {
      // a fresh backend each: its first block goes at the start of the memory's growth
      const cpu = await createCpuBackend({ workers, inlineBelow: 0, chunkElements: 64 });
      try {
        assertSameBytes(await cpu.mergeRows(r), mergeRowsReference(r), `${workers}: ${r.name}`);
      } finally {
        await cpu.dispose();
      }
    }
  }
});

Deno.test("`createCpuBackend()` at rank 0 keeps every weight as it is, -0 included, whatever the scale's sign", async () => {
  // W holds ±0 and ordinary values; s·(-0) is +0 for a negative s, and -0 + +0 would be +0
  const values = Array.from(
    { length: 32 },
    (_, i) => (i % 4 === 0 ? -0 : i % 4 === 1 ? 0 : i - 7.5),
  );
  const w = new Uint8Array(new Float32Array(values).buffer);
  for (const workers of [0, 2]) {
    const cpu = await createCpuBackend({ workers, inlineBelow: 0, chunkElements: 64 });
    try {
      for (const scale of [1, -1.5]) {
        const r = {
          name: `rank0.s${scale}`,
          w,
          wDtype: "F32",
          outDtype: "F32",
          rows: 2,
          cols: 16,
          rank: 0,
          a: new Float32Array(0),
          b: new Float32Array(0),
          scale,
        } as const;
        const got = await cpu.mergeRows(r);
        assertSameBytes(got, mergeRowsReference(r), `${workers} workers, ${r.name}`);
        assertSameBytes(got, w, `${workers} workers, ${r.name}: W itself`);
      }
    } finally {
      await cpu.dispose();
    }
  }
});

Deno.test("`createCpuBackend()` with workers merges a DoRA block and then a plain one of the same shape, each with its own kernel", async () => {
  const cpu = await createCpuBackend({ workers: 2, inlineBelow: 0, chunkElements: 64 });
  try {
    const dora = request("BF16", "BF16", 8, 48, 4, 21, { dora: true });
    const plain = request("BF16", "BF16", 8, 48, 4, 22);
    const at = kernelsCompiled.count;
    for (const r of [dora, plain, dora, plain]) {
      assertSameBytes(await cpu.mergeRows(r), mergeRowsReference(r), r.name);
    }
    // the DoRA kernel (f32 rows out) and the plain one are cached apart: two compilations here
    assert.equal(kernelsCompiled.count - at, 2);
  } finally {
    await cpu.dispose();
  }
});

Deno.test("`createCpuBackend()` with workers merges a block of one chunk on the calling thread: its kernel is compiled for this thread, apart from the module the workers get", async () => {
  const cpu = await createCpuBackend({ workers: 2, inlineBelow: 0 });
  try {
    const at = kernelsCompiled.count;
    const cols = 4096;
    const one = request("BF16", "F16", chunkRows(cols), cols, 4, 51);
    assertSameBytes(await cpu.mergeRows(one), mergeRowsReference(one), one.name);
    assert.equal(kernelsCompiled.count - at, 1);
    // one row more is two chunks, for the workers: their module is compiled now, once
    const two = request("BF16", "F16", chunkRows(cols) + 1, cols, 4, 52);
    assertSameBytes(await cpu.mergeRows(two), mergeRowsReference(two), two.name);
    assert.equal(kernelsCompiled.count - at, 2);
    assertSameBytes(await cpu.mergeRows(one), mergeRowsReference(one), `${one.name} again`);
    assertSameBytes(await cpu.mergeRows(two), mergeRowsReference(two), `${two.name} again`);
    assert.equal(kernelsCompiled.count - at, 2);
  } finally {
    await cpu.dispose();
  }
});

Deno.test("`createCpuBackend()` gives the phase clock a block's merge time in milliseconds, as `performance.now()` measured it", async () => {
  const cpu = await createCpuBackend({ workers: 0 });
  const now = performance.now;
  let clock = 0;
  // a clock that moves on 250 ms at each reading: the merge reads it before and after
  performance.now = () => (clock += 250);
  phaseClock.enable();
  try {
    await cpu.mergeRows(request("BF16", "BF16", 4, 32, 2, 8));
    performance.now = now;
    assert.equal(phaseClock.snapshot().merge?.ms, 250);
  } finally {
    performance.now = now;
    phaseClock.disable();
    await cpu.dispose();
  }
});

Deno.test("the CPU merge worker answers a block with its id and the sums of the chunks it claimed, and a block that throws with the error's stack: what failed and where", async () => {
  const worker = new Worker(new URL("../../../kernels/cpu/worker.ts", import.meta.url).href, {
    type: "module",
  });
  try {
    const replies: unknown[] = [];
    let wake = () => {};
    worker.onmessage = (e: MessageEvent) => {
      replies.push(e.data);
      wake();
    };
    const reply = async () => {
      while (replies.length === 0) await new Promise<void>((r) => (wake = r));
      return replies.shift();
    };
    const mem = new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
    new Float32Array(mem.buffer as unknown as ArrayBuffer).set([1, -2, 3], 0);
    worker.postMessage({ type: "init", mem });
    // one row of 3 columns (scalar tail only), rank 0: W copied from 0 to 256; the claim counter
    // at 1024 (0: the first chunk is still to be claimed)
    const { row0: _, row1: __, ...task } = oneRowF32Task(0, 256, 1);
    const job = { ...task, rows: 1, chunkRows: 1, counterPtr: 1024 };
    worker.postMessage({ type: "task", id: 1, job });
    assert.deepEqual(await reply(), { id: 1, sums: [] });
    assert.deepEqual([...new Float32Array(mem.buffer as unknown as ArrayBuffer, 256, 3)], [
      1,
      -2,
      3,
    ]);
    // with the ‖ΔW‖ sums: chunk 0's [chunk, ΣW², ΣΔ², max]
    new Int32Array(mem.buffer as unknown as ArrayBuffer, 1024, 1)[0] = 0;
    worker.postMessage({ type: "task", id: 2, job: { ...job, change: true } });
    assert.deepEqual(await reply(), { id: 2, sums: [0, 14, 0, 0] });
    // and nothing left to claim: no chunk merged
    worker.postMessage({ type: "task", id: 3, job: { ...job, change: true } });
    assert.deepEqual(await reply(), { id: 3, sums: [] });
    // rank 1 with A past the end of the memory: the tail's view of A (3 floats) cannot be made
    new Int32Array(mem.buffer as unknown as ArrayBuffer, 1024, 1)[0] = 0;
    worker.postMessage({ type: "task", id: 4, job: { ...job, rank: 1, aPtr: 1 << 20 } });
    const failed = await reply() as { id: number; error: string };
    assert.equal(failed.id, 4);
    assert.match(failed.error, /^RangeError: Invalid typed array length: 3\n/);
    assert.match(failed.error, /\n +at runCpuTask \(.*kernels\/cpu\/_rows\.ts:\d+:\d+\)/);
  } finally {
    worker.terminate();
  }
});
