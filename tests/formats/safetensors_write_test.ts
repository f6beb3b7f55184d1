/** The safetensors writer: byte-exact output, streaming in bounded blocks, aborts and refusals. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type ErrorCode, isCkptError } from "../../errors.ts";
import { type DType, DTYPE_NAMES, DTYPES } from "../../formats/dtype.ts";
import {
  openSafetensors,
  readSafetensorsHeader,
  STREAM_BLOCK_BYTES,
  writeSafetensors,
} from "../../formats/safetensors.ts";
import {
  byteLength,
  rowNumel,
  StateDict,
  tensorFromBytes,
  type TensorRef,
} from "../../formats/state_dict.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const FIXTURES = new URL("../fixtures/safetensors/", import.meta.url).pathname;

Deno.test("`writeSafetensors()` reproduces the real library's file exactly", async () => {
  await withTempDir(async (dir) => {
    for (
      const src of [
        join(FIXTURES, "all_dtypes.safetensors"),
        join(FIXTURES, "sharded", "model-00002-of-00003.safetensors"),
        join(FIXTURES, "casts.safetensors"),
      ]
    ) {
      await using sd = await openSafetensors(src);
      const out = join(dir, "out.safetensors");
      // The reference writer orders by dtype then name: feed tensors in a scrambled order.
      const scrambled = new StateDict([...sd].reverse());
      await writeSafetensors(out, scrambled, { metadata: sd.metadata });
      assert.deepEqual(await Deno.readFile(out), await Deno.readFile(src), src);
    }
  });
});

/** Seeded PRNG (mulberry32). */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("round trip: random dtypes, shapes (0-d, empty, long) and metadata", async () => {
  const rand = prng(42);
  const int = (n: number) => Math.floor(rand() * n);
  let hugeEmpty = 0;
  await withTempDir(async (dir) => {
    for (let trial = 0; trial < 40; trial++) {
      const sd = new StateDict();
      const data = new Map<string, Uint8Array>();
      const count = int(8);
      for (let i = 0; i < count; i++) {
        const dtype = DTYPE_NAMES[int(DTYPE_NAMES.length)]! as DType;
        const rank = int(5);
        const shape = Array.from(
          { length: rank },
          () => (rand() < 0.1 ? 0 : 1 + int(rank > 2 ? 4 : 40)),
        );
        if (rank === 1 && rand() < 0.2) shape[0] = 5000 + int(5000); // a long 1-d tensor
        if (rank === 2 && rand() < 0.2) {
          shape.splice(0, 2, 0, 2 ** 40); // empty with a huge dim
          hugeEmpty++;
        }
        const bytes = new Uint8Array(byteLength(dtype, shape)).map(() => int(256));
        const name = rand() < 0.2 ? `ünï.${i}.${"x".repeat(int(3))}` : `layer.${int(100)}.w${i}`;
        if (sd.has(name)) continue;
        sd.set(name, tensorFromBytes(dtype, shape, bytes));
        data.set(name, bytes);
      }
      const metadata: Record<string, string> = {};
      for (let i = int(4); i > 0; i--) {
        metadata[`k${int(50)}`] = rand() < 0.5 ? "" : `v"\\\n${int(1e6)}`;
      }
      const path = join(dir, `t${trial}.safetensors`);
      const { bytes } = await writeSafetensors(path, sd, { metadata });
      const header = await readSafetensorsHeader(path);
      assert.equal(header.fileSize, bytes);
      assert.equal(header.headerSize % 8, 0);
      assert.deepEqual(header.metadata ?? {}, metadata);
      await using back = await openSafetensors(path);
      assert.equal(back.size, sd.size);
      for (const [name, want] of data) {
        const ref = back.require(name);
        assert.deepEqual(ref.shape, sd.require(name).shape);
        assert.equal(ref.dtype, sd.require(name).dtype);
        assert.deepEqual(await ref.read(), want, name);
        const rows = ref.shape.length === 0 ? 1 : ref.shape[0]!;
        const s = int(rows + 1);
        const e = s + int(rows - s + 1);
        const rb = rowNumel(ref.shape) * DTYPES[ref.dtype].size;
        assert.deepEqual(await ref.read(s, e), want.subarray(s * rb, e * rb));
      }
      // Every tensor's absolute offset is aligned to its element size (reference ordering).
      for (const t of header.tensors) {
        assert.equal((header.dataStart + t.dataOffsets[0]) % DTYPES[t.dtype].size, 0, t.name);
      }
    }
  });
  assert.ok(hugeEmpty > 0);
});

