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
