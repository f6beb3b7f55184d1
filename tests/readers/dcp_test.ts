/** The dcp input kind: detection, and the `ckpt inspect` report of a DCP folder. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { inspectPath } from "../../readers/inspect.ts";

const FIX = new URL("../fixtures/dcp/", import.meta.url).pathname;

Deno.test("inspectPath() describes a DCP folder: sharding per tensor, values, files", async () => {
  const report = await inspectPath(join(FIX, "dtensor_w4", "model"));
  assert.equal(report.kind, "dcp");
  assert.equal(report.totalBytes, 140 + 120 + 48 + 8);
  const grid = report.tensors.find((t) => t.name === "grid")!;
  assert.deepEqual(grid.shape, [5, 7]);
  assert.deepEqual(grid.extra?.ranks, [0, 1, 2, 3]);
  assert.deepEqual(grid.extra?.splitDims, [0, 1]);
  assert.equal(grid.file, "ranks 0-3: 4 chunks along dim 0+1");
  const last = report.tensors.find((t) => t.name === "last_dim")!;
  assert.equal(last.extra?.emptyChunks, 1);
  assert.deepEqual(last.extra?.splitDims, [2]);
  assert.equal(report.tensors.find((t) => t.name === "replicated")!.file, "__1_0.distcp");
  assert.deepEqual((report.tree as Record<string, unknown>)["extra.ids"], [1, 2, 3]);
  assert.deepEqual(report.files?.map((f) => f.file), [
    "__0_0.distcp",
    "__1_0.distcp",
    "__2_0.distcp",
    "__3_0.distcp",
  ]);
  assert.equal(report.metadata?.ranks, 4);
});

Deno.test("the dcp-hf kind: HuggingFaceStorageWriter shards detected and described per rank", async () => {
  const { detectInputKind } = await import("../../readers/kinds.ts");
  const { findOptimizerSource } = await import("../../readers/optimizer.ts");
  const dir = join(FIX, "hf_w3", "model");
  assert.equal((await detectInputKind(dir)).name, "dcp-hf");
  // A SAFETENSORS-format DCP folder has a .metadata: it stays a `dcp` folder.
  assert.equal((await detectInputKind(join(FIX, "st_w3", "model"))).name, "dcp");
  const report = await inspectPath(dir);
  assert.equal(report.kind, "dcp-hf");
  assert.match(String(report.metadata?.format), /HuggingFaceStorageWriter/);
  assert.equal(report.metadata?.ranks, 3);
  const w = report.tensors.find((t) => t.name === "1.weight")!;
  assert.deepEqual(w.shape, [8, 5]);
  assert.equal(w.file, "ranks 0-2: 3 chunks along dim 0");
  assert.equal(report.files?.length, 6);
  // The optimizer saved the same way is recognised, and refused with the reason.
  const optim = join(FIX, "hf_w3", "optim");
  const source = await findOptimizerSource(optim);
  assert.equal(source?.name, "dcp-hf");
  await assert.rejects(
    source!.load(optim, { keys: "int" }),
    (e) => (e as { code?: string }).code === "DCP_UNSUPPORTED",
  );
});