/** A ref that records the row ranges asked of it and can misbehave. */
function recordingRef(
  dtype: DType,
  shape: number[],
  calls: [number, number][],
  lie = false,
): TensorRef {
  const inner = tensorFromBytes(dtype, shape, new Uint8Array(byteLength(dtype, shape)).fill(7));
  return {
    dtype,
    shape,
    async read(s?: number, e?: number) {
      calls.push([s ?? 0, e ?? shape[0]!]);
      const b = await inner.read(s, e);
      return lie ? b.subarray(1) : b;
    },
  };
}

Deno.test("`writeSafetensors()` streams big tensors in bounded row blocks", async () => {
  await withTempDir(async (dir) => {
    const calls: [number, number][] = [];
    const rows = 1000;
    const cols = Math.ceil((STREAM_BLOCK_BYTES * 2.5) / rows / 4); // ~40 MiB of F32
    const sd = new StateDict([["big", recordingRef("F32", [rows, cols], calls)]]);
    const seen: number[] = [];
    const path = join(dir, "big.safetensors");
    const { bytes } = await writeSafetensors(path, sd, {
      onProgress: (d, total) => seen.push(d, total),
    });
    assert.ok(calls.length >= 3, `only ${calls.length} reads`);
    for (const [s, e] of calls) assert.ok((e - s) * cols * 4 <= STREAM_BLOCK_BYTES);
    assert.deepEqual(calls.map((c) => c[0]), calls.map((_, i) => calls[0]![1] * i));
    assert.equal(seen[seen.length - 2], bytes);
    assert.equal(seen[seen.length - 1], bytes);
    assert.equal((await Deno.stat(path)).size, bytes);
  });
});

Deno.test("`writeSafetensors()` reads rows larger than a block one at a time", async () => {
  await withTempDir(async (dir) => {
    const calls: [number, number][] = [];
    const cols = STREAM_BLOCK_BYTES + 4096;
    const sd = new StateDict([
      ["a", tensorFromBytes("U8", [3], new Uint8Array(3))],
      ["wide", recordingRef("U8", [3, cols], calls)],
    ]);
    const path = join(dir, "wide.safetensors");
    const done: number[] = [0];
    const { bytes } = await writeSafetensors(path, sd, { onProgress: (d) => done.push(d) });
    assert.deepEqual(calls, [[0, 1], [1, 2], [2, 3]]);
    // Each write holds at most one wide row (a segment never grows past one oversized row).
    const steps = done.slice(1).map((d, i) => d - done[i]!);
    assert.ok(steps.every((n) => n <= cols), `writes of ${steps.join(", ")} bytes`);
    assert.equal((await Deno.stat(path)).size, bytes);
  });
});

Deno.test("`writeSafetensors()` is safe with refs that reuse one output buffer", async () => {
  await withTempDir(async (dir) => {
    const cols = STREAM_BLOCK_BYTES / 2;
    const shared = new Uint8Array(STREAM_BLOCK_BYTES);
    const reusing: TensorRef = {
      dtype: "U8",
      shape: [3, cols],
      read(s = 0, e = 3) {
        // Overwrites the shared buffer at once, while the previous block may still be written.
        for (let r = s; r < e; r++) shared.fill(r + 1, (r - s) * cols, (r - s + 1) * cols);
        return Promise.resolve(shared.subarray(0, (e - s) * cols));
      },
    };
    const path = join(dir, "reuse.safetensors");
    await writeSafetensors(path, new StateDict([["w", reusing]]));
    await using back = await openSafetensors(path);
    for (let r = 0; r < 3; r++) {
      const row = await back.require("w").read(r, r + 1);
      assert.ok(row.every((b) => b === r + 1), `row ${r} was overwritten`);
    }
  });
});

