import assert from "node:assert/strict";
import { join } from "node:path";
import { mergeConfig } from "../../cli/merge.ts";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { openSafetensors } from "../../formats/safetensors.ts";
import { verifyCheckpoint } from "../../pipelines/verify.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt, mergeArgs } from "./_cli.ts";

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

Deno.test("`ckpt merge` refuses LoRA tensors its adapter's config would not adapt, or skips them with --untargeted skip", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), {
      size: { hidden: 16, intermediate: 32, layers: 2, heads: 2, kvHeads: 1, vocab: 64, rank: 2 },
    });
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      await Deno.remove(join(run.base, f));
    }
    // the adapter holds q/k/v/o/gate/up/down LoRA tensors; its config now adapts q_proj of layer 1
    const cfgPath = join(run.adapter, "adapter_config.json");
    const cfg = JSON.parse(await Deno.readTextFile(cfgPath));
    await Deno.writeTextFile(
      cfgPath,
      JSON.stringify({ ...cfg, target_modules: ["q_proj"], layers_to_transform: [1] }),
    );
    const refused = await ckpt(mergeArgs(run, join(dir, "refused")));
    assert.equal(refused.code, 1, refused.stderr);
    // in preflight: before any weights are read
    assert.match(refused.stderr, /"code":"LORA_UNTARGETED".* 13 modules /);
    assert.match(refused.stderr, /model\.layers\.0\.self_attn\.q_proj \(layers_to_transform\)/);
    assert.doesNotMatch(refused.stderr, /"stage-start"/);
    assert.match(refused.stderr, /model\.layers\.0\.self_attn\.k_proj \(target_modules\)/);
    await assert.rejects(Deno.stat(join(dir, "refused")));

    const out = join(dir, "skipped");
    const skipped = await ckpt(mergeArgs(run, out, "--untargeted", "skip"));
    assert.equal(skipped.code, 0, skipped.stderr);
    await using base = await openSafetensors(join(run.base, "model.safetensors"));
    await using merged = await openSafetensors(join(out, "model.safetensors"));
    const changed: string[] = [];
    for (const [name, ref] of base) {
      const a = await ref.read();
      const b = await merged.require(name).read();
      if (a.length !== b.length || a.some((x, i) => x !== b[i])) changed.push(name);
    }
    assert.deepEqual(changed, ["model.layers.1.self_attn.q_proj.weight"]);
    const manifest = JSON.parse(await Deno.readTextFile(join(out, "ckpt-manifest.json")));
    const report = manifest.stages.find((s: { name: string }) => s.name === "mergeLora").report;
    assert.equal(report.untargeted.length, 13);
    const v = await verifyCheckpoint(out, { base: run.base, adapter: run.adapter });
    assert.ok(v.ok, JSON.stringify(v.checks.filter((c) => !c.ok)));

    const bad = await ckpt(mergeArgs(run, join(dir, "bad"), "--untargeted", "ignore"));
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--untargeted must be refuse or skip/);
  });
});
