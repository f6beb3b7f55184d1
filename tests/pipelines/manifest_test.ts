import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import {
  buildManifest,
  hashFile,
  listFiles,
  MANIFEST_NAME,
  readManifest,
  writeManifest,
} from "../../pipelines/manifest.ts";
import { withTempDir } from "../_helpers/tmp.ts";

Deno.test("`hashFile()` streams files larger than its block and matches node:crypto", async () => {
  await withTempDir(async (dir) => {
    const bytes = new Uint8Array(9 * 1024 * 1024 + 7);
    for (let i = 0; i < bytes.length; i += 4096) bytes[i] = i & 0xff;
    await Deno.writeFile(join(dir, "big"), bytes);
    const got = await hashFile(join(dir, "big"));
    assert.equal(got.size, bytes.length);
    assert.equal(got.sha256, createHash("sha256").update(bytes).digest("hex"));
    await Deno.writeFile(join(dir, "empty"), new Uint8Array());
    assert.equal(
      (await hashFile(join(dir, "empty"))).sha256,
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    );
  });
});

Deno.test("`buildManifest()` lists nested files sorted, skipping the manifest itself", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "sub"));
    await Deno.writeTextFile(join(dir, "sub", "z.txt"), "z");
    await Deno.writeTextFile(join(dir, "b.txt"), "bb");
    await Deno.writeTextFile(join(dir, MANIFEST_NAME), "{}");
    assert.deepEqual(await listFiles(dir), ["b.txt", MANIFEST_NAME, "sub/z.txt"]);
    const m = await buildManifest(dir, {
      output: dir,
      stages: [{ name: "s", index: 0, ms: 5, report: { backend: "webgpu", dtype: "BF16" } }],
    });
    assert.deepEqual(m.files.map((f) => f.path), ["b.txt", "sub/z.txt"]);
    assert.equal(m.backend, "webgpu");
    assert.equal(m.dtype, "BF16");
    assert.equal(m.timings.totalMs, 5);
    assert.equal(m.tool.name, "@ckpt/pipelines");
    const sha = await writeManifest(dir, m);
    const written = await Deno.readFile(join(dir, MANIFEST_NAME));
    assert.equal(sha, createHash("sha256").update(written).digest("hex"));
    assert.deepEqual((await readManifest(dir)).files, m.files);
  });
});

Deno.test("`readManifest()` rejects a missing or malformed manifest", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(
      () => readManifest(dir),
      (e: unknown) => isCkptError(e, "MANIFEST_MISSING"),
    );
    await Deno.writeTextFile(join(dir, MANIFEST_NAME), "{not json");
    await assert.rejects(
      () => readManifest(dir),
      (e: unknown) => isCkptError(e, "MANIFEST_INVALID"),
    );
    await Deno.writeTextFile(
      join(dir, MANIFEST_NAME),
      JSON.stringify({ format: "ckpt-manifest", version: 1, files: [{ path: "a", size: 1 }] }),
    );
    await assert.rejects(
      () => readManifest(dir),
      (e: unknown) => isCkptError(e, "MANIFEST_INVALID"),
    );
  });
});
