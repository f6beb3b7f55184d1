/** The runner hashes output bytes while a stage writes them (ctx.onOutputBytes), with the same result as reading the files. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { z } from "zod";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { hashFile } from "../../pipelines/manifest.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { OutputHasher } from "../../pipelines/_output_hasher.ts";
import type { PipelineEvent, Stage } from "../../pipelines/stage.ts";
import { writeModelStage } from "../../pipelines/stages/write_model.ts";
import { verifyCheckpoint } from "../../pipelines/verify.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const CONFIG = {
  architectures: ["LlamaForCausalLM"],
  hidden_size: 64,
  tie_word_embeddings: false,
  torch_dtype: "float32",
  vocab_size: 96,
};

/** Sets a small model (about 60 KB of F32) as the state dict, as gatherShards would. */
const loadModel: Stage = {
  name: "loadModel",
  summary: "sets a small model",
  options: z.strictObject({ modelDir: z.string() }),
  run(ctx, raw) {
    const f32 = (shape: number[], seed: number) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const v = new Float32Array(n).map((_, i) => Math.sin(seed + i));
      return tensorFromBytes("F32", shape, new Uint8Array(v.buffer));
    };
    ctx.stateDict = new StateDict([
      ["model.embed_tokens.weight", f32([96, 64], 1)],
      ["model.layers.0.mlp.weight", f32([64, 64], 2)],
      ["model.norm.weight", f32([64], 3)],
      ["lm_head.weight", f32([96, 64], 4)],
    ]);
    ctx.modelConfig = { ...CONFIG };
    ctx.modelDir = (raw as { modelDir: string }).modelDir;
    return Promise.resolve();
  },
};

/**
 * Feeds the runner bytes that do not match what it writes: a short count for `short.txt` (so it
 * must be read back), bytes for a file it never leaves behind, and the right bytes for `ok.txt`.
 */
const feedWrong: Stage = {
  name: "feedWrong",
  summary: "feeds mismatched bytes",
  options: z.strictObject({}),
  async run(ctx) {
    const enc = new TextEncoder();
    await Deno.writeTextFile(join(ctx.outDir, "short.txt"), "abcdef");
    await ctx.onOutputBytes?.("short.txt", enc.encode("abc"));
    await ctx.onOutputBytes?.("gone.txt", enc.encode("xyz"));
    await Deno.writeTextFile(join(ctx.outDir, "ok.txt"), "12345");
    await ctx.onOutputBytes?.(join(ctx.outDir, "ok.txt"), enc.encode("12345"));
    ctx.report("feedWrong", {
      files: [{ path: "short.txt", bytes: 6 }, { path: "ok.txt", bytes: 5 }],
    });
  },
};

/** Rewrites `ok.txt` with other bytes of the same size, without feeding them. */
const rewrite: Stage = {
  name: "rewrite",
  summary: "rewrites ok.txt",
  options: z.strictObject({}),
  async run(ctx) {
    await new Promise((r) => setTimeout(r, 20)); // a later mtime
    await Deno.writeTextFile(join(ctx.outDir, "ok.txt"), "67890");
  },
};

async function run(
  dir: string,
  name: string,
  writeModel: Record<string, unknown>,
  after: Array<{ use: string }> = [],
) {
  const modelDir = join(dir, "base");
  await Deno.mkdir(modelDir, { recursive: true });
  await Deno.writeTextFile(join(modelDir, "config.json"), JSON.stringify(CONFIG));
  await Deno.writeTextFile(join(modelDir, "generation_config.json"), '{"eos_token_id": 3}');
  const events: PipelineEvent[] = [];
  const result = await runPipeline({
    output: name,
    stages: [
      { use: "loadModel", modelDir },
      { use: "writeModel", ...writeModel },
      { use: "feedWrong" },
      ...after,
    ],
  }, {
    baseDir: dir,
    env: {},
    stages: { loadModel, writeModel: writeModelStage, feedWrong, rewrite },
    onEvent: (e) => events.push(e),
  });
  const log = events.find((e) => e.type === "log" && e.message.startsWith("output hashes"));
  assert.ok(log?.type === "log", "the runner logs how it hashed the outputs");
  const data = log.data as { streamed: string[]; reread: number };
  for (const f of result.manifest.files) {
    assert.deepEqual(
      { size: f.size, sha256: f.sha256 },
      await hashFile(join(result.output, f.path)),
      f.path,
    );
  }
  assert.equal((await verifyCheckpoint(result.output)).ok, true);
  return { files: result.manifest.files.map((f) => f.path), ...data };
}

Deno.test("`runPipeline()` hashes safetensors shards while writeModel writes them, as a second pass would", async () => {
  await withTempDir(async (dir) => {
    const got = await run(dir, "st", { maxShardSize: "20KB" });
    const shards = got.files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
    assert.ok(shards.length >= 3, got.files.join(","));
    assert.deepEqual(got.streamed.sort(), [...shards, "ok.txt"].sort());
    // the index, config.json, generation_config.json and short.txt were read back
    assert.equal(got.reread, got.files.length - got.streamed.length);
    assert.ok(got.files.includes("short.txt") && !got.files.includes("gone.txt"));
  });
});

Deno.test("`runPipeline()` hashes pytorch_model.bin while writeModel writes it, as a second pass would", async () => {
  await withTempDir(async (dir) => {
    const got = await run(dir, "bin", { format: "bin" }, [{ use: "rewrite" }]);
    // ok.txt was fed, then rewritten by a later stage: its streamed digest is not used
    assert.deepEqual(got.streamed, ["pytorch_model.bin"]);
    assert.equal(got.reread, got.files.length - 1);
  });
});

Deno.test("OutputHasher.hash() reuses the hash taken when the stage ended while the file's size, mtime and inode stay the same", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "a.bin");
    const mtime = new Date(1_700_000_000_000);
    await Deno.writeFile(path, new Uint8Array([1, 2, 3]));
    await Deno.utime(path, mtime, mtime);
    const hasher = new OutputHasher(dir, new AbortController().signal);
    try {
      await hasher.stageEnded();
      const first = await hasher.hash(path);
      assert.deepEqual(first, await hashFile(path));
      // Rewritten in place with other bytes of the same length and the same mtime: its key is
      // unchanged, so the hash taken at the stage's end stands (the manifest trusts that key).
      await Deno.writeFile(path, new Uint8Array([4, 5, 6]));
      await Deno.utime(path, mtime, mtime);
      assert.notDeepEqual(await hashFile(path), first);
      assert.deepEqual(await hasher.hash(path), first);
    } finally {
      hasher.close();
    }
  });
});
