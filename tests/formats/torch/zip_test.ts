/** The zip layer: byte-for-byte torch 2.6 layout, directory parsing, padding rule. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
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
      // The range stays inside the entry: all of it and an empty range at its end are fine; one
      // byte before it, one past its end, or an end before the start is refused.
      assert.equal((await zip.read(d, 0, 128)).length, 128);
      assert.equal((await zip.read(d, 128, 128)).length, 0);
      for (const [start, end] of [[-1, 2], [0, 129], [5, 4]] as const) {
        assert.throws(
          () => zip.read(d, start, end),
          (e) => isCkptError(e, "ZIP_BAD_OFFSET") && e.message.includes(`[${start}, ${end})`),
          `[${start}, ${end})`,
        );
      }
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

Deno.test("TorchZipWriter.add() rejects with the error of a chunk source that fails while the chunk before is written, never an unhandled rejection", async () => {
  await withTempDir(async (dir) => {
    const w = await TorchZipWriter.create(join(dir, "c.pt"), "c");
    const failure = new Error("the source failed (an abort, a read error)");
    const chunks: AsyncIterable<Uint8Array> = {
      [Symbol.asyncIterator]: () => {
        let calls = 0;
        return {
          // the first chunk is large enough to be written out at once (an awaited write); the
          // second, asked for meanwhile, fails at once
          next: () =>
            ++calls === 1
              ? Promise.resolve({ done: false, value: new Uint8Array(1 << 20) })
              : Promise.reject(failure),
        };
      },
    };
    await assert.rejects(w.add("data/0", chunks, 2 << 20), (e) => e === failure);
    await w.abort();
  });
});

Deno.test("ZipReader.open() reads the smallest zip, a bare 22-byte end record, and refuses 21 bytes", async () => {
  await withTempDir(async (dir) => {
    const eocd = new Uint8Array(22);
    eocd.set([0x50, 0x4b, 0x05, 0x06]);
    const outcomes: string[] = [];
    for (const bytes of [eocd, eocd.subarray(0, 21)]) {
      const path = join(dir, `z${bytes.length}.zip`);
      await Deno.writeFile(path, bytes);
      const file = await RandomAccessFile.open(path);
      try {
        const zip = await ZipReader.open(file).catch((e: unknown) => e);
        outcomes.push(
          zip instanceof ZipReader
            ? `${bytes.length}: ${zip.entries.length} entries`
            : `${bytes.length}: ${isCkptError(zip) ? zip.code : zip}`,
        );
      } finally {
        await file.close();
      }
    }
    assert.deepEqual(outcomes, ["22: 0 entries", "21: ZIP_EOCD"]);
  });
});

Deno.test("ZipReader reads a zip64 archive Python's zipfile wrote, taking the directory from the zip64 end record", async () => {
  // Sizes and offsets in zip64 extra fields, the 32-bit end record all 0xFFFF / 0xFFFFFFFF
  // (tests/fixtures/torch/zip64/generate.py); names and bytes as the generator wrote them.
  const file = await RandomAccessFile.open(join(FIX, "zip64", "python_zip64.zip"));
  try {
    const zip = await ZipReader.open(file);
    const got = await Promise.all(
      zip.entries.map(async (e) => [e.name, [...await zip.read(e)]] as const),
    );
    assert.deepEqual(got, [
      ["archive/data.pkl", Array.from({ length: 40 }, (_, i) => i)],
      ["archive/data/0", new Array(100).fill(7)],
      ["archive/données/é", [...new TextEncoder().encode("utf8")]],
    ]);
  } finally {
    await file.close();
  }
});

/** A one-entry stored zip whose directory entry carries `extra` and `comment` bytes. */
/** Fields of {@linkcode oneEntryZip}'s archive to set apart from what its bytes say. */
interface ZipPatch {
  elen?: number;
  clen?: number;
  usize?: number;
  /** The entry's name bytes (the same in the local header and the directory). */
  name?: Uint8Array;
  /** General-purpose flags of the directory entry. */
  flags?: number;
  /** Compression method of the directory entry. */
  method?: number;
  /** The directory entry's signature. */
  signature?: number;
  /** Entries the end record claims. */
  count?: number;
}

