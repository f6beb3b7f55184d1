import assert from "node:assert/strict";
import { createCpuBackend } from "../../../kernels/cpu/backend.ts";
import { mergeRowsReference } from "../../../kernels/reference.ts";
import { MERGE_DTYPE_SIZE, type MergeRowsRequest } from "../../../kernels/types.ts";
import { encodeF32 } from "../../../formats/dtype.ts";
import { addBlockChange } from "../../../merge/_lora_change.ts";
import { assertSameBytes, corpus, request, roundingEdges, seeded } from "../_corpus.ts";
import { kernelKey, kernelKind } from "../../../kernels/cpu/_rows.ts";
import { KERNEL_MAX_UNROLL, KERNEL_TILE_COLS, packA } from "../../../kernels/cpu/kernel.ts";
import { sleb, uleb } from "../../../kernels/cpu/wasm_emit.ts";

Deno.test("`createCpuBackend()` equals the reference bit for bit over the corpus (inline)", async () => {
  const cpu = await createCpuBackend({ workers: 0 });
  try {
    for (const req of corpus()) {
      assertSameBytes(await cpu.mergeRows(req), mergeRowsReference(req), req.name);
    }
  } finally {
    await cpu.dispose();
  }
});

Deno.test("`createCpuBackend()` with workers equals the reference bit for bit", async () => {
  const cpu = await createCpuBackend({ workers: 2, inlineBelow: 0, chunkElements: 64 });
  try {
    assert.match(cpu.description, /2 workers/);
    for (const req of corpus()) {
      assertSameBytes(await cpu.mergeRows(req), mergeRowsReference(req), req.name);
    }
    // moderately sized blocks, concurrent: two memory slots alternate (copy-in overlaps merging)
    const big = [
      request("BF16", "BF16", 257, 1040, 16, 99),
      request("F16", "F32", 64, 1027, 64, 100),
      request("BF16", "BF16", 33, 512, 16, 101, { dora: true }),
      // larger than its slot's region: the slot moves to a new region while the other is busy
      request("BF16", "F16", 400, 1040, 8, 102),
      request("F32", "BF16", 3, 64, 4, 103),
    ];
    const got = await Promise.all(big.map((r) => cpu.mergeRows(r)));
    big.forEach((r, n) => assertSameBytes(got[n]!, mergeRowsReference(r), r.name));
  } finally {
    await cpu.dispose();
  }
});

Deno.test("`createCpuBackend()` rejects bad requests with coded errors and refuses after dispose", async () => {
  const cpu = await createCpuBackend({ workers: 1 });
  const req = request("BF16", "BF16", 2, 8, 2, 5);
  await assert.rejects(cpu.mergeRows({ ...req, rank: 3 }), { code: "MERGE_SHAPE" });
  await assert.rejects(cpu.mergeRows({ ...req, b: new Float32Array(3) }), { code: "MERGE_SHAPE" });
  await assert.rejects(
    cpu.mergeRows({ ...req, magnitude: new Float32Array(5) }),
    { code: "MERGE_SHAPE" },
  );
  await cpu.dispose();
  await assert.rejects(cpu.mergeRows(req), { code: "MERGE_DISPOSED" });
});

Deno.test("`createCpuBackend()` rounds bf16/f16 edges exactly like the reference", async () => {
  const cpu = await createCpuBackend({ workers: 0 });
  try {
    for (const od of ["BF16", "F16", "F32"] as const) {
      const req = roundingEdges(od);
      assertSameBytes(await cpu.mergeRows(req), mergeRowsReference(req), req.name);
      // the same values through the rank path: w + 1·(0·0) keeps w except -0
      const r1 = { ...req, rank: 1, a: new Float32Array(req.cols), b: new Float32Array(1) };
      assertSameBytes(await cpu.mergeRows(r1), mergeRowsReference(r1), `${req.name}.r1`);
    }
  } finally {
    await cpu.dispose();
  }
});

Deno.test("`mergeRowsInto()` reads W into the shared memory and writes the reference's bytes into the caller's buffer", async () => {
  for (const workers of [0, 2]) {
    const cpu = await createCpuBackend({ workers, inlineBelow: 0, chunkElements: 64 });
    try {
      const reqs = [
        ...corpus(),
        request("BF16", "BF16", 257, 1040, 16, 99),
        request("BF16", "F16", 400, 1040, 8, 102), // grows a slot while the other is in flight
        request("BF16", "BF16", 33, 512, 16, 101, { dora: true }),
      ];
      const outs = reqs.map((r) => new Uint8Array(r.rows * r.cols * MERGE_DTYPE_SIZE[r.outDtype]));
      const seen: number[] = [];
      const got = await Promise.all(reqs.map((r, n) => {
        const { w, ...rest } = r;
        // half the readers fill the backend's buffer, the other half hand back bytes of their own
        const readW = n % 2 === 0
          ? (into: Uint8Array) => {
            seen.push(into.byteLength);
            into.set(w);
            return Promise.resolve(into);
          }
          : () => Promise.resolve(w.slice());
        return cpu.mergeRowsInto({ ...rest, readW }, outs[n]!);
      }));
      reqs.forEach((r, n) => {
        assert.equal(got[n], outs[n], `${r.name}: resolves to the caller's buffer`);
        assertSameBytes(outs[n]!, mergeRowsReference(r), `${workers} workers: ${r.name}`);
      });
      assert.deepEqual(seen, reqs.filter((_, n) => n % 2 === 0).map((r) => r.w.byteLength));
    } finally {
      await cpu.dispose();
    }
  }
});

