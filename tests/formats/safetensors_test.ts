import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { type ErrorCode, isCkptError } from "../../errors.ts";
import { type DType, DTYPE_NAMES, dtypeFromTorch, DTYPES } from "../../formats/dtype.ts";
import {
  openHfShards,
  openSafetensors,
  planSafetensorsShards,
  readSafetensorsHeader,
  STREAM_BLOCK_BYTES,
  writeSafetensors,
  writeSafetensorsSharded,
} from "../../formats/safetensors.ts";
import {
  byteLength,
  rowNumel,
  StateDict,
  tensorFromBytes,
  type TensorRef,
} from "../../formats/state_dict.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { hex } from "../_helpers/hex.ts";

const FIXTURES = new URL("../fixtures/safetensors/", import.meta.url).pathname;

interface HostileCase {
  file: string;
  code: string;
  tensor?: string;
  note: string;
}

Deno.test("`readSafetensorsHeader()` rejects every file of the hostile corpus with its code", async (t) => {
  const cases = JSON.parse(
    await Deno.readTextFile(join(FIXTURES, "hostile", "cases.json")),
  ) as HostileCase[];
  assert.ok(cases.length >= 25);
  for (const c of cases) {
    await t.step(`${c.file}: ${c.code}`, async () => {
      const path = join(FIXTURES, "hostile", c.file);
      for (const open of [readSafetensorsHeader, openSafetensors]) {
        const err = await open(path).then(() => undefined, (e: unknown) => e);
        assert.ok(isCkptError(err), `${c.file} did not fail with a CkptError: ${err}`);
        assert.equal(err.code, c.code, `${c.file}: ${err.message}`);
        assert.equal(err.file, path);
        assert.ok(err.message.includes(path), err.message);
        assert.ok(err.message.startsWith("Cannot "), err.message);
        if (c.tensor !== undefined) {
          assert.equal(err.tensor, c.tensor);
          assert.ok(err.message.includes(`"${c.tensor}"`), err.message);
        }
      }
    });
  }
});