function oneEntryZip(
  extra: Uint8Array,
  comment: Uint8Array,
  patch: ZipPatch,
) {
  const name = patch.name ?? new TextEncoder().encode("a/data.pkl");
  const data = new Uint8Array([1, 2, 3]);
  const lfh = new Uint8Array(30 + name.length);
  const l = new DataView(lfh.buffer);
  l.setUint32(0, 0x04034b50, true);
  l.setUint32(18, data.length, true);
  l.setUint32(22, data.length, true);
  l.setUint16(26, name.length, true);
  lfh.set(name, 30);
  const cd = new Uint8Array(46 + name.length + extra.length + comment.length);
  const c = new DataView(cd.buffer);
  c.setUint32(0, patch.signature ?? 0x02014b50, true);
  c.setUint16(8, patch.flags ?? 0, true);
  c.setUint16(10, patch.method ?? 0, true);
  c.setUint32(20, data.length, true);
  c.setUint32(24, patch.usize ?? data.length, true);
  c.setUint16(28, name.length, true);
  c.setUint16(30, patch.elen ?? extra.length, true);
  c.setUint16(32, patch.clen ?? comment.length, true);
  cd.set(name, 46);
  cd.set(extra, 46 + name.length);
  cd.set(comment, 46 + name.length + extra.length);
  const eocd = new Uint8Array(22);
  const e = new DataView(eocd.buffer);
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, patch.count ?? 1, true);
  e.setUint16(10, patch.count ?? 1, true);
  e.setUint32(12, cd.length, true);
  e.setUint32(16, lfh.length + data.length, true);
  const out = new Uint8Array(lfh.length + data.length + cd.length + eocd.length);
  out.set(lfh, 0);
  out.set(data, lfh.length);
  out.set(cd, lfh.length + data.length);
  out.set(eocd, out.length - 22);
  return out;
}

Deno.test("ZipReader.open() refuses a directory entry whose extra field or comment runs one byte past the directory", async () => {
  const extra = new Uint8Array([0xfe, 0xca, 2, 0, 9, 9]); // an unknown extra field, 2 data bytes
  const comment = new TextEncoder().encode("hi");
  await withTempDir(async (dir) => {
    const outcome = async (patch: ZipPatch) => {
      const path = join(dir, "one.zip");
      await Deno.writeFile(path, oneEntryZip(extra, comment, patch));
      const file = await RandomAccessFile.open(path);
      try {
        const zip = await ZipReader.open(file);
        return `ok ${[...await zip.read(zip.entries[0]!)]}`;
      } catch (e) {
        return isCkptError(e) ? `${e.code}: ${e.message.replace(/^.*: /, "")}` : String(e);
      } finally {
        await file.close();
      }
    };
    assert.equal(await outcome({}), "ok 1,2,3"); // both end exactly at the directory's end
    assert.equal(
      await outcome({ elen: extra.length + 1 }),
      "ZIP_MALFORMED: central directory entry 0 runs past the directory",
    );
    assert.equal(
      await outcome({ clen: comment.length + 1 }),
      "ZIP_MALFORMED: central directory entry 0 runs past the directory",
    );
  });
});

Deno.test("ZipReader.open() reads a zip64 size field of 8 bytes and refuses 7, and an extra field longer than its bytes", async () => {
  const zip64 = (n: number) => {
    const f = new Uint8Array(4 + n);
    const v = new DataView(f.buffer);
    v.setUint16(0, 1, true); // the zip64 extended information field
    v.setUint16(2, n, true);
    if (n >= 8) v.setBigUint64(4, 3n, true); // the real size: 3 bytes
    return f;
  };
  await withTempDir(async (dir) => {
    const outcome = async (extra: Uint8Array, usize?: number) => {
      const path = join(dir, "z.zip");
      await Deno.writeFile(path, oneEntryZip(extra, new Uint8Array(0), usize ? { usize } : {}));
      const file = await RandomAccessFile.open(path);
      try {
        const zip = await ZipReader.open(file);
        return `ok size ${zip.entries[0]!.size}`;
      } catch (e) {
        return isCkptError(e) ? `${e.code}: ${e.message.replace(/^.*: /, "")}` : String(e);
      } finally {
        await file.close();
      }
    };
    assert.equal(await outcome(zip64(8), 0xffffffff), "ok size 3");
    assert.equal(
      await outcome(zip64(7), 0xffffffff),
      'ZIP_MALFORMED: entry "a/data.pkl" has a short zip64 field',
    );
    // An extra field whose length claims one byte more than the entry's extra area holds.
    const long = new Uint8Array([0xfe, 0xca, 3, 0, 9, 9]);
    assert.equal(
      await outcome(long),
      'ZIP_MALFORMED: entry "a/data.pkl" has a truncated extra field',
    );
  });
});

