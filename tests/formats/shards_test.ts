import assert from "node:assert/strict";
import { isCkptError } from "../../errors.ts";
import {
  compareCodePoints,
  planShards,
  pythonJsonDumps,
  shardFileName,
  shardIndexJson,
} from "../../formats/shards.ts";

Deno.test("`planShards()` follows huggingface_hub's split rule", async (t) => {
  const e = (spec: [string, number][]) => spec.map(([name, bytes]) => ({ name, bytes }));
  await t.step("fills shards in order and opens a new one when the next does not fit", () => {
    const plan = planShards(e([["a", 4], ["b", 4], ["c", 2], ["d", 1]]), 10);
    assert.deepEqual(plan.shards, [{ names: ["a", "b", "c"], bytes: 10 }, {
      names: ["d"],
      bytes: 1,
    }]);
    assert.equal(plan.totalSize, 11);
  });
  await t.step(
    "a tensor over the limit gets its own shard at once, the open shard continues",
    () => {
      const plan = planShards(e([["a", 3], ["big", 50], ["b", 3], ["c", 5]]), 10);
      assert.deepEqual(plan.shards.map((s) => s.names), [["big"], ["a", "b"], ["c"]]);
      assert.equal(plan.totalSize, 61);
    },
  );
  await t.step("everything fits: one shard; nothing: one empty shard", () => {
    assert.equal(planShards(e([["a", 1], ["b", 1]]), 100).shards.length, 1);
    assert.deepEqual(planShards([], 100).shards, [{ names: [], bytes: 0 }]);
  });
  await t.step("zero-size tensors stay with their neighbours", () => {
    const plan = planShards(e([["a", 10], ["z", 0], ["b", 1]]), 10);
    assert.deepEqual(plan.shards.map((s) => s.names), [["a", "z"], ["b"]]);
  });
  await t.step("rejects a non-positive or fractional limit", () => {
    for (const bad of [0, -1, 1.5, NaN]) {
      assert.throws(() => planShards([], bad), (err) => isCkptError(err, "SHARD_SIZE"));
    }
  });
});

Deno.test("`shardFileName()` names shards as save_pretrained does", () => {
  assert.equal(shardFileName("model", ".safetensors", 0, 1), "model.safetensors");
  assert.equal(shardFileName("model", ".safetensors", 2, 4), "model-00003-of-00004.safetensors");
  assert.equal(shardFileName("pytorch_model", ".bin", 0, 2), "pytorch_model-00001-of-00002.bin");
});

Deno.test("`pythonJsonDumps()` matches json.dumps(indent=2, sort_keys=True)", () => {
  // Expected text checked against the peer's CPython json.dumps(..., indent=2, sort_keys=True).
  const value = { b: [1, 2.5, "é\u0001"], a: { "\u{1F600}": true, "\uff21": null, z: {} }, "": [] };
  assert.equal(
    pythonJsonDumps(value),
    '{\n  "": [],\n  "a": {\n    "z": {},\n    "\\uff21": null,\n    "\\ud83d\\ude00": true\n  },\n' +
      '  "b": [\n    1,\n    2.5,\n    "\\u00e9\\u0001"\n  ]\n}',
  );
  assert.ok(compareCodePoints("\uff21", "\u{1F600}") < 0); // UTF-16 order would say the opposite
});

Deno.test("`shardIndexJson()` writes metadata.total_size and a sorted weight_map", () => {
  const plan = planShards([{ name: "z", bytes: 8 }, { name: "a", bytes: 8 }], 8);
  const names = [0, 1].map((i) => shardFileName("model", ".safetensors", i, 2));
  const { index, text } = shardIndexJson(plan, names, { total_parameters: 4 });
  assert.deepEqual(index, {
    metadata: { total_parameters: 4, total_size: 16 },
    weight_map: { z: names[0], a: names[1] },
  });
  assert.equal(
    text,
    `{\n  "metadata": {\n    "total_parameters": 4,\n    "total_size": 16\n  },\n  "weight_map": {\n` +
      `    "a": "model-00002-of-00002.safetensors",\n    "z": "model-00001-of-00002.safetensors"\n  }\n}\n`,
  );
});