Deno.test("`mergeRowsInto()` refuses a wrong output buffer, a short W read and a failing read with coded errors", async () => {
  const cpu = await createCpuBackend({ workers: 1 });
  const { w, ...req } = request("BF16", "BF16", 4, 32, 2, 5);
  const out = new Uint8Array(4 * 32 * 2);
  const readW = () => Promise.resolve(w);
  await assert.rejects(cpu.mergeRowsInto({ ...req, readW }, out.subarray(1)), {
    code: "MERGE_SHAPE",
  });
  await assert.rejects(cpu.mergeRowsInto({ ...req, rank: 3, readW }, out), { code: "MERGE_SHAPE" });
  await assert.rejects(
    cpu.mergeRowsInto({ ...req, readW: () => Promise.resolve(w.subarray(2)) }, out),
    { code: "MERGE_SHAPE" },
  );
  await assert.rejects(
    cpu.mergeRowsInto({ ...req, readW: () => Promise.reject(new Error("disk gone")) }, out),
    /disk gone/,
  );
  // the slot is free again after a failed read
  await cpu.mergeRowsInto({ ...req, readW }, out);
  assertSameBytes(out, mergeRowsReference({ ...req, w }), "after failures");
  await cpu.dispose();
  await assert.rejects(cpu.mergeRowsInto({ ...req, readW }, out), { code: "MERGE_DISPOSED" });
});

Deno.test("`kernelKind()` unrolls ranks 1 to KERNEL_MAX_UNROLL with at least KERNEL_TILE_COLS columns, else runs the generic kernel", () => {
  const unrolled = (rank: number, cols: number) =>
    kernelKind("BF16", "F32", rank, cols).unroll !== undefined;
  assert.deepEqual(
    [
      unrolled(1, KERNEL_TILE_COLS),
      unrolled(KERNEL_MAX_UNROLL, KERNEL_TILE_COLS),
      unrolled(0, KERNEL_TILE_COLS),
      unrolled(KERNEL_MAX_UNROLL + 1, KERNEL_TILE_COLS),
      unrolled(8, KERNEL_TILE_COLS - 1),
      unrolled(KERNEL_MAX_UNROLL + 1, KERNEL_TILE_COLS - 1),
    ],
    [true, true, false, false, false, false],
  );
  assert.equal(kernelKey(kernelKind("BF16", "F32", 8, 64)), "BF16>F32:r8:c64");
  assert.equal(kernelKey(kernelKind("F16", "F16", 0, 64)), "F16>F16");
});

Deno.test("`uleb()` and `sleb()` write LEB128 as the WebAssembly spec does, at each 7-bit edge", () => {
  // Values from the DWARF/Wikipedia LEB128 examples and the one-byte/two-byte edges.
  assert.deepEqual([0, 127, 128, 624485].map(uleb), [[0], [0x7f], [0x80, 0x01], [
    0xe5,
    0x8e,
    0x26,
  ]]);
  assert.deepEqual(
    [0, 63, 64, -64, -65, -123456, 2 ** 31 - 1].map(sleb),
    [
      [0x00],
      [0x3f],
      [0xc0, 0x00],
      [0x40],
      [0xbf, 0x7f],
      [0xc0, 0xbb, 0x78],
      [0xff, 0xff, 0xff, 0xff, 0x07],
    ],
  );
});

Deno.test("`mergeRowsInto()` with change adds the block's Σ W², Σ ΔW² and max |ΔW| as the read path measures them", async () => {
  for (const workers of [0, 2]) {
    const cpu = await createCpuBackend({ workers, inlineBelow: 0, chunkElements: 64 });
    try {
      for (
        const r of [
          request("BF16", "BF16", 257, 1040, 16, 99),
          request("F16", "F32", 64, 1027, 8, 100),
          request("F32", "BF16", 33, 70, 4, 103),
          request("BF16", "F16", 40, 512, 16, 101, { dora: true }),
        ]
      ) {
        const { w, ...rest } = r;
        const change = { sumSqW: 1, sumSqDelta: 2, maxAbs: 0 }; // sums add to what is there
        const out = new Uint8Array(r.rows * r.cols * MERGE_DTYPE_SIZE[r.outDtype]);
        await cpu.mergeRowsInto({ ...rest, readW: () => Promise.resolve(w), change }, out);
        // what the merge's read path measures (merge/_lora_change.ts) on the reference's bytes
        const want = { sumSqW: 1, sumSqDelta: 2, maxAbs: 0 };
        addBlockChange(want, r.wDtype, w, r.outDtype, mergeRowsReference(r));
        const close = (a: number, b: number) =>
          a === b || (Number.isNaN(a) && Number.isNaN(b)) || Math.abs(a - b) <= 1e-12 * Math.abs(b);
        assert.ok(close(change.sumSqW, want.sumSqW), `${workers}: ${r.name} ΣW²`);
        assert.ok(close(change.sumSqDelta, want.sumSqDelta), `${workers}: ${r.name} ΣΔ²`);
        assert.ok(close(change.maxAbs, want.maxAbs), `${workers}: ${r.name} max`);
      }
    } finally {
      await cpu.dispose();
    }
  }
});