/** A safetensors file from a raw header text and data bytes. */
function rawFile(header: string, data: Uint8Array): Uint8Array {
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

Deno.test("`readSafetensorsHeader()` accepts what the reference accepts, rejects escaped duplicates", async () => {
  await withTempDir(async (dir) => {
    const ok = [
      // whitespace around the object, no padding to 8, extra fields, null metadata, keys out of order
      ' \n{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4],"extra":1},' +
      '"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"__metadata__":null}\t',
      '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"z":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},' +
      '"s":{"dtype":"U8","shape":[2,1],"data_offsets":[2,4]},"q\\"{,}":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}}',
    ];
    for (const [i, header] of ok.entries()) {
      const path = join(dir, `ok${i}.safetensors`);
      await Deno.writeFile(path, rawFile(header, new Uint8Array([1, 2, 3, 4])));
      const h = await readSafetensorsHeader(path);
      assert.equal(h.metadata, undefined);
      assert.deepEqual(
        h.tensors.slice(0, 2).map((t) => t.name).sort(),
        i === 0 ? ["a", "b"] : ["a", "z"],
      );
      await using sd = await openSafetensors(path);
      assert.deepEqual([...(await sd.require("a").read())], [1, 2]);
    }
    const dup = join(dir, "dup.safetensors");
    await Deno.writeFile(
      dup,
      rawFile(
        '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"\\u0061":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}',
        new Uint8Array(4),
      ),
    );
    await assert.rejects(
      () => readSafetensorsHeader(dup),
      (e) => isCkptError(e, "SAFETENSORS_DUPLICATE"),
    );
  });
});

Deno.test("`readSafetensorsHeader()` explains an LFS pointer and a missing file", async () => {
  const err = await readSafetensorsHeader(join(FIXTURES, "hostile", "lfs_pointer.safetensors"))
    .catch((e) => e);
  assert.match(err.message, /Git LFS/);
  const missing = await readSafetensorsHeader("/nonexistent/x.safetensors").catch((e) => e);
  assert.ok(isCkptError(missing, "FILE_OPEN"));
});

Deno.test("`openSafetensors()` reads a file the real library wrote byte for byte", async () => {
  const expected = JSON.parse(await Deno.readTextFile(join(FIXTURES, "expected.json"))) as Record<
    string,
    { dtype: string; shape: number[]; hex: string }
  >;
  await using sd = await openSafetensors(join(FIXTURES, "all_dtypes.safetensors"));
  assert.deepEqual(sd.metadata, { format: "pt" });
  assert.deepEqual([...sd.keys()].sort(), Object.keys(expected).sort());
  for (const [name, want] of Object.entries(expected)) {
    const ref = sd.require(name);
    assert.equal(ref.dtype, dtypeFromTorch(want.dtype), name);
    assert.deepEqual(ref.shape, want.shape, name);
    assert.equal(hex(await ref.read()), want.hex, name);
    // Row ranges read exactly those rows.
    if (ref.shape.length > 0 && ref.shape[0]! >= 2) {
      const rb = rowNumel(ref.shape) * DTYPES[ref.dtype].size * 2;
      assert.equal(hex(await ref.read(1, ref.shape[0]!)), want.hex.slice(rb / 2 * 2));
      assert.equal(hex(await ref.read(0, 1)), want.hex.slice(0, rb));
    }
  }
  await assert.rejects(() => sd.require("f32").read(2, 9), (e) => isCkptError(e, "ROW_RANGE"));
});

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

Deno.test("`openHfShards()` reads a shard folder and cross-checks its index", async (t) => {
  const want = JSON.parse(
    await Deno.readTextFile(join(FIXTURES, "sharded_expected.json")),
  ) as Record<
    string,
    string
  >;
  await t.step("reads every tensor byte for byte", async () => {
    for (
      const p of [
        join(FIXTURES, "sharded"),
        join(FIXTURES, "sharded", "model.safetensors.index.json"),
      ]
    ) {
      await using sd = await openHfShards(p);
      assert.deepEqual([...sd.keys()].sort(), Object.keys(want).sort());
      for (const [k, v] of Object.entries(want)) assert.equal(hex(await sd.require(k).read()), v);
      assert.deepEqual(sd.metadata, { format: "pt" });
    }
  });
  const broken = async (
    edit: (index: { weight_map: Record<string, string> }, dir: string) => Promise<void> | void,
    code: ErrorCode,
  ) => {
    await withTempDir(async (dir) => {
      for (const e of Deno.readDirSync(join(FIXTURES, "sharded"))) {
        await Deno.copyFile(join(FIXTURES, "sharded", e.name), join(dir, e.name));
      }
      const indexPath = join(dir, "model.safetensors.index.json");
      const index = JSON.parse(await Deno.readTextFile(indexPath));
      await edit(index, dir);
      await Deno.writeTextFile(indexPath, JSON.stringify(index));
      await assert.rejects(() => openHfShards(dir), (e) => isCkptError(e, code));
    });
  };
  await t.step("an entry in the wrong shard", () =>
    broken((ix) => {
      ix.weight_map["lm_head.weight"] = "model-00001-of-00003.safetensors";
    }, "HF_INDEX_MISSING"));
  await t.step("a shard tensor the index omits", () =>
    broken((ix) => {
      delete ix.weight_map["model.norm.weight"];
    }, "HF_INDEX_UNLISTED"));
  await t.step("an index entry no shard holds", () =>
    broken((ix) => {
      ix.weight_map["ghost.weight"] = "model-00002-of-00003.safetensors";
    }, "HF_INDEX_MISSING"));
  await t.step("a tensor in two shards", () =>
    broken(async (_ix, dir) => {
      await Deno.copyFile(
        join(dir, "model-00001-of-00003.safetensors"),
        join(dir, "model-00002-of-00003.safetensors"),
      );
      await Deno.copyFile(
        join(dir, "model-00001-of-00003.safetensors"),
        join(dir, "model-00003-of-00003.safetensors"),
      );
    }, "HF_INDEX_DUPLICATE"));
  await t.step("a shard path outside the folder", () =>
    broken((ix) => {
      ix.weight_map["lm_head.weight"] = "../model-00003-of-00003.safetensors";
    }, "HF_INDEX"));
  await t.step("a missing shard file", () =>
    broken(async (_ix, dir) => {
      await Deno.remove(join(dir, "model-00003-of-00003.safetensors"));
    }, "FILE_OPEN"));
  await t.step("an index that is not an index", () =>
    broken((ix) => {
      (ix as unknown as Record<string, unknown>).weight_map = [1];
    }, "HF_INDEX"));
});

Deno.test("`writeSafetensorsSharded()` splits as save_pretrained and reads back", async () => {
  await withTempDir(async (dir) => {
    const u8 = (n: number, v: number) => tensorFromBytes("U8", [n], new Uint8Array(n).fill(v));
    // 10-byte limit: c(12) gets a shard at once while [a, b] stays open; d closes [a, b].
    const sd = new StateDict([["a", u8(4, 1)], ["b", u8(4, 2)], ["c", u8(12, 3)], ["d", u8(3, 4)], [
      "e",
      u8(3, 5),
    ]]);
    const plan = planSafetensorsShards(sd, 10);
    assert.deepEqual(plan.files.map((f) => f.tensors), [["c"], ["a", "b"], ["d", "e"]]);
    const { files, index } = await writeSafetensorsSharded(dir, sd, { maxShardSize: 10 });
    assert.deepEqual(files.map((f) => f.slice(dir.length + 1)), [
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      "model.safetensors.index.json",
    ]);
    assert.deepEqual(index?.metadata, { total_size: 26 });
    const text = await Deno.readTextFile(join(dir, "model.safetensors.index.json"));
    assert.equal(text, plan.indexText);
    assert.ok(text.endsWith("}\n"));
    assert.ok(
      text.startsWith('{\n  "metadata": {\n    "total_size": 26\n  },\n  "weight_map": {\n'),
    );
    for (const f of plan.files) {
      assert.equal((await Deno.stat(join(dir, f.file))).size, f.fileBytes);
    }
    await using back = await openHfShards(dir);
    for (const [k, ref] of sd) assert.deepEqual(await back.require(k).read(), await ref.read());
  });
  await withTempDir(async (dir) => {
    const sd = new StateDict([["w", tensorFromBytes("F32", [2], new Uint8Array(8))]]);
    const { files, index } = await writeSafetensorsSharded(dir, sd, { maxShardSize: 1e9 });
    assert.deepEqual(files, [join(dir, "model.safetensors")]);
    assert.equal(index, undefined);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["model.safetensors"]);
  });
});

