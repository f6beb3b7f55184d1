/**
 * Inputs that disagree, run through the real stages: each gets its coded error before the output
 * appears, and the failed run leaves nothing behind (no output, no staging folder).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DEMO_SHAPES, makeDemoRun } from "../../examples/_demo_run.ts";
import { isCkptError } from "../../errors.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { loadPreset } from "../../pipelines/presets.ts";
import { runPipeline } from "../../pipelines/run.ts";
import type { PipelineEvent } from "../../pipelines/stage.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

async function failsCleanly(
  preset: string,
  vars: Record<string, string>,
  parent: string,
  accept: (code: string) => boolean,
): Promise<string> {
  const before = await names(parent);
  let code = "";
  await assert.rejects(
    async () => {
      const config = await loadPreset(preset, { vars, env: {} });
      await runPipeline(config, { backend: "cpu" });
    },
    (e: unknown) => {
      assert.ok(isCkptError(e), String(e));
      code = e.code;
      return accept(e.code);
    },
  );
  assert.deepEqual(await names(parent), before, "the failed run left something behind");
  return code;
}

Deno.test("bad inputs fail with a code and leave no trace", async (t) => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    const out = join(dir, "out");

    await t.step("a missing input", async () => {
      const code = await failsCleanly(
        "ppo-final",
        { run: run.dir, out, vhead: join(dir, "no-such-v_head.safetensors") },
        dir,
        (c) => c === "INPUT_MISSING" || c === "FILE_OPEN",
      );
      assert.ok(code);
    });

    await t.step("a tokenizer larger than the embeddings", async () => {
      const small = await makeDemoRun(join(dir, "small-vocab"), {
        size: { ...DEMO_SHAPES.tiny, vocab: 1000 },
      });
      await failsCleanly(
        "halos-final",
        { run: small.dir, out },
        dir,
        (c) => c === "TOKENIZER_VOCAB",
      );
    });

    await t.step("an adapter for another architecture", async () => {
      const other = await makeDemoRun(join(dir, "other"), {
        size: { ...DEMO_SHAPES.tiny, hidden: 48, intermediate: 96 },
      });
      const code = await failsCleanly(
        "halos-final",
        { run: run.dir, adapter: other.adapter, out },
        dir,
        (c) => c.startsWith("LORA_") || c === "MERGE_SHAPE",
      );
      assert.ok(code);
    });

    await t.step("an output inside an input folder", async () => {
      await failsCleanly(
        "halos-final",
        { run: run.dir, out: join(run.base, "FINAL") },
        dir,
        (c) => c === "OUTPUT_INSIDE_INPUT",
      );
    });

    await t.step("an output that exists", async () => {
      await Deno.mkdir(out);
      await failsCleanly("halos-final", { run: run.dir, out }, dir, (c) => c === "OUTPUT_EXISTS");
      assert.deepEqual(await names(out), []);
    });
  });
});

/**
 * Runs a preset that must fail in a stage's preflight: the coded error comes before any stage
 * starts (no `stage-start` event at all), the error event names the stage, and nothing is left.
 * `deferred`: the failing check is one the preflight hands the runner (`ctx.defer`: loading the
 * tokenizer, rendering its template, loading the optimizer and scheduler), which the stages do
 * not wait for: a stage may have started.
 */
async function failsInPreflight(
  preset: string,
  vars: Record<string, string>,
  parent: string,
  code: string,
  stage: string,
  options: { dryRun?: boolean; deferred?: boolean } = {},
): Promise<void> {
  const before = await names(parent);
  const events: PipelineEvent[] = [];
  await assert.rejects(
    async () => {
      const config = await loadPreset(preset, { vars, env: {} });
      const { deferred: _, ...run } = options;
      await runPipeline(config, { backend: "cpu", onEvent: (e) => events.push(e), ...run });
    },
    (e: unknown) => {
      assert.ok(isCkptError(e), String(e));
      assert.equal(e.code, code, e.message);
      return true;
    },
  );
  if (!options.deferred) {
    assert.deepEqual(
      events.filter((e) => e.type === "stage-start"),
      [],
      "a stage started before the preflight failure",
    );
  }
  const error = events.find((e) => e.type === "pipeline-error");
  assert.deepEqual(error && { code: error.code, stage: error.stage }, { code, stage });
  assert.deepEqual(await names(parent), before, "the failed run left something behind");
}

