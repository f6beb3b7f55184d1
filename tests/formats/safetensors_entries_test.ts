/** The bound on a safetensors header's entries: counted on raw bytes, refused before decoding. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import { countHeaderEntries } from "../../formats/_safetensors_entries.ts";
import {
  MAX_HEADER_ENTRIES,
  MAX_HEADER_SIZE,
  readSafetensorsHeader,
  writeSafetensors,
} from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const enc = new TextEncoder();

/** A safetensors file of `tensors` one-byte U8 tensors (scalars named `t` + the index in base 36) and `meta` metadata values. */
async function writeHeaderFile(path: string, tensors: number, meta = 0): Promise<void> {
  const parts: string[] = [];
  if (meta > 0) {
    const m: string[] = [];
    for (let i = 0; i < meta; i++) m.push(`"m${i}":"v"`);
    parts.push(`"__metadata__":{${m.join(",")}}`);
  }
  for (let i = 0; i < tensors; i++) {
    parts.push(`"t${i.toString(36)}":{"dtype":"U8","shape":[],"data_offsets":[${i},${i + 1}]}`);
  }
  const header = enc.encode(`{${parts.join(",")}}`);
  const file = new Uint8Array(8 + header.length + tensors);
  new DataView(file.buffer).setBigUint64(0, BigInt(header.length), true);
  file.set(header, 8);
  await Deno.writeFile(path, file);
}

Deno.test("`countHeaderEntries()` counts tensors and __metadata__ values, nothing nested", () => {
  const count = (s: string) => countHeaderEntries(enc.encode(s));
  assert.equal(count("{}"), 0);
  assert.equal(
    count(
      '{"__metadata__":{"a":"x","b":"{,}"},"t":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}',
    ),
    3,
  );
  // quotes, braces and commas inside names are not structure
  assert.equal(count('{"a\\",{b":{"dtype":"F32"}, "c,}\\\\":{"x":{"y":[1,{"z":2}]}}}'), 2);
  // a key that only decodes to __metadata__ counts as a tensor: one more, never one fewer
  assert.equal(count('{"\\u005f_metadata__":{"a":"x","b":"y"}}'), 1);
  // bytes that are not JSON end the count without an error or a hang
  assert.equal(count('{"unterminated'), 1);
  assert.equal(count("}}]]{{"), 0);
  assert.equal(count('{"a":1,"b":2,"c":3,"d":4}'), 4);
  assert.equal(countHeaderEntries(enc.encode('{"a":1,"b":2,"c":3,"d":4}'), 2), 3);
});

Deno.test("`readSafetensorsHeader()` reads a header at the entry limit and refuses one entry more", async () => {
  await withTempDir(async (dir) => {
    // metadata values are the cheap entries to parse: one tensor plus the rest as metadata
    const atLimit = join(dir, "at.safetensors");
    await writeHeaderFile(atLimit, 1, MAX_HEADER_ENTRIES - 1);
    const header = await readSafetensorsHeader(atLimit);
    assert.equal(header.tensors.length, 1);
    assert.equal(Object.keys(header.metadata ?? {}).length, MAX_HEADER_ENTRIES - 1);

    const over = join(dir, "over.safetensors");
    await writeHeaderFile(over, 2, MAX_HEADER_ENTRIES - 1);
    await assert.rejects(
      () => readSafetensorsHeader(over),
      (e) =>
        isCkptError(e, "SAFETENSORS_TOO_MANY_ENTRIES") && e.file === over &&
        e.message.includes(`more than ${MAX_HEADER_ENTRIES} entries`),
    );
  });
});

Deno.test("a ~95 MB header of 1.5 million tensors is refused without parsing it", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "huge.safetensors");
    await writeHeaderFile(path, 1_500_000);
    const size = (await Deno.stat(path)).size;
    assert.ok(size - 1_500_000 - 8 <= MAX_HEADER_SIZE, "the header is within the 100 MB limit");
    assert.ok(size > 80_000_000);
    const before = Deno.memoryUsage().rss;
    await assert.rejects(
      () => readSafetensorsHeader(path),
      (e) => isCkptError(e, "SAFETENSORS_TOO_MANY_ENTRIES") && e.file === path,
    );
    // the header bytes are read (≤ 100 MB); parsing them would have taken over 1.5 GB
    const grown = Deno.memoryUsage().rss - before;
    assert.ok(grown < 400_000_000, `rss grew ${grown} bytes`);
  });
});

Deno.test("`writeSafetensors()` refuses a header of more entries than it reads back", async () => {
  await withTempDir(async (dir) => {
    const empty = tensorFromBytes("U8", [0], new Uint8Array(0));
    const sd = new StateDict();
    for (let i = 0; i < MAX_HEADER_ENTRIES; i++) sd.set(`t${i}`, empty);
    const path = join(dir, "x.safetensors");
    await assert.rejects(
      () => writeSafetensors(path, sd, { metadata: { format: "pt", extra: "x" } }),
      (e) => isCkptError(e, "SAFETENSORS_TOO_MANY_ENTRIES"),
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});