Deno.test("`mergeRowsInto()` gives the same Σ W², Σ ΔW² and max |ΔW| bits with 0, 1, 2 or 3 workers: chunks are added in order, whoever merged them", async () => {
  // finite weights: sums that round at every addition, so another order shows in their bits
  const reqs = [
    request("BF16", "BF16", 257, 1040, 16, 104),
    request("F16", "F32", 64, 1027, 8, 105),
    request("F32", "BF16", 33, 70, 4, 106),
  ].map((r) => ({ ...r, w: encodeF32(r.wDtype, seeded(r.rows * r.cols, r.rows, 4)) }));
  const seen = new Map<string, string>();
  for (const workers of [0, 1, 2, 3]) {
    const cpu = await createCpuBackend({ workers, inlineBelow: 0, chunkElements: 4096 });
    try {
      for (const r of reqs) {
        const { w, ...rest } = r;
        const change = { sumSqW: 0, sumSqDelta: 0, maxAbs: 0 };
        const out = new Uint8Array(r.rows * r.cols * MERGE_DTYPE_SIZE[r.outDtype]);
        await cpu.mergeRowsInto({ ...rest, readW: () => Promise.resolve(w), change }, out);
        assert.ok(Number.isFinite(change.sumSqDelta) && change.sumSqDelta > 0, r.name);
        const bits = [...new Uint8Array(Float64Array.of(change.sumSqW, change.sumSqDelta).buffer)]
          .join(",") + `/${change.maxAbs}`;
        if (!seen.has(r.name)) seen.set(r.name, bits);
        assert.equal(bits, seen.get(r.name), `${r.name}: ${workers} workers`);
      }
    } finally {
      await cpu.dispose();
    }
  }
});

Deno.test("`createCpuBackend()` merges the column tail of a DoRA block's last row without touching the magnitudes that follow its scratch rows", async () => {
  // 32 × 17 f32 scratch rows are 2,176 bytes, a multiple of 64: the magnitudes start right after
  // them, so anything written for a row past the block's last lands on magnitude 16 onwards
  const req = request("BF16", "BF16", 32, 17, 2, 31, { dora: true });
  // finite weights, so that a wrong magnitude shows in every row it scales
  req.w = encodeF32("BF16", seeded(32 * 17, 32, 4));
  for (const workers of [0, 2]) {
    const cpu = await createCpuBackend({ workers, inlineBelow: 0, chunkElements: 64 });
    try {
      assertSameBytes(await cpu.mergeRows(req), mergeRowsReference(req), `${workers} workers`);
    } finally {
      await cpu.dispose();
    }
  }
});

Deno.test("`mergeRowsInto()` without DoRA takes no room for DoRA's f32 rows in the shared memory", async () => {
  // 64 × 1024 bf16 at rank 16: A, B, W and the output take 324 KiB; f32 rows would add 256 KiB
  const rows = 64, cols = 1024, rank = 16;
  const { w, ...plain } = request("BF16", "BF16", rows, cols, rank, 41);
  const needs = plain.a.byteLength + plain.b.byteLength + 2 * w.byteLength;
  const grown = async (req: Omit<MergeRowsRequest, "w">) => {
    const cpu = await createCpuBackend({ workers: 0 });
    try {
      let memory = 0;
      const readW = (into: Uint8Array) => {
        memory = into.buffer.byteLength; // the whole shared memory, grown for this block
        into.set(w);
        return Promise.resolve(into);
      };
      await cpu.mergeRowsInto({ ...req, readW }, new Uint8Array(rows * cols * 2));
      return memory - 16 * 65536; // past the 16 pages a backend starts with
    } finally {
      await cpu.dispose();
    }
  };
  // a fresh backend grows its memory by 1.25 times the block's layout, in whole pages
  const slack = (bytes: number) => Math.ceil((bytes + 5 * 64) * 1.25 / 65536) * 65536;
  assert.ok((await grown(plain)) <= slack(needs), "the plain block");
  const dora = { ...plain, magnitude: seeded(rows, 42, 3) };
  assert.ok((await grown(dora)) >= needs + rows * cols * 4, "the DoRA block");
});

Deno.test("`packA()` writes rank x cols values, the tail columns last, and leaves the rest of a longer out as it was", () => {
  // rank 2, 18 columns: one tile of 16 columns, then a tail of 2 per row.
  const a = Float32Array.from({ length: 40 }, (_, i) => i); // 4 values past rank x cols
  const out = new Float32Array(40).fill(-1);
  packA(a, 2, 18, out);
  assert.deepEqual([...out.subarray(32, 36)], [16, 17, 34, 35]);
  assert.deepEqual([...out.subarray(36)], [-1, -1, -1, -1]);
});
