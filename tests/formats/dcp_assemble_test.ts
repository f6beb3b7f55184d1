import assert from "node:assert/strict";
import {
  assembleRows,
  checkChunkCoverage,
  type ChunkRect,
  type ChunkRows,
  planRowCopies,
} from "../../formats/_dcp_assemble.ts";
import { isCkptError } from "../../errors.ts";

/** A tiny seeded PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function prod(xs: readonly number[]): number {
  return xs.reduce((a, b) => a * b, 1);
}

/** The chunk's elements cut out of a full row-major tensor of u16 values equal to their index. */
function chunkBytes(shape: number[], c: ChunkRect, elemSize: number): Uint8Array {
  const n = prod(c.sizes);
  const out = new Uint8Array(n * elemSize);
  const dv = new DataView(out.buffer);
  const idx = new Array<number>(shape.length).fill(0);
  for (let k = 0; k < n; k++) {
    let rem = k;
    for (let d = shape.length - 1; d >= 0; d--) {
      idx[d] = rem % c.sizes[d]!;
      rem = Math.floor(rem / c.sizes[d]!);
    }
    let flat = 0;
    for (let d = 0; d < shape.length; d++) flat = flat * shape[d]! + c.offsets[d]! + idx[d]!;
    if (elemSize === 4) dv.setUint32(k * 4, flat, true);
    else dv.setUint16(k * 2, flat, true);
  }
  return out;
}

function fullBytes(shape: number[], elemSize: number): Uint8Array {
  return chunkBytes(shape, { offsets: shape.map(() => 0), sizes: shape }, elemSize);
}

/** A memory chunk source that counts reads and never hands out more than the rows asked for. */
function memorySource(bytes: Uint8Array, sizes: readonly number[], elemSize: number): ChunkRows {
  const rowBytes = prod(sizes.slice(1)) * elemSize;
  return {
    readRows(a: number, b: number, into?: Uint8Array): Promise<Uint8Array> {
      const rows = sizes.length === 0 ? 1 : sizes[0]!;
      assert.ok(0 <= a && a <= b && b <= rows, `rows [${a}, ${b}) of ${rows}`);
      const part = bytes.subarray(a * rowBytes, b * rowBytes);
      if (into) {
        assert.equal(into.byteLength, part.byteLength);
        into.set(part);
        return Promise.resolve(into);
      }
      return Promise.resolve(part.slice());
    },
  };
}

/** Splits `n` into random consecutive pieces, some of them empty. */
function cuts(n: number, r: () => number): [number, number][] {
  const pieces: [number, number][] = [];
  let at = 0;
  while (at < n) {
    const len = 1 + Math.floor(r() * Math.max(1, n - at));
    pieces.push([at, Math.min(len, n - at)]);
    at += len;
    if (r() < 0.2) pieces.push([at > n ? n : at, 0]);
  }
  if (n === 0 || r() < 0.3) pieces.push([n, 0]);
  return pieces;
}

function randomTiling(shape: number[], r: () => number): ChunkRect[] {
  let rects: ChunkRect[] = [{ offsets: [], sizes: [] }];
  for (const n of shape) {
    const next: ChunkRect[] = [];
    for (const rect of rects) {
      for (const [o, s] of cuts(n, r)) {
        next.push({ offsets: [...rect.offsets, o], sizes: [...rect.sizes, s] });
      }
    }
    rects = next;
  }
  // Shuffle: files do not keep any order.
  for (let i = rects.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [rects[i], rects[j]] = [rects[j]!, rects[i]!];
  }
  return rects;
}

Deno.test("assembleRows() rebuilds random tilings along every dimension, row block by row block", async () => {
  const r = rng(42);
  for (let trial = 0; trial < 150; trial++) {
    const rank = Math.floor(r() * 5); // 0-d .. 4-d
    const shape = Array.from({ length: rank }, () => 1 + Math.floor(r() * 6));
    const elemSize = r() < 0.5 ? 2 : 4;
    const chunks = randomTiling(shape, r);
    checkChunkCoverage(shape, chunks, { tensor: "t" });
    const sources = chunks.map((c) =>
      memorySource(chunkBytes(shape, c, elemSize), c.sizes, elemSize)
    );
    const full = fullBytes(shape, elemSize);
    const rows = rank === 0 ? 1 : shape[0]!;
    const rowBytes = prod(shape.slice(1)) * elemSize;
    const block = 1 + Math.floor(r() * rows);
    for (let a = 0; a < rows; a += block) {
      const b = Math.min(rows, a + block);
      const got = await assembleRows(shape, elemSize, chunks, sources, a, b);
      assert.deepEqual(
        got,
        full.subarray(a * rowBytes, b * rowBytes),
        `shape ${shape} rows ${a}-${b}`,
      );
    }
  }
});

