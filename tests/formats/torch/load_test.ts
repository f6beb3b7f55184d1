/**
 * loadTorch / openTorchStateDict / openTorchShards against files real torch 2.6 wrote
 * (tests/fixtures/torch, made by generate.py): every value, Python type and tensor byte equal.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadTorch } from "../../../formats/torch/load.ts";
import { openTorchShards, openTorchStateDict } from "../../../formats/torch/state_dict.ts";
import {
  type PyDict,
  PyFloat,
  PyTuple,
  type PyValue,
  tensorsOf,
  type TorchTensor,
} from "../../../formats/torch/values.ts";
import { isCkptError } from "../../../errors.ts";
import { hex } from "../../_helpers/hex.ts";
import { pyTree, TORCH_FIX, TORCH_SAVED } from "../../_helpers/torch.ts";

type Expected = Record<string, { tree: unknown; tensors: Record<string, string> }>;
const expected: Expected = JSON.parse(await Deno.readTextFile(join(TORCH_FIX, "expected.json")));

async function checkFile(name: string): Promise<void> {
  await using f = await loadTorch(join(TORCH_FIX, name));
  const want = expected[name]!;
  assert.deepEqual(pyTree(f.value), want.tree, `${name}: value tree`);
  // deepEqual ignores key order; the JSON text does not (string keys keep insertion order)
  assert.equal(JSON.stringify(pyTree(f.value)), JSON.stringify(want.tree), `${name}: key order`);
  const got: Record<string, string> = {};
  for (const [path, t] of tensorsOf(f.value)) if (!(path in got)) got[path] = hex(await t.read());
  assert.deepEqual(got, want.tensors, `${name}: tensor bytes`);
}

for (const name of [...TORCH_SAVED, "values_p4.pt", "torch27_layout.pt"]) {
  Deno.test(`loadTorch() reads torch-written ${name} equal to torch's own view`, () =>
    checkFile(name));
}

Deno.test("loadTorch() keeps Python types: dict vs OrderedDict, tuple, int keys, whole floats", async () => {
  await using f = await loadTorch(join(TORCH_FIX, "values.pt"));
  const d = f.dict();
  assert.equal(d.kind, "dict");
  assert.equal((d.get("od") as PyDict).kind, "OrderedDict");
  assert.deepEqual([...(d.get("od") as PyDict).keys()], ["b", "a"]);
  assert.ok(d.get("tup") instanceof PyTuple);
  assert.equal(d.get(0), "int key");
  assert.equal(d.get(-1), "negative key");
  assert.equal(d.get(2 ** 40), "big key");
  assert.equal(d.get("0"), undefined);
  assert.ok(d.get("f") instanceof PyFloat && (d.get("f") as PyFloat).value === 1);
  assert.equal(d.get("lr"), 0.001);
  assert.equal(d.get("big"), 2n ** 70n);
  assert.equal((d.get("size") as PyTuple).kind, "torch.Size");
});

Deno.test("loadTorch() shares storages between views and tied weights", async () => {
  await using f = await loadTorch(join(TORCH_FIX, "views.pt"));
  const d = f.dict();
  const base = d.get("base") as TorchTensor;
  assert.equal((d.get("flat_slice") as TorchTensor).storage, base.storage);
  assert.equal(d.get("same_object"), base);
  await using t = await loadTorch(join(TORCH_FIX, "tied.pt"));
  const td = t.dict();
  assert.equal(
    (td.get("0.weight") as TorchTensor).storage,
    (td.get("1.weight") as TorchTensor).storage,
  );
});

Deno.test("loadTorch() reads row ranges of non-contiguous views", async () => {
  await using f = await loadTorch(join(TORCH_FIX, "views.pt"));
  const t = f.dict().get("t") as TorchTensor; // int16 arange(12).reshape(3,4).t()
  const rows = new Int16Array((await t.read(1, 3)).slice().buffer);
  assert.deepEqual([...rows], [1, 5, 9, 2, 6, 10]);
  const sub = f.dict().get("sub") as TorchTensor; // arange(24).reshape(4,6)[1:3, 2:5]
  assert.deepEqual([...new Float32Array((await sub.read(1, 2)).slice().buffer)], [14, 15, 16]);
});

Deno.test("loadTorch() reads the real AdamW state: int param keys, 0-d f32 steps, float lr", async () => {
  await using f = await loadTorch(join(TORCH_FIX, "optimizer.pt"));
  const sd = f.dict().get("state_dict") as PyDict;
  const state = sd.get("state") as PyDict;
  assert.deepEqual([...state.keys()], [0, 1, 2, 3]);
  const step = (state.get(0) as PyDict).get("step") as TorchTensor;
  assert.equal(step.dtype, "F32");
  assert.deepEqual(step.shape, []);
  assert.deepEqual([...new Float32Array((await step.read()).slice().buffer)], [2]);
  const group = (sd.get("param_groups") as PyValue[])[0] as PyDict;
  assert.equal(group.get("amsgrad"), false);
  assert.equal(group.get("foreach"), null);
  assert.deepEqual(group.get("params"), [0, 1, 2, 3]);
  assert.equal(f.dict().get("class"), "AdamW");
});

Deno.test("openTorchStateDict() opens a model state dict and openTorchShards() a shard folder", async () => {
  await using sd = await openTorchStateDict(join(TORCH_FIX, "model_sd.pt"));
  assert.deepEqual([...sd.keys()], ["0.weight", "0.bias", "2.weight", "2.bias"]);
  assert.equal(sd.require("0.weight").dtype, "BF16");
  await using shards = await openTorchShards(join(TORCH_FIX, "sharded"));
  const want = expected["sharded/all"]!.tensors;
  assert.deepEqual([...shards.keys()], [
    "layers.0.weight",
    "layers.0.bias",
    "layers.1.weight",
    "layers.1.bias",
    "layers.2.weight",
    "layers.2.bias",
  ]);
  for (const [name, ref] of shards) assert.equal(hex(await ref.read()), want[name], name);
  await using viaIndex = await openTorchShards(
    join(TORCH_FIX, "sharded", "pytorch_model.bin.index.json"),
  );
  assert.equal(viaIndex.size, 6);
});

Deno.test("openTorchStateDict() refuses a file that is not a dict of tensors", async () => {
  await assert.rejects(
    openTorchStateDict(join(TORCH_FIX, "scheduler.pt")),
    (e) => isCkptError(e, "TORCH_NOT_STATE_DICT"),
  );
});

Deno.test("loadTorch() refuses the legacy format with TORCH_LEGACY and says how to convert", async () => {
  await assert.rejects(
    loadTorch(join(TORCH_FIX, "legacy.pt")),
    (e) => isCkptError(e, "TORCH_LEGACY") && e.message.includes("re-save"),
  );
});
