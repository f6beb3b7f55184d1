/** The safetensors reader: header validation against the hostile corpus and the reference, lazy row reads. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import { dtypeFromTorch, DTYPES } from "../../formats/dtype.ts";
import {
  checkHeaderLength,
  compareUtf8,
  MAX_HEADER_SIZE,
  startsLikeSafetensors,
} from "../../formats/_safetensors_header.ts";
import { openSafetensors, readSafetensorsHeader } from "../../formats/safetensors.ts";
import { rowNumel } from "../../formats/state_dict.ts";
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

Deno.test("`readSafetensorsHeader()` checks the data size at the exact edge: one byte short, exact, one long", async () => {
  // Two tensors, 6 data bytes: "a" U8[2] at [0, 2], "b" I16[2] at [2, 6].
  const header = '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},' +
    '"b":{"dtype":"I16","shape":[2],"data_offsets":[2,6]}}';
  const data = new Uint8Array([1, 2, 3, 4, 5, 6, 7]);
  await withTempDir(async (dir) => {
    const outcomes: string[] = [];
    for (const size of [0, 5, 6, 7]) {
      const path = join(dir, `d${size}.safetensors`);
      await Deno.writeFile(path, rawFile(header, data.subarray(0, size)));
      for (const open of [readSafetensorsHeader, openSafetensors]) {
        const err = await open(path).then(async (r) => {
          if ("close" in r) {
            // The exact file reads its last tensor's bytes back.
            assert.deepEqual([...(await r.require("b").read())], [3, 4, 5, 6]);
            await r.close();
          } else {
            assert.equal(r.fileSize, 8 + new TextEncoder().encode(header).length + 6);
            assert.equal(r.dataStart, 8 + new TextEncoder().encode(header).length);
          }
          return undefined;
        }, (e: unknown) => e);
        if (err === undefined) {
          outcomes.push(`${size}:ok`);
          continue;
        }
        assert.ok(isCkptError(err), String(err));
        outcomes.push(`${size}:${err.code}`);
        assert.equal(err.file, path);
        if (size < 6) {
          assert.equal(err.tensor, "b");
          assert.ok(
            err.message.includes(`ends at data byte 6 but the file holds ${size} data bytes`),
            err.message,
          );
        } else {
          assert.ok(err.message.includes(`${size - 6} bytes after the last tensor`), err.message);
        }
      }
    }
    assert.deepEqual(outcomes, [
      "0:SAFETENSORS_TRUNCATED",
      "0:SAFETENSORS_TRUNCATED",
      "5:SAFETENSORS_TRUNCATED",
      "5:SAFETENSORS_TRUNCATED",
      "6:ok",
      "6:ok",
      "7:SAFETENSORS_TRAILING",
      "7:SAFETENSORS_TRAILING",
    ]);
  });
});

Deno.test("`readSafetensorsHeader()` checks the header length at the exact edge of the file", async () => {
  const header = new TextEncoder().encode('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}');
  await withTempDir(async (dir) => {
    const outcomes: string[] = [];
    // The prefix claims `header.length + d` bytes of header; the file holds the header and one byte.
    for (const d of [-1, 0, 1, 2]) {
      const bytes = new Uint8Array(8 + header.length + 1);
      new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length + d), true);
      bytes.set(header, 8);
      if (d === -1) bytes[8 + header.length - 1] = 0x20; // header one byte shorter: a space
      const path = join(dir, `h${d}.safetensors`);
      await Deno.writeFile(path, bytes);
      const err = await readSafetensorsHeader(path).then(() => undefined, (e: unknown) => e);
      outcomes.push(
        err === undefined ? `${d}:ok` : isCkptError(err) ? `${d}:${err.code}` : `${err}`,
      );
    }
    assert.deepEqual(outcomes, [
      "-1:SAFETENSORS_HEADER_JSON", // the header ends inside the JSON object
      "0:ok",
      "1:SAFETENSORS_HEADER_JSON", // the header then holds the data byte, not JSON
      "2:SAFETENSORS_HEADER_LENGTH", // runs one byte past the end of the file
    ]);
  });
});

Deno.test("`checkHeaderLength()` accepts a header of exactly MAX_HEADER_SIZE bytes and refuses one byte more", () => {
  const prefix = (n: number) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
    return b;
  };
  const size = 8 + MAX_HEADER_SIZE + 1;
  assert.equal(checkHeaderLength("x", size, prefix(MAX_HEADER_SIZE)), MAX_HEADER_SIZE);
  assert.throws(
    () => checkHeaderLength("x", size, prefix(MAX_HEADER_SIZE + 1)),
    (e) => isCkptError(e, "SAFETENSORS_HEADER_TOO_LARGE"),
  );
  // The file's own size bounds it too: exactly 8 + N bytes is enough, one fewer is not.
  assert.equal(checkHeaderLength("x", 8 + 10, prefix(10)), 10);
  assert.throws(
    () => checkHeaderLength("x", 8 + 9, prefix(10)),
    (e) => isCkptError(e, "SAFETENSORS_HEADER_LENGTH"),
  );
  assert.throws(
    () => checkHeaderLength("x", 7, prefix(0).subarray(0, 7)),
    (e) => isCkptError(e, "SAFETENSORS_HEADER_TOO_SMALL"),
  );
});

Deno.test("`startsLikeSafetensors()` needs 9 bytes, a length from 2 to the limit that fits the file, and a `{`", () => {
  const head = (n: number, brace = 0x7b) => {
    const b = new Uint8Array(9);
    new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
    b[8] = brace;
    return b;
  };
  const cases: [string, Uint8Array, number, boolean][] = [
    ["the smallest header, the file exactly long enough", head(2), 10, true],
    ["one byte of header", head(1), 10, false],
    ["a header one byte longer than the file holds", head(3), 10, false],
    ["a header of exactly the limit", head(MAX_HEADER_SIZE), 8 + MAX_HEADER_SIZE, true],
    ["a header one byte over the limit", head(MAX_HEADER_SIZE + 1), 9 + MAX_HEADER_SIZE, false],
    ["no `{` after the length", head(2, 0x5b), 10, false],
    ["only 8 bytes to look at", head(2).subarray(0, 8), 10, false],
    ["only 5 bytes, in a buffer of 5", new Uint8Array(5), 10, false],
  ];
  for (const [what, bytes, fileSize, want] of cases) {
    assert.equal(startsLikeSafetensors(bytes, fileSize), want, what);
  }
});

Deno.test("`readSafetensorsHeader()` finds a duplicate name after a one-key `__metadata__` and takes no value for a name", async () => {
  const t = '{"dtype":"U8","shape":[2],"data_offsets":[0,2]}';
  await withTempDir(async (dir) => {
    const outcome = async (header: string) => {
      const path = join(dir, "h.safetensors");
      await Deno.writeFile(path, rawFile(header, new Uint8Array(2)));
      const err = await readSafetensorsHeader(path).then(() => undefined, (e: unknown) => e);
      return isCkptError(err) ? `${err.code} ${err.tensor}` : String(err);
    };
    // The metadata object holds no comma: the key after it must still be seen as a key.
    assert.equal(
      await outcome(`{"__metadata__":{"format":"pt"},"a":${t},"a":${t}}`),
      "SAFETENSORS_DUPLICATE a",
    );
    // A string value at the top level is a bad entry, not a second "x".
    assert.equal(await outcome(`{"x":"x"}`), "SAFETENSORS_ENTRY x");
    assert.equal(await outcome(`{"__metadata__":{"format":"pt"},"a":${t}}`), "undefined");
  });
});

Deno.test("`readSafetensorsHeader()` names a dtype the reference knows apart from one nobody knows", async () => {
  await withTempDir(async (dir) => {
    const message = async (dtype: string) => {
      const path = join(dir, `${dtype}.safetensors`);
      const header = `{"a":{"dtype":"${dtype}","shape":[1],"data_offsets":[0,4]}}`;
      await Deno.writeFile(path, rawFile(header, new Uint8Array(4)));
      const err = await readSafetensorsHeader(path).catch((e: unknown) => e);
      assert.ok(isCkptError(err, "SAFETENSORS_DTYPE"), String(err));
      assert.equal(err.tensor, "a");
      return err.message;
    };
    assert.match(await message("U32"), /has dtype U32, which ckpt does not support$/);
    assert.match(await message("Q7"), /has unknown dtype "Q7"$/);
  });
});

Deno.test("`compareUtf8()` orders names by their UTF-8 bytes, as Rust's String order does", () => {
  // U+FF61 is EF BD A1 in UTF-8 and U+1F600 is F0 9F 98 80: UTF-8 puts U+FF61 first, while
  // JavaScript's UTF-16 order (0xFF61 against the surrogate 0xD83D) puts it last.
  assert.ok(compareUtf8("\uff61", "\u{1f600}") < 0);
  assert.ok(compareUtf8("\u{1f600}", "\uff61") > 0);
  assert.ok("\uff61" > "\u{1f600}");
  assert.equal(compareUtf8("layer.1", "layer.1"), 0);
  assert.ok(compareUtf8("layer", "layer.1") < 0 && compareUtf8("layer.1", "layer") > 0);
});

Deno.test("`readSafetensorsHeader()` takes dimensions and offsets up to 2^48 - 1, the schema's limit, and refuses 2^48", async () => {
  await withTempDir(async (dir) => {
    const outcome = async (shape: number, end: number) => {
      const path = join(dir, "big.safetensors");
      const header = `{"a":{"dtype":"U8","shape":[${shape}],"data_offsets":[0,${end}]}}`;
      await Deno.writeFile(path, rawFile(header, new Uint8Array(4)));
      const err = await readSafetensorsHeader(path).then(() => undefined, (e: unknown) => e);
      return isCkptError(err) ? err.code : String(err);
    };
    const max = 2 ** 48 - 1;
    // At the limit the header is well-formed and only the missing bytes are refused.
    assert.equal(await outcome(max, max), "SAFETENSORS_TRUNCATED");
    assert.equal(await outcome(max + 1, max), "SAFETENSORS_SHAPE");
    assert.equal(await outcome(4, max + 1), "SAFETENSORS_OFFSETS");
  });
});

Deno.test("`readSafetensorsHeader()` refuses a hole or an overlap between tensors whose sizes are each right", async () => {
  await withTempDir(async (dir) => {
    const outcome = async (second: [number, number], dataBytes: number) => {
      const path = join(dir, "o.safetensors");
      const header = '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},' +
        `"b":{"dtype":"U8","shape":[4],"data_offsets":[${second}]}}`;
      await Deno.writeFile(path, rawFile(header, new Uint8Array(dataBytes)));
      const err = await readSafetensorsHeader(path).then(() => undefined, (e: unknown) => e);
      return isCkptError(err) ? `${err.code} ${err.tensor}` : String(err);
    };
    assert.equal(await outcome([4, 8], 8), "undefined"); // contiguous: fine
    assert.equal(await outcome([6, 10], 10), "SAFETENSORS_OFFSETS b"); // a 2-byte hole
    assert.equal(await outcome([2, 6], 6), "SAFETENSORS_OFFSETS b"); // overlapping a
  });
});

Deno.test("`readSafetensorsHeader()` says what an oversized length prefix looks like: a zip, a pickle, or not JSON at all", async () => {
  await withTempDir(async (dir) => {
    const message = async (bytes: number[]) => {
      const path = join(dir, "x.safetensors");
      await Deno.writeFile(path, new Uint8Array([...bytes, ...new Array(16).fill(0x20)]));
      const err = await readSafetensorsHeader(path).catch((e: unknown) => e);
      assert.ok(isCkptError(err), String(err));
      return `${err.code}: ${err.message.replace(/^.*?: /, "")}`;
    };
    const zip = [0x50, 0x4b, 0x03, 0x04, 0x14, 0x00, 0x00, 0x00];
    const pickle = [0x80, 0x02, 0x63, 0x5f, 0x5f, 0x62, 0x75, 0x69];
    const other = [0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41];
    assert.match(
      await message(zip),
      /^SAFETENSORS_HEADER_TOO_LARGE: .*\(this is a zip file: a torch\.save/,
    );
    assert.match(
      await message(pickle),
      /^SAFETENSORS_HEADER_TOO_LARGE: .*\(this looks like a pickle/,
    );
    assert.match(await message(other), /^SAFETENSORS_HEADER_TOO_LARGE: .*-byte limit$/);
    // a zip needs both "P" and "K": either alone is no zip
    for (const half of [[0x50, 0x41], [0x41, 0x4b]]) {
      assert.match(
        await message([...half, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41]),
        /^SAFETENSORS_HEADER_TOO_LARGE: .*-byte limit$/,
      );
    }
    // A length that fits, over bytes that are not JSON.
    const path = join(dir, "j.safetensors");
    await Deno.writeFile(path, rawFile('{"a":', new Uint8Array(0)));
    const err = await readSafetensorsHeader(path).catch((e: unknown) => e);
    assert.ok(
      isCkptError(err, "SAFETENSORS_HEADER_JSON") && /header is not JSON \(/.test(err.message),
    );
  });
});

Deno.test("`readSafetensorsHeader()` orders tensors that begin at the same offset by their end: an empty one first", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "e.safetensors");
    // "b" and the empty "z" both begin at 4; the header lists "b" first.
    const header = '{"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},' +
      '"z":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},' +
      '"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}';
    await Deno.writeFile(path, rawFile(header, new Uint8Array(8)));
    const h = await readSafetensorsHeader(path);
    assert.deepEqual(h.tensors.map((t) => t.name), ["a", "z", "b"]);
  });
});
