/** The zip layer: byte-for-byte torch 2.6 layout, directory parsing, padding rule. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { RandomAccessFile } from "../../../formats/_io.ts";
import { ZipReader } from "../../../formats/torch/zip.ts";
import { crc32, torchPadding, TorchZipWriter } from "../../../formats/torch/zip_writer.ts";
import { REPO_ROOT } from "../../_helpers/peer.ts";
import { withTempDir } from "../../_helpers/tmp.ts";

const FIX = join(REPO_ROOT, "tests", "fixtures", "torch");

for (
  const name of [
    "dtypes.pt",
    "optimizer.pt",
    "scheduler.pt",
    "views.pt",
    "sharded/pytorch_model-00002-of-00003.bin",
  ]
) {
  Deno.test(`TorchZipWriter re-creates torch-written ${name} byte for byte from its records`, async () => {
    const original = await Deno.readFile(join(FIX, name));
    const file = await RandomAccessFile.open(join(FIX, name));
    try {
      const zip = await ZipReader.open(file);
      const prefix = zip.entries[0]!.name.split("/")[0]!;
      await withTempDir(async (dir) => {
        const out = join(dir, "x.pt");
        const w = await TorchZipWriter.create(out, prefix);
        for (const e of zip.entries) {
          const bytes = await zip.read(e);
          assert.equal(crc32(bytes), e.crc32, `${e.name}: CRC`);
          assert.equal((zip.base + e.dataOffset) % 64, 0, `${e.name}: 64-byte aligned`);
          await w.add(e.name.slice(prefix.length + 1), bytes);
        }
        await w.finish();
        assert.deepEqual(await Deno.readFile(out), original);
      });
    } finally {
      await file.close();
    }
  });
}

Deno.test("torchPadding() follows torch's getPadding, zip64 thresholds included", () => {
  // start = cursor + 30 + name + 4 (+ 4 + 16 for size >= 0xFFFFFFFF, + 8 for cursor >= 0xFFFFFFFF)
  assert.equal(torchPadding(0, 18, 10), (64 - ((0 + 30 + 18 + 4) % 64)) % 64);
  assert.equal(torchPadding(0, 26, 10), 4);
  assert.equal(torchPadding(0, 30, 0xfffffffe), (64 - (64 % 64)) % 64);
  assert.equal(torchPadding(0, 30, 0xffffffff), (64 - ((64 + 20) % 64)) % 64);
  assert.equal(torchPadding(0xffffffff, 30, 1), (64 - ((0xffffffff + 64 + 12) % 64)) % 64);
  assert.equal(torchPadding(0xffffffff, 30, 0xffffffff), (64 - ((0xffffffff + 64 + 28) % 64)) % 64);
});

Deno.test("ZipReader takes data offsets from local headers and reads byte ranges", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "a.pt");
    const w = await TorchZipWriter.create(out, "my-model.v2");
    await w.add("data.pkl", new Uint8Array([1, 2, 3]));
    await w.add("empty", new Uint8Array(0));
    await w.add(
      "data/0",
      (async function* () {
        yield new Uint8Array(100).fill(7);
        yield new Uint8Array(28).fill(8);
      })(),
      128,
    );
    await w.finish();
    const file = await RandomAccessFile.open(out);
    try {
      const zip = await ZipReader.open(file);
      assert.deepEqual(zip.entries.map((e) => e.name), [
        "my-model.v2/data.pkl",
        "my-model.v2/empty",
        "my-model.v2/data/0",
      ]);
      const d = zip.get("my-model.v2/data/0")!;
      assert.equal(d.dataOffset % 64, 0);
      assert.deepEqual([...await zip.read(d, 98, 102)], [7, 7, 8, 8]);
      assert.equal(zip.get("my-model.v2/empty")!.flags, 0x0800);
      assert.equal(d.flags, 0x0808);
    } finally {
      await file.close();
    }
  });
});

Deno.test("TorchZipWriter.add() rejects chunks that do not add up to the declared size", async () => {
  await withTempDir(async (dir) => {
    const w = await TorchZipWriter.create(join(dir, "b.pt"), "b");
    await assert.rejects(
      w.add(
        "data/0",
        (async function* () {
          yield new Uint8Array(3);
        })(),
        4,
      ),
      (e) => (e as { code?: string }).code === "TORCH_WRITE",
    );
    w.abort();
  });
});
