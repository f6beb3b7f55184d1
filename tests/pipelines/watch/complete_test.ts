import assert from "node:assert/strict";
import { checkComplete } from "../../../pipelines/watch/complete.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { age, halosCheckpoint, safetensorsBytes, torchZipBytes, writeTree } from "./_files.ts";

async function check(
  files: Record<string, Uint8Array | string>,
  complete: string[] = ["signals"],
): Promise<{ reason: string; detail?: string }> {
  return await withTempDir(async (dir) => {
    await writeTree(dir, files);
    await age(dir, 120);
    return await checkComplete(dir, { complete, quietSeconds: 30 });
  });
}

Deno.test("`checkComplete()` accepts a finished HALOs save", async () => {
  assert.equal((await check(halosCheckpoint(64))).reason, "complete");
});

Deno.test("`checkComplete()` rejects each kind of unfinished save", async (t) => {
  const full = halosCheckpoint(64);
  const st = safetensorsBytes();
  const cases: Array<[string, Record<string, Uint8Array | string>, string]> = [
    ["an empty folder", {}, "empty"],
    ["a save that has not reached the weights", { ...full, "model.safetensors": "" }, "truncated"],
    [
      "a save with metrics and optimizer but no weights yet",
      { "metrics.json": "{}", "optimizer.pt": torchZipBytes() },
      "no-weights",
    ],
    [
      "truncated safetensors",
      { ...full, "model.safetensors": st.subarray(0, st.length - 1) },
      "truncated",
    ],
    ["a torch zip without its end record", {
      ...full,
      "pytorch_model.bin": torchZipBytes().subarray(0, 40),
    }, "truncated"],
    ["a temp file", { ...full, "model.safetensors.tmp": "x" }, "temp-file"],
    ["an rsync temp file", { ...full, ".model.safetensors.Ab12Cd": "x" }, "temp-file"],
    ["DCP shards without .metadata", {
      "metrics.json": "{}",
      "pytorch_model_fsdp_0/__0_0.distcp": "x",
      "pytorch_model_fsdp_0/__1_0.distcp": "x",
    }, "dcp-no-metadata"],
    ["numbered shards without their index", {
      "model-00001-of-00002.safetensors": st,
      "model-00002-of-00002.safetensors": st,
    }, "shards-without-index"],
    ["an index naming a missing shard", {
      "model-00001-of-00002.safetensors": st,
      "model.safetensors.index.json": JSON.stringify({
        metadata: {},
        weight_map: {
          a: "model-00001-of-00002.safetensors",
          b: "model-00002-of-00002.safetensors",
        },
      }),
    }, "index-missing-shard"],
    ["an unreadable index", { "model.safetensors.index.json": "{" }, "index-unreadable"],
    ["adapter weights without adapter_config.json", {
      "adapter_model.safetensors": st,
    }, "adapter-no-config"],
  ];
  for (const [name, files, reason] of cases) {
    await t.step(name, async () => assert.equal((await check(files)).reason, reason));
  }
});

Deno.test("`checkComplete()` accepts DCP with .metadata, full shard sets and adapters", async (t) => {
  const st = safetensorsBytes();
  await t.step("DCP", async () => {
    const r = await check({
      "pytorch_model_fsdp_0/__0_0.distcp": "x",
      "pytorch_model_fsdp_0/.metadata": "x",
    });
    assert.equal(r.reason, "complete");
  });
  await t.step("HF shards with index", async () => {
    const r = await check({
      "model-00001-of-00002.safetensors": st,
      "model-00002-of-00002.safetensors": st,
      "model.safetensors.index.json": JSON.stringify({
        metadata: {},
        weight_map: {
          a: "model-00001-of-00002.safetensors",
          b: "model-00002-of-00002.safetensors",
        },
      }),
    });
    assert.equal(r.reason, "complete");
  });
  await t.step("adapter", async () => {
    const r = await check({ "adapter_model.safetensors": st, "adapter_config.json": "{}" });
    assert.equal(r.reason, "complete");
  });
});

Deno.test("`checkComplete()` waits for the quiet period", async () => {
  await withTempDir(async (dir) => {
    await writeTree(dir, halosCheckpoint(1));
    const fresh = await checkComplete(dir, { quietSeconds: 30 });
    assert.equal(fresh.reason, "not-quiet");
    assert.equal(fresh.complete, false);
    const later = await checkComplete(dir, { quietSeconds: 30, now: () => Date.now() + 31_000 });
    assert.equal(later.reason, "complete");
    assert.equal(later.files, 7);
  });
});

Deno.test("`checkComplete()` applies file-glob rules", async () => {
  const files = { "metrics.json": "{}", "weights/a.bin": torchZipBytes() };
  assert.equal((await check(files, ["metrics.json", "weights/*.bin"])).reason, "complete");
  const missing = await check(files, ["signals", "DONE"]);
  assert.equal(missing.reason, "no-weights");
  const onlyGlob = await check(files, ["DONE"]);
  assert.deepEqual([onlyGlob.reason, onlyGlob.detail], ["missing-file", "DONE"]);
});

Deno.test("`checkComplete()` reports a folder removed meanwhile as vanished", async () => {
  await withTempDir(async (dir) => {
    const c = await checkComplete(`${dir}/gone`, { quietSeconds: 0 });
    assert.deepEqual([c.complete, c.reason], [false, "vanished"]);
  });
});