Deno.test("`writeSafetensorsSharded()` removes shards of an earlier save, as save_pretrained does", async () => {
  await withTempDir(async (dir) => {
    const u8 = (n: number) => tensorFromBytes("U8", [n], new Uint8Array(n));
    const four = new StateDict([["a", u8(8)], ["b", u8(8)], ["c", u8(8)], ["d", u8(8)]]);
    await writeSafetensorsSharded(dir, four, { maxShardSize: 8 });
    await Deno.writeTextFile(join(dir, "config.json"), "{}");
    await Deno.writeTextFile(join(dir, "other-00001-of-00002.safetensors"), "not ours");
    const two = new StateDict([["a", u8(8)], ["b", u8(8)]]);
    await writeSafetensorsSharded(dir, two, { maxShardSize: 8 });
    const names = () => [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names(), [
      "config.json",
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
      "model.safetensors.index.json",
      "other-00001-of-00002.safetensors",
    ]);
    await using back = await openHfShards(dir);
    assert.deepEqual([...back.keys()], ["a", "b"]);
    await writeSafetensorsSharded(dir, two, { maxShardSize: 100 });
    assert.deepEqual(names(), [
      "config.json",
      "model.safetensors",
      "other-00001-of-00002.safetensors",
    ]);
    await writeSafetensorsSharded(dir, four, { maxShardSize: 8, removeStale: false });
    await writeSafetensorsSharded(dir, two, { maxShardSize: 8, removeStale: false });
    assert.ok(names().includes("model-00004-of-00004.safetensors"));
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

Deno.test("`writeSafetensorsSharded()` and `writeSafetensors()` pass every byte to onBytes in file order", async () => {
  await withTempDir(async (dir) => {
    const big = new Uint8Array(2 * STREAM_BLOCK_BYTES + 4096 * 5); // three blocks: one reused
    for (let i = 0; i < big.length; i += 64) big[i] = (i >> 9) % 251; // no period of a block
    const sd = new StateDict([
      ["big", tensorFromBytes("U8", [big.length / 4096, 4096], big)],
      ["a", tensorFromBytes("F32", [3], new Uint8Array(12).fill(7))],
      ["b", tensorFromBytes("U8", [5], new Uint8Array(5).fill(9))],
    ]);
    const seen = new Map<string, Uint8Array[]>();
    const onBytes = async (path: string, bytes: Uint8Array): Promise<void> => {
      const list = seen.get(path) ?? [];
      list.push(bytes.slice()); // the writer reuses its buffers
      seen.set(path, list);
      await new Promise((r) => setTimeout(r, 0)); // awaited before the writer goes on
    };
    const { files } = await writeSafetensorsSharded(dir, sd, {
      maxShardSize: STREAM_BLOCK_BYTES,
      onBytes,
    });
    const single = join(dir, "single.safetensors");
    await writeSafetensors(single, sd, { onBytes });
    const shards = files.filter((f) => f.endsWith(".safetensors"));
    assert.equal(shards.length, 2);
    assert.deepEqual([...seen.keys()].sort(), [...shards, single].sort());
    for (const path of [...shards, single]) {
      const chunks = seen.get(path)!;
      assert.equal(sha256(concat(chunks)), sha256(await Deno.readFile(path)), path);
      assert.ok(path !== single || chunks.length >= 3, "header, then more than one block");
    }
  });
});

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