Deno.test("ZipReader.open() finds the zip64 end records behind the longest comment, 65535 bytes", async () => {
  // Python's zip64 archive (its 32-bit end record holds only 0xFFFF / 0xFFFFFFFF): the reader
  // must find the end record and the zip64 locator 20 bytes before it, however long the comment.
  const plain = await Deno.readFile(join(FIX, "zip64", "python_zip64.zip"));
  assert.equal(new DataView(plain.buffer).getUint32(plain.length - 42, true), 0x07064b50);
  await withTempDir(async (dir) => {
    const path = join(dir, "c.zip");
    const outcome = async (comment: number) => {
      const bytes = new Uint8Array(plain.length + comment).fill(0x20);
      bytes.set(plain);
      new DataView(bytes.buffer).setUint16(plain.length - 2, comment, true);
      await Deno.writeFile(path, bytes);
      const file = await RandomAccessFile.open(path);
      try {
        const zip = await ZipReader.open(file);
        return `${zip.entries.length} entries, ${[...await zip.read(zip.entries[2]!)]}`;
      } finally {
        await file.close();
      }
    };
    assert.equal(await outcome(0), "3 entries, 117,116,102,56");
    assert.equal(await outcome(0xffff), "3 entries, 117,116,102,56");
  });
});

/** Opens `bytes`, written to a file, as a zip: its entries' names, or what it threw. */
async function tryOpen(
  dir: string,
  bytes: Uint8Array,
): Promise<{ names: string[] } | { error: unknown }> {
  const path = join(dir, "t.zip");
  await Deno.writeFile(path, bytes);
  const file = await RandomAccessFile.open(path);
  try {
    return { names: (await ZipReader.open(file)).entries.map((e) => e.name) };
  } catch (error) {
    return { error };
  } finally {
    await file.close();
  }
}

/** An error's message without the "Cannot read ... archive: " opening. */
const tail = (message: string) => message.replace(/^.*?archive: /, "");

/** What ZipReader.open() makes of `bytes`: its entries' names, or the error's code and message. */
async function openOutcome(dir: string, bytes: Uint8Array): Promise<string> {
  const r = await tryOpen(dir, bytes);
  if ("names" in r) return `ok ${r.names}`;
  return isCkptError(r.error) ? `${r.error.code}: ${tail(r.error.message)}` : String(r.error);
}

/**
 * `one` (a one-entry zip with a 56-byte directory) with `entry` appended to its directory and the
 * end record counting two entries in 56 + `entry.length` bytes.
 */
function withSecondEntry(one: Uint8Array, entry: Uint8Array): Uint8Array {
  const end = one.length - 22;
  const bytes = new Uint8Array(one.length + entry.length);
  bytes.set(one.subarray(0, end), 0);
  bytes.set(entry, end);
  bytes.set(one.subarray(end), end + entry.length);
  const e = new DataView(bytes.buffer, bytes.length - 22);
  e.setUint16(8, 2, true);
  e.setUint16(10, 2, true);
  e.setUint32(12, 56 + entry.length, true);
  return bytes;
}

Deno.test("ZipReader.open() refuses a directory claiming one entry more than its bytes can hold (46 bytes each)", async () => {
  await withTempDir(async (dir) => {
    // One entry of 46 + 10 name + 35 comment = 91 bytes: room for one; two would need 92.
    const comment = new Uint8Array(35).fill(0x20);
    const empty = new Uint8Array(0);
    assert.equal(await openOutcome(dir, oneEntryZip(empty, comment, {})), "ok a/data.pkl");
    assert.equal(
      await openOutcome(dir, oneEntryZip(empty, comment, { count: 2 })),
      "ZIP_LIMIT: 2 entries do not fit a 91-byte central directory (or exceed 1000000)",
    );
  });
});

Deno.test("ZipReader.open() refuses a directory entry without its signature", async () => {
  await withTempDir(async (dir) => {
    const bytes = oneEntryZip(new Uint8Array(0), new Uint8Array(0), { signature: 0x02014b51 });
    assert.equal(
      await openOutcome(dir, bytes),
      "ZIP_MALFORMED: central directory entry 0 is malformed",
    );
  });
});

