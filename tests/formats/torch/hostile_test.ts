/**
 * The hostile corpus (tests/fixtures/torch/hostile, made by generate.py): every file ends in the
 * `code`d error cases.json names, nothing runs, and each case reads a bounded part of its file.
 * Plus truncation of a real torch file at every section boundary and of its pickle at every byte,
 * and a seeded fuzz whose every outcome is counted.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { RandomAccessFile } from "../../../formats/_io.ts";
import { loadTorch, loadTorchFrom } from "../../../formats/torch/load.ts";
import { StorageHandle, unpickle } from "../../../formats/torch/unpickle.ts";
import {
  bytesSource,
  type PyGlobal,
  type PyTuple,
  type PyValue,
  tensorsOf,
} from "../../../formats/torch/values.ts";
import { ZipReader } from "../../../formats/torch/zip.ts";
import { REPO_ROOT } from "../../_helpers/peer.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { storageClassDType } from "../../../formats/torch/unpickle.ts";

const FIX = join(REPO_ROOT, "tests", "fixtures", "torch");
const HOSTILE = join(FIX, "hostile");
const cases: Record<string, string> = JSON.parse(
  await Deno.readTextFile(join(HOSTILE, "cases.json")),
);
const PWNED = "/tmp/ckpt-hostile-pwned";

Deno.test("hostile corpus: every case has a committed file", async () => {
  for (const name of Object.keys(cases)) {
    assert.ok((await Deno.stat(join(HOSTILE, name))).isFile, name);
  }
  assert.ok(Object.keys(cases).length >= 80);
});

/** A file whose reads are counted: how much of the file the loader touched, in how many reads. */
async function countingFile(path: string) {
  const file = await RandomAccessFile.open(path);
  const counted = {
    path: file.path,
    size: file.size,
    reads: 0,
    bytes: 0,
    readAt(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
      counted.reads++;
      counted.bytes += length;
      return file.readAt(offset, length, into);
    },
    close: () => file.close(),
  };
  return counted;
}

for (const [name, code] of Object.entries(cases)) {
  Deno.test(`loadTorch() on hostile ${name} ${code === "OK" ? "loads (control)" : `fails with ${code}`}`, async () => {
    await Deno.remove(PWNED).catch(() => {});
    const path = join(HOSTILE, name);
    if (code === "OK") {
      await using f = await loadTorch(path);
      void f.value;
    } else {
      await assert.rejects(loadTorch(path), (e) => {
        assert.ok(isCkptError(e), `${name}: not a CkptError: ${e}`);
        assert.equal(e.code, code, `${name}: ${e.message}`);
        assert.equal(e.file, path, `${name}: error names the file`);
        return true;
      });
    }
    // The work is bounded by the file, not by what it claims: a few positional reads that cover
    // the file at most about three times (head, end records, directory, headers, pickle). Timing
    // lives in `deno task bench latency`.
    const file = await countingFile(path);
    try {
      await loadTorchFrom(file).then(() => {}, () => {});
    } finally {
      await file.close();
    }
    assert.ok(file.reads <= 32, `${name}: ${file.reads} reads`);
    assert.ok(
      file.bytes <= 3 * file.size + 1024,
      `${name}: ${file.bytes} bytes read of ${file.size}`,
    );
    await assert.rejects(Deno.stat(PWNED), "a payload ran");
  });
}

Deno.test("hostile corpus: refused globals are named as module.name with the byte offset", async () => {
  await assert.rejects(loadTorch(join(HOSTILE, "global_os_system.pt")), (e) => {
    assert.ok(isCkptError(e, "PICKLE_GLOBAL"));
    assert.match(e.message, /os\.system/);
    assert.equal(e.offset, 2);
    assert.equal(e.details?.global, "os.system");
    return true;
  });
  await assert.rejects(
    loadTorch(join(HOSTILE, "stack_global_subprocess_popen.pt")),
    /subprocess\.Popen/,
  );
  await assert.rejects(loadTorch(join(HOSTILE, "builtins_eval.pt")), /builtins\.eval/);
});

Deno.test("loadTorch() on a real torch file cut at every section boundary fails with ZIP_EOCD", async () => {
  const src = join(FIX, "optimizer.pt");
  const bytes = await Deno.readFile(src);
  const file = await RandomAccessFile.open(src);
  const cuts = new Set<number>([
    0,
    4,
    bytes.length - 1,
    bytes.length - 22,
    bytes.length - 42,
    bytes.length - 98,
  ]);
  try {
    const zip = await ZipReader.open(file);
    for (const e of zip.entries) {
      for (const c of [e.headerOffset, e.headerOffset + 10, e.dataOffset, e.dataOffset + e.size]) {
        cuts.add(c);
      }
    }
  } finally {
    await file.close();
  }
  await withTempDir(async (dir) => {
    for (const cut of cuts) {
      const p = join(dir, `cut${cut}.pt`);
      await Deno.writeFile(p, bytes.subarray(0, cut));
      await assert.rejects(
        loadTorch(p),
        (e) => isCkptError(e) && ["ZIP_EOCD", "TORCH_NOT_TORCH"].includes(e.code),
        `cut at ${cut}`,
      );
    }
  });
});

