/** safetensors shard folders: reading them against their index, writing them as save_pretrained does. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { type ErrorCode, isCkptError } from "../../errors.ts";
import {
  openHfShards,
  planSafetensorsShards,
  STREAM_BLOCK_BYTES,
  writeSafetensors,
  writeSafetensorsSharded,
} from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { hex } from "../_helpers/hex.ts";

const FIXTURES = new URL("../fixtures/safetensors/", import.meta.url).pathname;

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