Deno.test("`writeSafetensors()` re-writes a file it reads, mixing packed and split tensors", async () => {
  await withTempDir(async (dir) => {
    const rand = prng(9);
    const sd = new StateDict();
    // Many small tensors (packed into shared blocks) around two that span several blocks, one
    // with rows that do not divide the block size.
    const shapes: [DType, number[]][] = [
      ["F32", [3, 7]],
      ["BF16", [Math.ceil(STREAM_BLOCK_BYTES / 2 / 1000) * 2 + 3, 1000]],
      ["U8", [5]],
      ["F32", []],
      ["I64", [STREAM_BLOCK_BYTES / 8 / 16 + 1, 16]],
      ["F16", [0, 9]],
    ];
    shapes.forEach(([dtype, shape], i) => {
      const bytes = new Uint8Array(byteLength(dtype, shape)).map(() => (rand() * 256) | 0);
      sd.set(`t${i}`, tensorFromBytes(dtype, shape, bytes));
    });
    for (let i = 0; i < 50; i++) {
      sd.set(`small.${i}`, tensorFromBytes("U8", [i], new Uint8Array(i).fill(i)));
    }
    const first = join(dir, "first.safetensors");
    const second = join(dir, "second.safetensors");
    await writeSafetensors(first, sd);
    await using back = await openSafetensors(first);
    await writeSafetensors(second, back);
    assert.deepEqual(await Deno.readFile(second), await Deno.readFile(first));
    for (const [name, ref] of sd) {
      assert.deepEqual(await back.require(name).read(), await ref.read(), name);
    }
  });
});

Deno.test("`writeSafetensors()` rejects a short read and leaves no file behind", async () => {
  await withTempDir(async (dir) => {
    const sd = new StateDict([
      ["ok", tensorFromBytes("U8", [4], new Uint8Array(4))],
      ["bad", recordingRef("F32", [3, 2], [], true)],
    ]);
    const path = join(dir, "x.safetensors");
    await assert.rejects(
      () => writeSafetensors(path, sd),
      (e) => isCkptError(e, "SAFETENSORS_WRITE_SIZE") && e.tensor === "bad",
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});

Deno.test("`writeSafetensors()` stops on abort and removes its temporary file", async () => {
  await withTempDir(async (dir) => {
    const ctl = new AbortController();
    const slow: TensorRef = {
      dtype: "U8",
      shape: [4],
      read: () => {
        ctl.abort();
        return Promise.resolve(new Uint8Array(4));
      },
    };
    const sd = new StateDict([["a", slow], ["b", tensorFromBytes("U8", [4], new Uint8Array(4))]]);
    await assert.rejects(() =>
      writeSafetensors(join(dir, "x.safetensors"), sd, { signal: ctl.signal })
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});

Deno.test("`writeSafetensors()` rejects non-string metadata before writing", async () => {
  await withTempDir(async (dir) => {
    const bad = { n: 1 } as unknown as Record<string, string>;
    await assert.rejects(
      () => writeSafetensors(join(dir, "x.safetensors"), new StateDict(), { metadata: bad }),
      (e) => isCkptError(e, "SAFETENSORS_METADATA"),
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});

Deno.test("`writeSafetensors()` refuses reserved names and impossible shapes before writing", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "x.safetensors");
    const fake = (shape: number[]): TensorRef => ({
      dtype: "F32",
      shape,
      read: () => Promise.resolve(new Uint8Array(0)),
    });
    const cases: [StateDict, ErrorCode][] = [
      [
        new StateDict([["__metadata__", tensorFromBytes("U8", [1], new Uint8Array(1))]]),
        "SAFETENSORS_NAME",
      ],
      [new StateDict([["a", fake([-1])]]), "SAFETENSORS_SHAPE"],
      [new StateDict([["a", fake([1.5])]]), "SAFETENSORS_SHAPE"],
      [new StateDict([["a", fake([2 ** 40, 2 ** 40])]]), "SAFETENSORS_SHAPE"],
    ];
    for (const [sd, code] of cases) {
      await assert.rejects(() => writeSafetensors(path, sd), (e) => isCkptError(e, code));
    }
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});
