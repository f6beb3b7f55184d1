/**
 * Tied embeddings through the plain-merge pipeline (`ckpt merge`'s config, run by `runPipeline`):
 * an embedding LoRA on a tied model exports what was trained (embed_tokens merged, lm_head the
 * original weight, `tie_word_embeddings: false`), with a warning in the log and in the manifest's
 * merge report; `tiedEmbeddings: "refuse"` fails with `LORA_TIED_EMBEDDINGS` and writes nothing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { mergeConfig } from "../../cli/merge.ts";
import { isCkptError } from "../../errors.ts";
import { decodeF32 } from "../../formats/dtype.ts";
import { openSafetensors, writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict } from "../../formats/state_dict.ts";
import { openTorchStateDict } from "../../formats/torch/state_dict.ts";
import { builtinStages, validateConfig } from "../../pipelines/config.ts";
import { runPipeline } from "../../pipelines/run.ts";
import type { PipelineEvent } from "../../pipelines/stage.ts";
import { verifyCheckpoint } from "../../pipelines/verify.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { seq, t } from "../merge/_lora_helpers.ts";

const V = 6, D = 4, R = 2;
const EMB = "model.embed_tokens.weight";
const P = "base_model.model.";

/** A tied model folder: the embedding once, config.json saying (or not saying) it is tied. */
async function tiedModel(dir: string, tieFlag: boolean | undefined): Promise<string> {
  const base = join(dir, "base");
  await Deno.mkdir(base, { recursive: true });
  await writeSafetensors(
    join(base, "model.safetensors"),
    new StateDict([
      [EMB, t("BF16", [V, D], seq(V * D, 1, 1))],
      ["model.layers.0.q_proj.weight", t("BF16", [D, D], seq(D * D, 2, 1))],
      ["model.norm.weight", t("BF16", [D], [1, 1, 1, 1])],
    ]),
  );
  const config: Record<string, unknown> = {
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
    hidden_size: D,
    vocab_size: V,
    torch_dtype: "bfloat16",
  };
  if (tieFlag !== undefined) config.tie_word_embeddings = tieFlag;
  await Deno.writeTextFile(join(base, "config.json"), JSON.stringify(config, null, 2) + "\n");
  return base;
}

/** A PEFT adapter folder with a LoRA on `module` (embed_tokens or lm_head), as PEFT saves it. */
async function loraOn(dir: string, module: "embed_tokens" | "lm_head"): Promise<string> {
  const adapter = join(dir, `adapter-${module}`);
  await Deno.mkdir(adapter, { recursive: true });
  const m = module === "embed_tokens" ? "model.embed_tokens" : "lm_head";
  const tensors = module === "embed_tokens"
    ? new StateDict([
      [`${P}${m}.lora_embedding_A`, t("F32", [R, V], seq(R * V, 3, 1))],
      [`${P}${m}.lora_embedding_B`, t("F32", [D, R], seq(D * R, 4, 1))],
    ])
    : new StateDict([
      [`${P}${m}.lora_A.weight`, t("F32", [R, D], seq(R * D, 5, 1))],
      [`${P}${m}.lora_B.weight`, t("F32", [V, R], seq(V * R, 6, 1))],
    ]);
  await writeSafetensors(join(adapter, "adapter_model.safetensors"), tensors);
  await Deno.writeTextFile(
    join(adapter, "adapter_config.json"),
    JSON.stringify({ peft_type: "LORA", r: R, lora_alpha: 4, target_modules: [module] }),
  );
  return adapter;
}

async function runMerge(
  flags: Parameters<typeof mergeConfig>[0],
): Promise<{ events: PipelineEvent[]; manifest: Record<string, unknown> }> {
  const config = validateConfig(await mergeConfig(flags), {
    stages: await builtinStages(),
    source: "test",
    env: {},
  });
  const events: PipelineEvent[] = [];
  const result = await runPipeline(config, { backend: "cpu", onEvent: (e) => events.push(e) });
  return { events, manifest: result.manifest as unknown as Record<string, unknown> };
}

