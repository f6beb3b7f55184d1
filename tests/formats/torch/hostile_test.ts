/**
 * The hostile corpus (tests/fixtures/torch/hostile, made by generate.py): every file ends in the
 * `code`d error cases.json names, nothing runs, and each case finishes fast. Plus truncation of a
 * real torch file at every section boundary and of its pickle at every byte.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { RandomAccessFile } from "../../../formats/_io.ts";
import { loadTorch } from "../../../formats/torch/load.ts";
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

for (const [name, code] of Object.entries(cases)) {
  Deno.test(`loadTorch() on hostile ${name} ${code === "OK" ? "loads (control)" : `fails with ${code}`}`, async () => {
    await Deno.remove(PWNED).catch(() => {});
    const t0 = performance.now();
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
    assert.ok(performance.now() - t0 < 2000, `${name} took too long`);
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
      (e) =>
        isCkptError(e, "PICKLE_TRUNCATED") || (cut === 0 && isCkptError(e, "PICKLE_TRUNCATED")),
      `cut at ${cut}`,
    );
  }
});

Deno.test("loadTorch() on randomly corrupted torch files fails only with CkptErrors (seeded fuzz)", async () => {
  let s = 12345;
  const rnd = () => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const sources = ["optimizer.pt", "views.pt", "values.pt"].map((n) =>
    Deno.readFileSync(join(FIX, n))
  );
  await withTempDir(async (dir) => {
    const p = join(dir, "fuzz.pt");
    for (let i = 0; i < 300; i++) {
      const src = sources[i % sources.length]!;
      const b = src.slice();
      const flips = 1 + Math.floor(rnd() * 4);
      for (let k = 0; k < flips; k++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      await Deno.writeFile(p, b);
      try {
        await using f = await loadTorch(p);
        for (const [, t] of tensorsOf(f.value)) await t.read();
      } catch (e) {
        assert.ok(isCkptError(e), `case ${i}: ${(e as Error)?.stack ?? e}`);
      }
    }
  });
});
