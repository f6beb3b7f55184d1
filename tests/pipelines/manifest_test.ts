import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import {
  buildManifest,
  listFiles,
  MANIFEST_NAME,
  readManifest,
  writeManifest,
} from "../../pipelines/manifest.ts";
import { withTempDir } from "../_helpers/tmp.ts";

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
