/** The safetensors reader: header validation against the hostile corpus and the reference, lazy row reads. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import { dtypeFromTorch, DTYPES } from "../../formats/dtype.ts";
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
