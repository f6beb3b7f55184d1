/** saveTorch / saveTorchStateDict / writeTorchSharded: layout, determinism, streaming, abort. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { StateDict, tensorFromBytes, type TensorRef } from "../../../formats/state_dict.ts";
import { loadTorch } from "../../../formats/torch/load.ts";
import { saveTorch, saveTorchStateDict, torchArchivePrefix } from "../../../formats/torch/save.ts";
import { openTorchStateDict, writeTorchSharded } from "../../../formats/torch/state_dict.ts";
import {
  pyDict,
  PyRecord,
  tensorOfBytes,
  type TorchTensor,
} from "../../../formats/torch/values.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { REPO_ROOT } from "../../_helpers/peer.ts";
import { TORCH_FIX, TORCH_SAVED } from "../../_helpers/torch.ts";

Deno.test("torchArchivePrefix() follows torch: basename without its last extension", () => {
  assert.equal(torchArchivePrefix("/x/sd.pt"), "sd");
  assert.equal(torchArchivePrefix("model"), "model");
  assert.equal(torchArchivePrefix("a.b.c.pt"), "a.b.c");
  assert.equal(torchArchivePrefix("/x/ünï.pt"), "archive");
  assert.equal(torchArchivePrefix(".hidden"), "archive");
});

Deno.test("saveTorch() writes records in torch 2.6 order with keys sorted as strings", async () => {
  await withTempDir(async (dir) => {
    const tensors = Array.from(
      { length: 12 },
      (_, i) => tensorOfBytes("U8", [1], new Uint8Array([i])),
    );
    const path = join(dir, "opt.pt");
    await saveTorch(path, tensors);
    await using f = await loadTorch(path);
    assert.equal(f.prefix, "opt");
    assert.deepEqual(f.records, [
      "data.pkl",
      "byteorder",
      ...["0", "1", "10", "11", "2", "3", "4", "5", "6", "7", "8", "9"].map((k) => `data/${k}`),
      "version",
      ".data/serialization_id",
    ]);
    const back = f.value as TorchTensor[];
    assert.deepEqual(await Promise.all(back.map(async (t) => (await t.read())[0])), [
      ...Array(12).keys(),
    ]);
  });
});

Deno.test("saveTorch() output is deterministic for the same value and file name", async () => {
  await withTempDir(async (dir) => {
    const value = () =>
      pyDict([["w", tensorOfBytes("BF16", [2, 2], new Uint8Array(8).fill(3))], ["lr", 1e-3], [
        "n",
        7,
      ]]);
    await Deno.mkdir(join(dir, "a"));
    await Deno.mkdir(join(dir, "b"));
    await saveTorch(join(dir, "a", "x.pt"), value());
    await saveTorch(join(dir, "b", "x.pt"), value());
    assert.deepEqual(
      await Deno.readFile(join(dir, "a", "x.pt")),
      await Deno.readFile(join(dir, "b", "x.pt")),
    );
  });
});

Deno.test("saveTorchStateDict() streams in blocks, reports progress, and writes one storage per ref", async () => {
  await withTempDir(async (dir) => {
    const reads: [number, number][] = [];
    const rows = 100;
    const ref: TensorRef = {
      dtype: "F32",
      shape: [rows, 8],
      read(s = 0, e = rows) {
        reads.push([s, e]);
        const out = new Float32Array((e - s) * 8);
        for (let r = s; r < e; r++) out.fill(r, (r - s) * 8, (r - s + 1) * 8);
        return Promise.resolve(new Uint8Array(out.buffer));
      },
    };
    const progress: [number, number][] = [];
    const sd = new StateDict([["a", ref], ["b", ref]]);
    const path = join(dir, "sd.bin");
    await saveTorchStateDict(path, sd, {
      blockSize: 320,
      onProgress: (d, t) => progress.push([d, t]),
    });
    assert.ok(reads.every(([s, e]) => e - s <= 10), "blocks of at most 10 rows (320 bytes)");
    assert.deepEqual(progress.at(-1), [6400, 6400]);
    await using back = await openTorchStateDict(path);
    const b = back.require("b") as TorchTensor;
    assert.notEqual((back.require("a") as TorchTensor).storage, b.storage);
    assert.deepEqual(
      [...new Float32Array((await b.read(42, 43)).slice().buffer)],
      new Array(8).fill(42),
    );
  });
});

Deno.test("saveTorchStateDict() keeps tied weights loaded from a torch file as one storage", async () => {
  await withTempDir(async (dir) => {
    const w = tensorOfBytes("F32", [2], new Uint8Array(8).fill(1));
    await saveTorch(join(dir, "tied.pt"), pyDict([["a", w], ["b", w]], "OrderedDict"));
    await using sd = await openTorchStateDict(join(dir, "tied.pt"));
    const out = await saveTorchStateDict(join(dir, "again.pt"), sd);
    assert.equal(out.storages, 1);
  });
});

Deno.test("saveTorch() aborted mid-write leaves neither the file nor a temp file", async () => {
  await withTempDir(async (dir) => {
    const ctl = new AbortController();
    const ref: TensorRef = {
      dtype: "U8",
      shape: [64, 1024],
      read(s = 0, e = 64) {
        if (s >= 8) ctl.abort(new Error("stop"));
        return Promise.resolve(new Uint8Array((e - s) * 1024));
      },
    };
    await assert.rejects(
      saveTorchStateDict(join(dir, "x.bin"), new StateDict([["w", ref]]), {
        signal: ctl.signal,
        blockSize: 4096,
      }),
      /stop/,
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});

Deno.test("saveTorch() refuses a source that returns the wrong number of bytes", async () => {
  await withTempDir(async (dir) => {
    const bad: TensorRef = {
      dtype: "F32",
      shape: [4],
      read: () => Promise.resolve(new Uint8Array(3)),
    };
    await assert.rejects(
      saveTorchStateDict(join(dir, "x.bin"), new StateDict([["w", bad]])),
      (e) => isCkptError(e),
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});

Deno.test("saveTorch() writes records as REDUCE calls that load back as records", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "r.pt");
    await saveTorch(path, pyDict([["dev", new PyRecord("torch.device", ["cuda", 1])]]));
    await using f = await loadTorch(path);
    const dev = f.dict().get("dev") as PyRecord;
    assert.deepEqual([dev.className, dev.args], ["torch.device", ["cuda", 1]]);
  });
});

Deno.test("writeTorchSharded() writes one pytorch_model.bin when it fits, shards and index otherwise", async () => {
  await withTempDir(async (dir) => {
    const sd = new StateDict([
      ["a", tensorFromBytes("U8", [6], new Uint8Array(6).fill(1))],
      ["b", tensorFromBytes("U8", [6], new Uint8Array(6).fill(2))],
      ["huge", tensorFromBytes("U8", [20], new Uint8Array(20).fill(3))],
      ["c", tensorFromBytes("U8", [3], new Uint8Array(3).fill(4))],
    ]);
    const one = await writeTorchSharded(join(dir), sd, { maxShardSize: 1000 });
    assert.deepEqual(one, { files: ["pytorch_model.bin"] });
    await Deno.mkdir(join(dir, "s"));
    const many = await writeTorchSharded(join(dir, "s"), sd, { maxShardSize: 10 });
    assert.deepEqual(many.files, [
      "pytorch_model-00001-of-00003.bin",
      "pytorch_model-00002-of-00003.bin",
      "pytorch_model-00003-of-00003.bin",
    ]);
    const index = JSON.parse(
      await Deno.readTextFile(join(dir, "s", "pytorch_model.bin.index.json")),
    );
    assert.deepEqual(index, {
      metadata: { total_size: 35 },
      weight_map: {
        a: "pytorch_model-00001-of-00003.bin",
        b: "pytorch_model-00003-of-00003.bin",
        c: "pytorch_model-00003-of-00003.bin",
        huge: "pytorch_model-00002-of-00003.bin",
      },
    });
  });
});

Deno.test("saveTorchStateDict() re-writes a loaded torch file byte for byte through reused buffers", async () => {
  await withTempDir(async (dir) => {
    const sd = new StateDict();
    for (let k = 0; k < 3; k++) {
      const bytes = new Uint8Array(64 * 40).map((_, i) => (i * 7 + k * 13) & 255);
      sd.set(`w${k}`, tensorFromBytes("U8", [64, 40], bytes));
    }
    await Deno.mkdir(join(dir, "a"));
    await Deno.mkdir(join(dir, "b"));
    await saveTorchStateDict(join(dir, "a", "m.bin"), sd);
    await using loaded = await openTorchStateDict(join(dir, "a", "m.bin"));
    await saveTorchStateDict(join(dir, "b", "m.bin"), loaded, { blockSize: 400 });
    assert.deepEqual(
      await Deno.readFile(join(dir, "b", "m.bin")),
      await Deno.readFile(join(dir, "a", "m.bin")),
    );
  });
});

for (const name of [...TORCH_SAVED, "sharded/pytorch_model-00001-of-00003.bin"]) {
  Deno.test(`saveTorch() re-writes torch-written ${name} byte for byte (pickle memo, layout, serialization id)`, async () => {
    const src = join(TORCH_FIX, name);
    await withTempDir(async (dir) => {
      await using f = await loadTorch(src);
      const out = join(dir, basename(name));
      await saveTorch(out, f.value);
      assert.deepEqual(await Deno.readFile(out), await Deno.readFile(src));
    });
  });
}

Deno.test("writeTorchSharded() keeps tied weights in their first tensor's shard and counts them once", async () => {
  await withTempDir(async (dir) => {
    await using sd = await openTorchStateDict(
      join(REPO_ROOT, "tests", "fixtures", "torch", "tied.pt"),
    );
    const { files, index } = await writeTorchSharded(dir, sd, { maxShardSize: 24 });
    assert.equal(files.length, 2);
    assert.deepEqual(index, {
      metadata: { total_size: 30 },
      weight_map: {
        "0.bias": files[1],
        "0.weight": files[0],
        "1.bias": files[1],
        "1.weight": files[0],
      },
    });
    await using first = await openTorchStateDict(join(dir, files[0]!));
    assert.deepEqual([...first.keys()], ["0.weight", "1.weight"]);
    assert.equal(
      (first.require("0.weight") as TorchTensor).storage,
      (first.require("1.weight") as TorchTensor).storage,
    );
  });
});

Deno.test("saveTorchStateDict() and writeTorchSharded() pass every byte to onBytes in file order", async () => {
  await withTempDir(async (dir) => {
    const rows = 100;
    const ref: TensorRef = {
      dtype: "F32",
      shape: [rows, 8],
      read(s = 0, e = rows) {
        const out = new Float32Array((e - s) * 8);
        for (let r = s; r < e; r++) out.fill(r, (r - s) * 8, (r - s + 1) * 8);
        return Promise.resolve(new Uint8Array(out.buffer));
      },
    };
    const sd = new StateDict([
      ["a", ref],
      ["b", ref],
      // over the zip writer's 1 MiB buffer: several flushes of it, or one direct write
      [
        "c",
        tensorFromBytes("U8", [1536, 1024], new Uint8Array(1536 * 1024).map((_, i) => i % 251)),
      ],
    ]);
    const seen = new Map<string, Uint8Array[]>();
    const onBytes = (path: string, bytes: Uint8Array): Promise<void> => {
      const list = seen.get(path) ?? [];
      list.push(bytes.slice()); // the writer reuses its buffers
      seen.set(path, list);
      return Promise.resolve();
    };
    const single = join(dir, "sd.bin");
    await saveTorchStateDict(single, sd, { blockSize: 320, onBytes });
    await Deno.mkdir(join(dir, "s"));
    const { files } = await writeTorchSharded(join(dir, "s"), sd, { maxShardSize: 3200, onBytes });
    assert.equal(files.length, 3);
    const paths = [single, ...files.map((f) => join(dir, "s", f))];
    assert.deepEqual([...seen.keys()].sort(), [...paths].sort());
    assert.ok(seen.get(single)!.length >= 2, "the buffer was flushed more than once");
    for (const path of paths) {
      const chunks = seen.get(path)!;
      const got = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let at = 0;
      for (const c of chunks) {
        got.set(c, at);
        at += c.length;
      }
      assert.equal(
        createHash("sha256").update(got).digest("hex"),
        createHash("sha256").update(await Deno.readFile(path)).digest("hex"),
        path,
      );
    }
  });
});