Deno.test("unpickle() of a real torch pickle cut at every byte fails with PICKLE_TRUNCATED", async () => {
  const file = await RandomAccessFile.open(join(FIX, "optimizer.pt"));
  let pickle: Uint8Array;
  try {
    const zip = await ZipReader.open(file);
    pickle = await zip.read(zip.entries.find((e) => e.name.endsWith("/data.pkl"))!);
  } finally {
    await file.close();
  }
  const persistentLoad = (pid: PyValue) => {
    const [, cls, key, , n] = (pid as PyTuple).items;
    return new StorageHandle({
      key: key as string,
      storageClass: (cls as PyGlobal).qualname,
      location: "cpu",
      numel: n as number,
      dtype: storageClassDType((cls as PyGlobal).qualname),
      source: bytesSource(new Uint8Array(4 * (n as number))),
      file: "x",
    });
  };
  assert.ok(unpickle(pickle, { persistentLoad }) !== undefined);
  for (let cut = 0; cut < pickle.length; cut++) {
    assert.throws(
      () => unpickle(pickle.subarray(0, cut), { persistentLoad }),
      (e) => isCkptError(e, "PICKLE_TRUNCATED") && e.offset !== undefined && e.offset <= cut,
      `cut at ${cut}`,
    );
  }
});

/** Names, dtypes and shapes of every tensor in a loaded torch file, in order. */
function layout(value: PyValue): string[] {
  return [...tensorsOf(value)].map(([k, t]) => `${k}:${t.dtype}[${t.shape.join(",")}]`);
}

Deno.test("loadTorch() on randomly corrupted torch files: data flips load, most structure flips are refused, nothing else escapes (seeded fuzz)", async () => {
  let s = 12345;
  const rnd = () => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const names = ["optimizer.pt", "views.pt", "values.pt"];
  const sources = names.map((n) => Deno.readFileSync(join(FIX, n)));
  // The byte ranges of the tensor data records (`<archive>/data/<key>`) and the original layouts.
  const dataRanges: [number, number][][] = [];
  const layouts: string[][] = [];
  for (const n of names) {
    await using f = await loadTorch(join(FIX, n));
    layouts.push(layout(f.value));
    const file = await RandomAccessFile.open(join(FIX, n));
    try {
      const zip = await ZipReader.open(file);
      dataRanges.push(
        zip.entries.filter((e) => /\/data\/\d+$/.test(e.name))
          .map((e): [number, number] => [e.dataOffset, e.dataOffset + e.size]),
      );
    } finally {
      await file.close();
    }
  }
  const tally = { dataLoaded: 0, structureLoaded: 0, refused: 0 };
  const codes = new Set<string>();
  await withTempDir(async (dir) => {
    const p = join(dir, "fuzz.pt");
    for (let i = 0; i < 300; i++) {
      const which = i % sources.length;
      const src = sources[which]!;
      const b = src.slice();
      const flips = 1 + Math.floor(rnd() * 4);
      const at: number[] = [];
      for (let k = 0; k < flips; k++) {
        const x = Math.floor(rnd() * b.length);
        at.push(x);
        b[x] = (src[x]! + 1 + Math.floor(rnd() * 255)) & 255; // always a different byte
      }
      const dataOnly = at.every((x) => dataRanges[which]!.some(([a, e]) => x >= a && x < e));
      await Deno.writeFile(p, b);
      let loaded: string[] | undefined;
      try {
        await using f = await loadTorch(p);
        for (const [, t] of tensorsOf(f.value)) await t.read();
        loaded = layout(f.value);
      } catch (e) {
        assert.ok(isCkptError(e), `case ${i}: ${(e as Error)?.stack ?? e}`);
        assert.equal(e.file, p, `case ${i}: ${e.message}`);
        codes.add(e.code);
        assert.ok(!dataOnly, `case ${i}: a flip inside tensor data only was refused: ${e.message}`);
        tally.refused++;
        continue;
      }
      if (dataOnly) {
        // Tensor bytes are not checksummed (torch does not either): the same tensors load.
        assert.deepEqual(loaded, layouts[which], `case ${i}`);
        tally.dataLoaded++;
      } else tally.structureLoaded++;
    }
  });
  // Every case is counted once; each outcome happens, and refusal is the common one for flips
  // that touch the zip records or the pickle (some land in padding, timestamps or string bytes).
  assert.equal(tally.dataLoaded + tally.structureLoaded + tally.refused, 300);
  assert.ok(tally.dataLoaded >= 20, `data-only flips: ${JSON.stringify(tally)}`);
  assert.ok(
    tally.refused >= 0.6 * (tally.refused + tally.structureLoaded),
    `too few refused: ${JSON.stringify(tally)}`,
  );
  for (const family of ["ZIP_", "PICKLE_", "TORCH_"]) {
    assert.ok([...codes].some((c) => c.startsWith(family)), `no ${family} refusal: ${[...codes]}`);
  }
});
