import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import { inspectPath } from "../../readers/inspect.ts";
import { BUILTIN_INPUT_KINDS } from "../../readers/kinds.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const FIXTURES = new URL("../fixtures/safetensors/", import.meta.url).pathname;

Deno.test("`inspectPath()` describes a safetensors file the real library wrote", async () => {
  const report = await inspectPath(join(FIXTURES, "all_dtypes.safetensors"));
  assert.equal(report.kind, "safetensors");
  assert.equal(report.tensors.length, 16);
  assert.deepEqual(report.metadata, { format: "pt" });
  assert.deepEqual(report.tensors.find((t) => t.name === "f32"), {
    name: "f32",
    dtype: "F32",
    shape: [4, 3],
    bytes: 48,
  });
  assert.deepEqual(report.tensors.find((t) => t.name === "scalar")?.shape, []);
  assert.equal(report.totalBytes, report.tensors.reduce((n, t) => n + t.bytes, 0));
  assert.equal(report.files, undefined);
  // Plain data: survives JSON.
  assert.deepEqual(JSON.parse(JSON.stringify(report)), report);
});

Deno.test("`inspectPath()` describes a shard folder and its index file alike", async () => {
  for (
    const p of [
      join(FIXTURES, "sharded"),
      join(FIXTURES, "sharded", "model.safetensors.index.json"),
    ]
  ) {
    const report = await inspectPath(p);
    assert.equal(report.kind, "hf-shards");
    assert.equal(report.path, p);
    assert.equal(report.tensors.length, 5);
    assert.equal(report.totalBytes, 192);
    assert.deepEqual(report.metadata, { format: "pt", index: { total_size: 192 } });
    assert.deepEqual(report.files?.map((f) => [f.file, f.tensors]), [
      ["model-00001-of-00003.safetensors", 1],
      ["model-00002-of-00003.safetensors", 2],
      ["model-00003-of-00003.safetensors", 2],
    ]);
    assert.equal(
      report.tensors.find((t) => t.name === "lm_head.weight")?.file,
      "model-00003-of-00003.safetensors",
    );
  }
});

Deno.test("`inspectPath()` opens model.safetensors in a folder and sniffs unsuffixed files", async () => {
  await withTempDir(async (dir) => {
    const sd = new StateDict([["w", tensorFromBytes("I64", [2], new Uint8Array(16))]]);
    await writeSafetensors(join(dir, "model.safetensors"), sd);
    const folder = await inspectPath(dir);
    assert.equal(folder.kind, "safetensors");
    assert.equal(folder.path, dir);
    assert.equal(folder.totalBytes, 16);
    await Deno.copyFile(join(dir, "model.safetensors"), join(dir, "weights.data"));
    assert.equal((await inspectPath(join(dir, "weights.data"))).kind, "safetensors");
  });
});

Deno.test("`inspectPath()` gives clear errors for what it cannot read", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(
      () => inspectPath(join(dir, "missing")),
      (e) => isCkptError(e, "FILE_OPEN"),
    );
    await Deno.writeTextFile(join(dir, "notes.txt"), "hello, not a checkpoint");
    await assert.rejects(
      () => inspectPath(join(dir, "notes.txt")),
      (e) => isCkptError(e, "INSPECT_UNKNOWN") && e.message.includes("notes.txt"),
    );
    await assert.rejects(() => inspectPath(dir), (e) => isCkptError(e, "INSPECT_UNKNOWN"));
  });
  await assert.rejects(
    () => inspectPath(join(FIXTURES, "hostile", "overlapping_offsets.safetensors")),
    (e) => isCkptError(e, "SAFETENSORS_OFFSETS") && e.tensor === "b",
  );
  assert.ok(BUILTIN_INPUT_KINDS.length >= 2);
});