Deno.test("ZipReader.open() decodes names as UTF-8 only with flag 0x800, as Latin-1 without", async () => {
  await withTempDir(async (dir) => {
    const latin1 = new Uint8Array([0x61, 0x2f, 0xe9]); // "a/é" in Latin-1; not valid UTF-8
    const utf8 = new TextEncoder().encode("a/é");
    const none = new Uint8Array(0);
    assert.equal(await openOutcome(dir, oneEntryZip(none, none, { name: latin1 })), "ok a/é");
    assert.equal(
      await openOutcome(dir, oneEntryZip(none, none, { name: utf8, flags: 0x800 })),
      "ok a/é",
    );
    assert.equal(
      await openOutcome(dir, oneEntryZip(none, none, { name: latin1, flags: 0x800 })),
      "ZIP_NAME: entry 0 has a name that is not UTF-8",
    );
    // Flag bit 0 (encrypted) without 0x800: the Latin-1 name is read, then the entry refused.
    assert.equal(
      await openOutcome(dir, oneEntryZip(none, none, { name: latin1, flags: 1 })),
      'ZIP_MALFORMED: entry "a/é" is encrypted',
    );
  });
});

Deno.test("ZipReader.open() refuses a zip64 end record without its signature", async () => {
  const bytes = await Deno.readFile(join(FIX, "zip64", "python_zip64.zip"));
  const v = new DataView(bytes.buffer);
  const at = Number(v.getBigUint64(bytes.length - 22 - 20 + 8, true)); // the locator's pointer
  assert.equal(v.getUint32(at, true), 0x06064b50);
  v.setUint32(at, 0x06064b51, true);
  await withTempDir(async (dir) => {
    assert.equal(await openOutcome(dir, bytes), "ZIP_MALFORMED: bad zip64 end record signature");
  });
});

Deno.test("ZipReader.open() takes a slice of the file that ends at its end, and refuses one byte more", async () => {
  await withTempDir(async (dir) => {
    const inner = oneEntryZip(new Uint8Array(0), new Uint8Array(0), {});
    const path = join(dir, "slice.bin");
    await Deno.writeFile(path, new Uint8Array([0xaa, 0xbb, ...inner]));
    const file = await RandomAccessFile.open(path);
    try {
      const zip = await ZipReader.open(file, { base: 2, length: inner.length });
      assert.deepEqual([...await zip.read(zip.entries[0]!)], [1, 2, 3]);
      await assert.rejects(
        () => ZipReader.open(file, { base: 2, length: inner.length + 1 }),
        (e) => isCkptError(e, "ZIP_BAD_OFFSET") && e.message.includes("outside the"),
      );
    } finally {
      await file.close();
    }
  });
});

Deno.test("ZipReader.open() says 21 bytes are too short for a zip, and takes an empty slice as too short, not outside", async () => {
  await withTempDir(async (dir) => {
    const eocd = new Uint8Array(22);
    eocd.set([0x50, 0x4b, 0x05, 0x06]);
    assert.equal(
      await openOutcome(dir, eocd.subarray(0, 21)),
      "ZIP_EOCD: 21 bytes is too short for a zip",
    );
    const path = join(dir, "z.zip");
    await Deno.writeFile(path, eocd);
    const file = await RandomAccessFile.open(path);
    try {
      const code = (options: { base?: number; length?: number }) =>
        ZipReader.open(file, options).then(
          (z) => `${z.entries.length} entries`,
          (e: unknown) => isCkptError(e) ? e.code : String(e),
        );
      assert.deepEqual(
        [
          await code({ base: 0, length: 0 }),
          await code({ base: 22, length: 0 }),
          await code({ base: -1, length: 22 }),
          await code({ base: 0, length: -1 }),
          await code({ base: 0, length: 22 }),
        ],
        ["ZIP_EOCD", "ZIP_EOCD", "ZIP_BAD_OFFSET", "ZIP_BAD_OFFSET", "0 entries"],
      );
    } finally {
      await file.close();
    }
  });
});

