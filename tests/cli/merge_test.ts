import assert from "node:assert/strict";
import { join } from "node:path";
import { mergeConfig } from "../../cli/merge.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt } from "./_cli.ts";

Deno.test("`mergeConfig()` builds the plain merge, with the tokenizer only when there is one", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "base"));
    await Deno.mkdir(join(dir, "adapter"));
    const flags = {
      base: join(dir, "base"),
      adapter: join(dir, "adapter"),
      out: join(dir, "out"),
      format: "bin",
      maxShardSize: "2GB",
    };
    const plain = await mergeConfig(flags);
    assert.deepEqual(plain.stages.map((s) => s.use), ["gatherShards", "mergeLora", "writeModel"]);
    assert.deepEqual(plain.stages[2], { use: "writeModel", format: "bin", maxShardSize: "2GB" });
    await Deno.writeTextFile(join(dir, "base", "tokenizer.json"), "{}");
    const withTok = await mergeConfig(flags);
    assert.equal(withTok.stages[3]?.use, "writeTokenizer");
    assert.equal(withTok.output, join(dir, "out"));
  });
});

Deno.test("`ckpt merge` prints help and exits 2 without its required flags", async () => {
  const help = await ckpt(["merge", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--adapter/);
  const bad = await ckpt(["merge", "--base", "/tmp"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /missing --adapter/);
});

Deno.test("`ckpt merge --tied-embeddings` passes untie/refuse to mergeLora and rejects other values", async () => {
  await withTempDir(async (dir) => {
    const flags = { base: join(dir, "b"), adapter: join(dir, "a"), out: join(dir, "o") };
    const refuse = await mergeConfig({ ...flags, tiedEmbeddings: "refuse" });
    assert.deepEqual(refuse.stages[1], {
      use: "mergeLora",
      adapter: flags.adapter,
      tiedEmbeddings: "refuse",
    });
    assert.deepEqual(Object.keys((await mergeConfig(flags)).stages[1]!), ["use", "adapter"]);
  });
  const bad = await ckpt([
    "merge",
    "--base",
    "b",
    "--adapter",
    "a",
    "--out",
    "o",
    "--tied-embeddings",
    "drop",
  ]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--tied-embeddings must be untie or refuse/);
  const help = await ckpt(["merge", "--help"]);
  assert.match(help.stdout, /--tied-embeddings <t>/);
});
