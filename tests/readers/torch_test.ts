/** `inspectPath()` on torch files and pytorch_model.bin shard folders. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import { inspectPath } from "../../readers/inspect.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";

const FIX = join(REPO_ROOT, "tests", "fixtures", "torch");

Deno.test("inspectPath() reports a torch optimizer file: tensors by path and the value tree", async () => {
  const r = await inspectPath(join(FIX, "optimizer.pt"));
  assert.equal(r.kind, "torch");
  assert.equal(r.tensors.length, 12);
  assert.deepEqual(r.tensors[0], {
    name: "state_dict.state.0.step",
    dtype: "F32",
    shape: [],
    bytes: 4,
    extra: { storage: "0", storageOffset: 0 },
  });
  const tree = r.tree as { class: string; state_dict: { param_groups: { lr: number }[] } };
  assert.equal(tree.class, "AdamW");
  assert.equal(typeof tree.state_dict.param_groups[0]!.lr, "number");
});

Deno.test("inspectPath() reports a state dict without a tree, views with their strides", async () => {
  const sd = await inspectPath(join(FIX, "model_sd.pt"));
  assert.equal(sd.tree, undefined);
  assert.deepEqual(sd.tensors.map((t) => t.name), ["0.weight", "0.bias", "2.weight", "2.bias"]);
  const views = await inspectPath(join(FIX, "views.pt"));
  const t = views.tensors.find((x) => x.name === "t")!;
  assert.deepEqual([t.shape, t.extra?.stride], [[4, 3], [1, 4]]);
});

Deno.test("inspectPath() reports a pytorch_model.bin shard folder with files", async () => {
  const r = await inspectPath(join(FIX, "sharded"));
  assert.equal(r.kind, "torch-shards");
  assert.equal(r.tensors.length, 6);
  assert.equal(r.files?.length, 3);
  assert.equal(r.totalBytes, 432);
  assert.deepEqual(r.metadata, { index: { total_size: 432 } });
});

Deno.test("inspectPath() refuses a legacy torch file with TORCH_LEGACY", async () => {
  await assert.rejects(inspectPath(join(FIX, "legacy.pt")), (e) => isCkptError(e, "TORCH_LEGACY"));
});