Deno.test("bad inputs of later stages fail in preflight, before the first stage starts", async (t) => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    const out = join(dir, "out");
    const missing = join(dir, "does-not-exist");

    await t.step("a missing value head (ppo-final)", async () => {
      await failsInPreflight(
        "ppo-final",
        { run: run.dir, out, vhead: join(missing, "v_head.safetensors") },
        dir,
        "INPUT_MISSING",
        "writeValueHead",
      );
    });

    await t.step("a value head file without value-head tensors", async () => {
      // A valid safetensors file (the adapter's) that holds nothing under the prefix.
      const events: PipelineEvent[] = [];
      await assert.rejects(
        () =>
          runPipeline({
            output: out,
            stages: [
              { use: "gatherShards", from: run.base },
              { use: "writeModel" },
              {
                use: "writeValueHead",
                from: join(run.adapter, "adapter_model.safetensors"),
                prefix: "v_head.",
              },
            ],
          }, { backend: "cpu", onEvent: (e) => events.push(e) }),
        (e: unknown) => isCkptError(e) && e.code === "VALUE_HEAD_MISSING",
      );
      assert.deepEqual(events.filter((e) => e.type === "stage-start"), []);
      assert.deepEqual(await names(dir), ["run"]);
    });

    await t.step("a missing optimizer (halos-final)", async () => {
      const state = join(dir, "state-no-optim");
      await Deno.mkdir(state);
      await Deno.copyFile(join(run.state, "scheduler.pt"), join(state, "scheduler.pt"));
      await failsInPreflight(
        "halos-final",
        { run: run.dir, out, state },
        dir,
        "INPUT_MISSING",
        "writeOptim",
      );
      await Deno.remove(state, { recursive: true });
    });

    await t.step("an optimizer that is not a torch file", async () => {
      const state = join(dir, "state-bad-optim");
      await Deno.mkdir(state);
      await Deno.writeTextFile(join(state, "optimizer.pt"), "not a torch archive");
      await Deno.copyFile(join(run.state, "scheduler.pt"), join(state, "scheduler.pt"));
      await failsInPreflight(
        "halos-final",
        { run: run.dir, out, state },
        dir,
        "TORCH_NOT_TORCH",
        "writeOptim",
        { deferred: true },
      );
      await Deno.remove(state, { recursive: true });
    });

    await t.step("a missing metrics input", async () => {
      await failsInPreflight(
        "halos-final",
        { run: run.dir, out, metrics: join(missing, "eval.json") },
        dir,
        "INPUT_MISSING",
        "writeMetrics",
      );
    });

    await t.step("metrics without a counter", async () => {
      const metrics = join(dir, "eval-no-counter.json");
      await Deno.writeTextFile(metrics, JSON.stringify({ "loss/eval": 0.5 }));
      await failsInPreflight(
        "halos-final",
        { run: run.dir, out, metrics },
        dir,
        "METRICS_COUNTER",
        "writeMetrics",
      );
      // ...also in a dry run, which runs the same preflights.
      await failsInPreflight(
        "halos-final",
        { run: run.dir, out, metrics },
        dir,
        "METRICS_COUNTER",
        "writeMetrics",
        { dryRun: true },
      );
      await Deno.remove(metrics);
    });

    await t.step("a missing adapter", async () => {
      await failsInPreflight(
        "halos-final",
        { run: run.dir, out, adapter: join(missing, "adapter") },
        dir,
        "PEFT_ADAPTER_MISSING",
        "mergeLora",
      );
    });

    await t.step("an adapter-only intermediate save with a missing adapter", async () => {
      await failsInPreflight(
        "halos-intermediate",
        { run: run.dir, out, adapter: join(missing, "adapter") },
        dir,
        "PEFT_ADAPTER_MISSING",
        "writeModel",
      );
    });

    // A copy of the base whose tokenizer is broken as `spoil` says (ppo-final takes the tokenizer
    // from the adapter's folder, which has none, then from the base's: no `from` is named).
    const spoiltBase = async (name: string, spoil: (dir: string) => Promise<void>) => {
      const copy = join(dir, name);
      await Deno.mkdir(copy);
      for await (const e of Deno.readDir(run.base)) {
        await Deno.copyFile(join(run.base, e.name), join(copy, e.name));
      }
      await spoil(copy);
      return copy;
    };

    await t.step("a tokenizer.json that is not JSON, found beside the base", async () => {
      const base = await spoiltBase(
        "garbage-tokenizer",
        (d) => Deno.writeTextFile(join(d, "tokenizer.json"), "\u0000garbage{"),
      );
      await failsInPreflight(
        "ppo-final",
        { run: run.dir, out, base },
        dir,
        "JSON_PARSE",
        "writeTokenizer",
      );
      await Deno.remove(base, { recursive: true });
    });

    await t.step("a tokenizer.json that is JSON but no tokenizer", async () => {
      const base = await spoiltBase(
        "bogus-tokenizer",
        (d) => Deno.writeTextFile(join(d, "tokenizer.json"), '{"model": {"type": "NoSuchModel"}}'),
      );
      await failsInPreflight(
        "ppo-final",
        { run: run.dir, out, base },
        dir,
        "TOKENIZER_INVALID",
        "writeTokenizer",
        { deferred: true },
      );
      await Deno.remove(base, { recursive: true });
    });

    await t.step("a chat template that does not render", async () => {
      const base = await spoiltBase("bad-template", async (d) => {
        const cfg = JSON.parse(await Deno.readTextFile(join(d, "tokenizer_config.json")));
        cfg.chat_template = "{% for m in messages %}{{ m.content }";
        await Deno.writeTextFile(join(d, "tokenizer_config.json"), JSON.stringify(cfg));
      });
      await failsInPreflight(
        "ppo-final",
        { run: run.dir, out, base },
        dir,
        "TOKENIZER_TEMPLATE",
        "writeTokenizer",
        { deferred: true },
      );
      await Deno.remove(base, { recursive: true });
    });

    await t.step("a value head of the wrong width for the model's hidden_size", async () => {
      const hidden = JSON.parse(await Deno.readTextFile(join(run.base, "config.json"))).hidden_size;
      const vhead = join(dir, "wide_v_head.safetensors");
      await writeSafetensors(
        vhead,
        new StateDict([
          [
            "summary.weight",
            tensorFromBytes("F32", [1, hidden + 1], new Uint8Array(4 * (hidden + 1))),
          ],
          ["summary.bias", tensorFromBytes("F32", [1], new Uint8Array(4))],
        ]),
      );
      await failsInPreflight(
        "ppo-final",
        { run: run.dir, out, vhead },
        dir,
        "VALUE_HEAD_MISMATCH",
        "writeValueHead",
      );
      await Deno.remove(vhead);
    });

    await t.step("a missing DCP model or optimizer folder (halos-final-fsdp)", async () => {
      const fix = join(REPO_ROOT, "tests", "fixtures", "dcp", "lora_w2");
      const fsdp = {
        run: run.dir,
        out,
        model: join(fix, "model"),
        optimizer: join(fix, "optim"),
        scheduler: join(run.state, "scheduler.pt"),
        lora_r: "2",
        lora_alpha: "4",
      };
      await failsInPreflight(
        "halos-final-fsdp",
        { ...fsdp, model: join(missing, "model") },
        dir,
        "INPUT_MISSING",
        "gatherShards",
      );
      await failsInPreflight(
        "halos-final-fsdp",
        { ...fsdp, optimizer: join(missing, "optim") },
        dir,
        "INPUT_MISSING",
        "writeOptim",
      );
      // The base folder must hold a tokenizer: it is named explicitly, so preflight checks it.
      const bare = join(dir, "bare-base");
      await Deno.mkdir(bare);
      await Deno.copyFile(join(run.base, "config.json"), join(bare, "config.json"));
      await failsInPreflight(
        "halos-final-fsdp",
        { ...fsdp, base: bare },
        dir,
        "TOKENIZER_MISSING",
        "writeTokenizer",
      );
      await Deno.remove(bare, { recursive: true });
    });
  });
});