async function tensors(path: string): Promise<Map<string, number[]>> {
  const sd = path.endsWith(".bin") ? await openTorchStateDict(path) : await openSafetensors(path);
  const out = new Map<string, number[]>();
  for (const [k, r] of sd) out.set(k, [...decodeF32(r.dtype, await r.read())]);
  await sd.close();
  return out;
}

Deno.test("an embedding LoRA on a tied model is exported untied, with a warning in the log and the manifest", async () => {
  await withTempDir(async (dir) => {
    const base = await tiedModel(dir, true);
    const adapter = await loraOn(dir, "embed_tokens");
    const out = join(dir, "out");
    const { events, manifest } = await runMerge({ base, adapter, out });
    const before = await tensors(join(base, "model.safetensors"));
    const after = await tensors(join(out, "model.safetensors"));
    assert.deepEqual([...after.keys()].sort(), [...before.keys(), "lm_head.weight"].sort());
    assert.deepEqual(after.get("lm_head.weight"), before.get(EMB), "lm_head is the original");
    assert.notDeepEqual(after.get(EMB), before.get(EMB), "embed_tokens is merged");
    const config = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
    assert.equal(config.tie_word_embeddings, false);
    const warn = events.find((e) =>
      e.type === "log" && e.level === "warn" && /tie_word_embeddings false/.test(e.message)
    );
    assert.ok(warn, "a warning is logged");
    const stages = manifest.stages as { name: string; report: Record<string, unknown> }[];
    const merge = stages.find((s) => s.name === "mergeLora")!.report;
    assert.deepEqual(
      [
        (merge.tiedEmbeddings as Record<string, string>).inputChange,
        (merge.tiedEmbeddings as Record<string, string>).outputChange,
      ],
      ["lora", "none"],
    );
    assert.equal((merge.warnings as string[]).length, 1);
  });
});

Deno.test("an lm_head LoRA on a tied model (no tie flag in config.json) exports lm_head merged, as .bin too", async () => {
  await withTempDir(async (dir) => {
    const base = await tiedModel(dir, undefined);
    const adapter = await loraOn(dir, "lm_head");
    const before = await tensors(join(base, "model.safetensors"));
    for (const format of ["safetensors", "bin"] as const) {
      const out = join(dir, `out-${format}`);
      await runMerge({ base, adapter, out, format });
      const after = await tensors(
        join(out, format === "bin" ? "pytorch_model.bin" : "model.safetensors"),
      );
      assert.deepEqual(after.get(EMB), before.get(EMB), `${format}: embed_tokens is the original`);
      assert.notDeepEqual(after.get("lm_head.weight"), before.get(EMB));
      const config = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
      assert.equal(config.tie_word_embeddings, false, format);
      if (format === "safetensors") {
        // ckpt verify recomputes the head's rows from the tied base's embedding
        const v = await verifyCheckpoint(out, { base, adapter });
        const merge = v.checks.filter((c) => c.kind === "merge");
        assert.ok(merge.length === 1 && merge[0]!.ok, JSON.stringify(merge));
      }
    }
  });
});

Deno.test('`tiedEmbeddings: "refuse"` (ckpt merge --tied-embeddings refuse) fails with LORA_TIED_EMBEDDINGS and leaves nothing', async () => {
  await withTempDir(async (dir) => {
    const base = await tiedModel(dir, true);
    const adapter = await loraOn(dir, "embed_tokens");
    const out = join(dir, "out");
    await assert.rejects(
      runMerge({ base, adapter, out, tiedEmbeddings: "refuse" }),
      (e) => isCkptError(e, "LORA_TIED_EMBEDDINGS"),
    );
    await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
    // an untied model is not affected by the option
    const untied = join(dir, "untied");
    await Deno.mkdir(untied);
    const sd = await openSafetensors(join(base, "model.safetensors"));
    await writeSafetensors(
      join(untied, "model.safetensors"),
      new StateDict([...sd, ["lm_head.weight", t("BF16", [V, D], seq(V * D, 9, 1))]]),
    );
    await sd.close();
    await runMerge({ base: untied, adapter, out, tiedEmbeddings: "refuse" });
  });
});
