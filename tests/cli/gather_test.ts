import assert from "node:assert/strict";
import { join } from "node:path";
import { openDcpStateDict } from "../../formats/dcp.ts";
import { openSafetensors, writeSafetensorsSharded } from "../../formats/safetensors.ts";
import { openTorchShards } from "../../formats/torch/state_dict.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { findModelConfig, gatherConfig } from "../../cli/gather.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt } from "./_cli.ts";

const FIX = join(REPO_ROOT, "tests", "fixtures", "dcp");

async function copyDir(src: string, dst: string): Promise<void> {
  await Deno.mkdir(dst, { recursive: true });
  for await (const e of Deno.readDir(src)) {
    await Deno.copyFile(join(src, e.name), join(dst, e.name));
  }
}

Deno.test("ckpt gather turns an accelerate-style DCP folder into safetensors plus config.json", async () => {
  await withTempDir(async (dir) => {
    // accelerate: checkpoint-N/pytorch_model_fsdp_0/ beside the run's config.json
    const input = join(dir, "checkpoint-3", "pytorch_model_fsdp_0");
    await copyDir(join(FIX, "bf16_w4", "model"), input);
    await Deno.writeTextFile(
      join(dir, "checkpoint-3", "config.json"),
      JSON.stringify({ model_type: "toy", torch_dtype: "bfloat16" }),
    );
    const out = join(dir, "out");
    const r = await ckpt(["gather", input, "--out", out, "--log", "quiet"]);
    assert.equal(r.code, 0, r.stderr);
    const config = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
    assert.equal(config.model_type, "toy");
    await using got = await openSafetensors(join(out, "model.safetensors"));
    await using want = await openDcpStateDict(input);
    assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
    for (const [k, t] of want) assert.deepEqual(await got.require(k).read(), await t.read(), k);
  });
});

Deno.test("ckpt gather reads other input kinds too (HF shards to sharded .bin)", async () => {
  await withTempDir(async (dir) => {
    const shards = join(dir, "shards");
    await Deno.mkdir(shards);
    const bytes = (n: number, seed: number) =>
      new Uint8Array(n).map((_, i) => (i * 7 + seed) & 255);
    const sd = new StateDict([
      ["module.a.weight", tensorFromBytes("F32", [4, 4], bytes(64, 1))],
      ["module.b.weight", tensorFromBytes("F32", [4, 4], bytes(64, 2))],
    ]);
    await writeSafetensorsSharded(shards, sd, { maxShardSize: 80 });
    const out = join(dir, "out");
    const r = await ckpt([
      "gather",
      shards,
      "--out",
      out,
      "--format",
      "bin",
      "--max-shard-size",
      "100",
      "--log",
      "quiet",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
    assert.ok(names.includes("pytorch_model.bin.index.json"), names.join(", "));
    await using back = await openTorchShards(out);
    assert.deepEqual([...back.keys()].sort(), ["a.weight", "b.weight"]);
    assert.deepEqual(await back.require("b.weight").read(), bytes(64, 2));
  });
});

Deno.test("ckpt gather refuses bad usage and existing outputs", async () => {
  assert.equal((await ckpt(["gather", join(FIX, "f32_w2", "model")])).code, 2);
  assert.equal(
    (await ckpt(["gather", join(FIX, "f32_w2", "model"), "--out", "/tmp/x", "--format", "onnx"]))
      .code,
    2,
  );
  const help = await ckpt(["gather", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /dcp/);
  await withTempDir(async (dir) => {
    const r = await ckpt(["gather", join(FIX, "f32_w2", "model"), "--out", dir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /OUTPUT_EXISTS/);
  });
});

Deno.test("ckpt gather stops on a broken DCP folder before writing anything", async () => {
  await withTempDir(async (dir) => {
    const input = join(dir, "model");
    await copyDir(join(FIX, "f32_w2", "model"), input);
    await Deno.copyFile(join(FIX, "bad", "hole.metadata"), join(input, ".metadata"));
    const out = join(dir, "out");
    const r = await ckpt(["gather", input, "--out", out, "--log", "json"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /DCP_CHUNK_HOLE/);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.deepEqual(left, ["model"], "no output, no staging folder");
  });
});

Deno.test("ckpt gather merges a PEFT-wrapped DCP model with --lora-r/--lora-alpha, refuses it without", async () => {
  await withTempDir(async (dir) => {
    const input = join(FIX, "lora_w2", "model");
    const refused = await ckpt(["gather", input, "--out", join(dir, "a"), "--log", "json"]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /MODEL_WRAPPED/);
    const out = join(dir, "b");
    const r = await ckpt([
      "gather",
      input,
      "--out",
      out,
      "--lora-r",
      "2",
      "--lora-alpha",
      "4",
      "--backend",
      "cpu",
      "--log",
      "quiet",
    ]);
    assert.equal(r.code, 0, r.stderr);
    await using got = await openSafetensors(join(out, "model.safetensors"));
    const names = [...got.keys()];
    assert.ok(names.includes("model.layers.0.self_attn.q_proj.weight"), names.join(", "));
    assert.ok(!names.some((n) => n.includes("lora_") || n.includes("base_layer")));
    const half = await ckpt(["gather", input, "--out", join(dir, "c"), "--lora-r", "2"]);
    assert.equal(half.code, 2);
  });
});

Deno.test("findModelConfig() and gatherConfig() build the gather pipeline", async () => {
  assert.equal(await findModelConfig(join(FIX, "f32_w2", "model")), undefined);
  assert.equal(await findModelConfig("x", "cfg.json"), join(Deno.cwd(), "cfg.json"));
  const cfg = gatherConfig("in", "out", { format: "bin", dtype: "bf16" });
  assert.deepEqual(cfg.stages.map((s) => s.use), ["gatherShards", "writeModel"]);
  assert.equal(cfg.stages[1]!.format, "bin");
  assert.equal(cfg.stages[1]!.dtype, "bf16");
  const merged = gatherConfig("in", "out", { lora: { r: 8, alpha: 16 } });
  assert.deepEqual(merged.stages.map((s) => s.use), ["gatherShards", "mergeLora", "writeModel"]);
  assert.equal(merged.stages[1]!.r, 8);
});