Deno.test("assembleRows() handles FSDP-style uneven dim-0 shards with an empty last rank", async () => {
  const shape = [3, 7];
  const chunks: ChunkRect[] = [
    { offsets: [0, 0], sizes: [1, 7] },
    { offsets: [1, 0], sizes: [1, 7] },
    { offsets: [2, 0], sizes: [1, 7] },
    { offsets: [3, 0], sizes: [0, 7] },
  ];
  checkChunkCoverage(shape, chunks, { tensor: "w" });
  const sources = chunks.map((c) => memorySource(chunkBytes(shape, c, 2), c.sizes, 2));
  assert.deepEqual(await assembleRows(shape, 2, chunks, sources, 0, 3), fullBytes(shape, 2));
  assert.equal(planRowCopies(shape, chunks, 1, 2).length, 1);
  assert.ok(planRowCopies(shape, chunks, 0, 3).every((c) => c.contiguous));
});

Deno.test("checkChunkCoverage() rejects overlapping chunks", () => {
  const err = (() => {
    try {
      checkChunkCoverage([4, 4], [
        { offsets: [0, 0], sizes: [2, 4] },
        { offsets: [2, 0], sizes: [2, 2] },
        { offsets: [1, 2], sizes: [3, 2] },
      ], { tensor: "w", fileOf: (i) => `__${i}_0.distcp` });
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  assert.ok(isCkptError(err, "DCP_CHUNK_OVERLAP"));
  assert.equal(err.tensor, "w");
  assert.equal(err.file, "__2_0.distcp");
});

Deno.test("checkChunkCoverage() rejects a hole", () => {
  assert.throws(
    () =>
      checkChunkCoverage([5, 3], [
        { offsets: [0, 0], sizes: [2, 3] },
        { offsets: [3, 0], sizes: [2, 3] },
      ], { tensor: "w" }),
    (e) => isCkptError(e, "DCP_CHUNK_HOLE") && e.tensor === "w",
  );
  assert.throws(
    () => checkChunkCoverage([], [], { tensor: "scalar" }),
    (e) => isCkptError(e, "DCP_CHUNK_HOLE"),
  );
});

Deno.test("checkChunkCoverage() rejects chunks outside the tensor or of the wrong rank", async (t) => {
  const cases: [string, ChunkRect][] = [
    ["past the end", { offsets: [4, 0], sizes: [1, 3] }],
    ["negative offset", { offsets: [-1, 0], sizes: [1, 3] }],
    ["wrong rank", { offsets: [0], sizes: [4] }],
    ["fractional size", { offsets: [0, 0], sizes: [1.5, 3] }],
    ["empty past the end", { offsets: [5, 0], sizes: [0, 3] }],
  ];
  for (const [name, bad] of cases) {
    await t.step(name, () => {
      assert.throws(
        () =>
          checkChunkCoverage([4, 3], [{ offsets: [0, 0], sizes: [4, 3] }, bad], { tensor: "w" }),
        (e) => isCkptError(e, "DCP_CHUNK_BOUNDS"),
      );
    });
  }
});

Deno.test("checkChunkCoverage() accepts a 0-d tensor with one chunk and empty chunks at the boundary", () => {
  checkChunkCoverage([], [{ offsets: [], sizes: [] }], { tensor: "step" });
  checkChunkCoverage([0, 4], [{ offsets: [0, 0], sizes: [0, 4] }], { tensor: "empty" });
  checkChunkCoverage([0, 4], [], { tensor: "empty" });
  assert.throws(
    () =>
      checkChunkCoverage([], [{ offsets: [], sizes: [] }, { offsets: [], sizes: [] }], {
        tensor: "step",
      }),
    (e) => isCkptError(e, "DCP_CHUNK_OVERLAP"),
  );
});

Deno.test("assembleRows() reads only the rows asked for, for a tensor sharded over 8 ranks", async (t) => {
  for (const dim of [0, 1]) {
    await t.step(`sharded along dim ${dim}`, async () => {
      const shape = [800, 64];
      const chunks: ChunkRect[] = Array.from({ length: 8 }, (_, r) => {
        const per = shape[dim]! / 8;
        const offsets = [0, 0], sizes = [...shape];
        offsets[dim] = r * per;
        sizes[dim] = per;
        return { offsets, sizes };
      });
      let bytesRead = 0, largest = 0;
      const sources = chunks.map((c) => {
        const inner = memorySource(chunkBytes(shape, c, 2), c.sizes, 2);
        return {
          async readRows(a: number, b: number, into?: Uint8Array) {
            const got = await inner.readRows(a, b, into);
            bytesRead += got.byteLength;
            largest = Math.max(largest, got.byteLength);
            return got;
          },
        };
      });
      const full = fullBytes(shape, 2);
      const rowBytes = 64 * 2;
      for (let a = 0; a < 800; a += 16) {
        bytesRead = 0;
        const got = await assembleRows(shape, 2, chunks, sources, a, a + 16);
        assert.deepEqual(got, full.subarray(a * rowBytes, (a + 16) * rowBytes));
        assert.equal(bytesRead, 16 * rowBytes, "reads exactly the block");
      }
      assert.ok(largest <= 16 * rowBytes);
    });
  }
});