Deno.test("ZipReader.open() refuses a directory whose second entry is one byte short of its 46 fixed bytes", async () => {
  await withTempDir(async (dir) => {
    // the one-entry zip, its directory followed by 45 bytes of a second entry, the end record
    // claiming two entries in 56 + 45 = 101 bytes (room for two 46-byte entries by count)
    const one = oneEntryZip(new Uint8Array(0), new Uint8Array(0), {});
    const cdAt = one.length - 22 - 56;
    const second = new Uint8Array(45);
    new DataView(second.buffer).setUint32(0, 0x02014b50, true);
    const bytes = withSecondEntry(one, second);
    assert.equal(new DataView(bytes.buffer, bytes.length - 22).getUint32(16, true), cdAt);
    assert.equal(
      await openOutcome(dir, bytes),
      "ZIP_MALFORMED: central directory entry 1 is malformed",
    );
  });
});

Deno.test("ZipReader.open() refuses a stored entry whose compressed and uncompressed sizes differ", async () => {
  await withTempDir(async (dir) => {
    const none = new Uint8Array(0);
    assert.equal(
      await openOutcome(dir, oneEntryZip(none, none, { usize: 4 })),
      'ZIP_MALFORMED: stored entry "a/data.pkl" has csize 3 != size 4',
    );
  });
});

/** The error of opening `bytes` as a zip: code, message tail and offset. */
async function openError(dir: string, bytes: Uint8Array) {
  const r = await tryOpen(dir, bytes);
  if ("names" in r) return undefined;
  return isCkptError(r.error)
    ? { code: r.error.code, message: tail(r.error.message), offset: r.error.offset }
    : { code: String(r.error), message: "", offset: undefined };
}

Deno.test("ZipReader.open() names where a directory entry runs past the directory: the entry's offset in the file", async () => {
  await withTempDir(async (dir) => {
    const none = new Uint8Array(0);
    const bytes = oneEntryZip(none, new Uint8Array([0x20]), { clen: 2 });
    const cdAt = bytes.length - 22 - (46 + 10 + 1);
    assert.deepEqual(await openError(dir, bytes), {
      code: "ZIP_MALFORMED",
      message: "central directory entry 0 runs past the directory",
      offset: cdAt,
    });
    // a second entry of 46 bytes whose 1-byte name is missing: named at its own offset
    const one = oneEntryZip(none, none, {});
    const second = new Uint8Array(46);
    const sv = new DataView(second.buffer);
    sv.setUint32(0, 0x02014b50, true);
    sv.setUint16(28, 1, true);
    const two = withSecondEntry(one, second);
    assert.deepEqual(await openError(dir, two), {
      code: "ZIP_MALFORMED",
      message: "central directory entry 1 runs past the directory",
      offset: one.length - 22,
    });
  });
});

Deno.test("ZipReader.open() reads a zip64 size after another extra field, and refuses a local header closer than 30 bytes to the directory", async () => {
  await withTempDir(async (dir) => {
    // an unknown 2-byte field, then the zip64 field carrying the size the directory says is 0xFFFFFFFF
    const extra = new Uint8Array([0xfe, 0xca, 2, 0, 9, 9, 1, 0, 8, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
    const none = new Uint8Array(0);
    assert.equal(
      await openOutcome(dir, oneEntryZip(extra, none, { usize: 0xffffffff })),
      "ok a/data.pkl",
    );
    // the local header at 14 of a 43-byte data area: 14 + 30 > 43
    const bytes = oneEntryZip(none, none, {});
    const cdAt = bytes.length - 22 - 56;
    assert.equal(cdAt, 43);
    new DataView(bytes.buffer).setUint32(cdAt + 42, 13, true);
    // 13 + 30 = 43: inside the data area (refused later, for what is there: no local header)
    assert.doesNotMatch(await openOutcome(dir, bytes), /outside the data area/);
    new DataView(bytes.buffer).setUint32(cdAt + 42, 14, true);
    assert.equal(
      await openOutcome(dir, bytes),
      'ZIP_BAD_OFFSET: entry "a/data.pkl" has its local header at 14, outside the data area',
    );
  });
});

Deno.test("ZipReader.open() names the zip64 locator's place when the end record it points to is outside the archive", async () => {
  const bytes = await Deno.readFile(join(FIX, "zip64", "python_zip64.zip"));
  const v = new DataView(bytes.buffer);
  const locator = bytes.length - 22 - 20;
  v.setBigUint64(locator + 8, BigInt(bytes.length), true);
  await withTempDir(async (dir) => {
    const e = await openError(dir, bytes);
    assert.equal(e?.code, "ZIP_BAD_OFFSET");
    assert.equal(e?.offset, locator);
  });
});

Deno.test("ZipReader.open() refuses an empty entry name and takes a one-character one", async () => {
  await withTempDir(async (dir) => {
    const none = new Uint8Array(0);
    assert.equal(
      await openOutcome(dir, oneEntryZip(none, none, { name: new Uint8Array(0) })),
      'ZIP_NAME: entry name "" is not a safe relative path',
    );
    const a = new TextEncoder().encode("a");
    assert.equal(await openOutcome(dir, oneEntryZip(none, none, { name: a })), "ok a");
  });
});

Deno.test("ZipReader reads an entry's compression method little-endian and refuses to read a deflated one", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "deflated.zip");
    const none = new Uint8Array(0);
    await Deno.writeFile(path, oneEntryZip(none, none, { method: 8 }));
    const file = await RandomAccessFile.open(path);
    try {
      const zip = await ZipReader.open(file);
      assert.equal(zip.entries[0]!.method, 8);
      assert.throws(
        () => zip.read(zip.entries[0]!),
        (e) => isCkptError(e) && e.code === "ZIP_COMPRESSED" && e.message.includes("(method 8)"),
      );
    } finally {
      await file.close();
    }
  });
});

/** A stored zip of `n` one-byte entries named `e0`, `e1`, ... */
function manyEntryZip(n: number): Uint8Array {
  const enc = new TextEncoder();
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let at = 0;
  for (let i = 0; i < n; i++) {
    const name = enc.encode(`e${i}`);
    const lfh = new Uint8Array(30 + name.length + 1);
    const l = new DataView(lfh.buffer);
    l.setUint32(0, 0x04034b50, true);
    l.setUint32(18, 1, true);
    l.setUint32(22, 1, true);
    l.setUint16(26, name.length, true);
    lfh.set(name, 30);
    lfh[30 + name.length] = i & 0xff;
    const cd = new Uint8Array(46 + name.length);
    const c = new DataView(cd.buffer);
    c.setUint32(0, 0x02014b50, true);
    c.setUint32(20, 1, true);
    c.setUint32(24, 1, true);
    c.setUint16(28, name.length, true);
    c.setUint32(42, at, true);
    cd.set(name, 46);
    locals.push(lfh);
    centrals.push(cd);
    at += lfh.length;
  }
  const cdSize = centrals.reduce((s, c) => s + c.length, 0);
  const eocd = new Uint8Array(22);
  const e = new DataView(eocd.buffer);
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, n, true);
  e.setUint16(10, n, true);
  e.setUint32(12, cdSize, true);
  e.setUint32(16, at, true);
  const out = new Uint8Array(at + cdSize + 22);
  let p = 0;
  for (const part of [...locals, ...centrals, eocd]) {
    out.set(part, p);
    p += part.length;
  }
  return out;
}

/** A file over `bytes` in memory that records its reads and the most of them in flight at once. */
function recordingFile(bytes: Uint8Array) {
  const reads: number[] = [];
  let inFlight = 0;
  let mostInFlight = 0;
  return {
    path: "memory.zip",
    size: bytes.length,
    reads,
    mostInFlight: () => mostInFlight,
    async readAt(offset: number, length: number): Promise<Uint8Array> {
      reads.push(length);
      inFlight++;
      mostInFlight = Math.max(mostInFlight, inFlight);
      await Promise.resolve();
      inFlight--;
      return bytes.slice(offset, offset + length);
    },
  };
}

Deno.test("ZipReader.open() reads the local headers of 65 entries 64 at a time, then the last one", async () => {
  const file = recordingFile(manyEntryZip(65));
  const zip = await ZipReader.open(file);
  assert.equal(zip.entries.length, 65);
  assert.equal(file.mostInFlight(), 64);
  assert.deepEqual([...await zip.read(zip.entries[64]!)], [64]);
});

Deno.test("ZipReader.open() reads 20 + 22 + 65535 bytes from the end, the most the end records can span", async () => {
  // A long archive: 2000 entries take more than the 65,577 bytes the tail read may cover.
  const bytes = manyEntryZip(2000);
  assert.ok(bytes.length > 20 + 22 + 0xffff);
  const file = recordingFile(bytes);
  const zip = await ZipReader.open(file);
  assert.equal(zip.entries.length, 2000);
  assert.equal(file.reads[0], 20 + 22 + 0xffff);
});
