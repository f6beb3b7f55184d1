/**
 * Inputs that disagree, run through the real stages: each gets its coded error before the output
 * appears, and the failed run leaves nothing behind (no output, no staging folder).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DEMO_SHAPES, makeDemoRun } from "../../examples/_demo_run.ts";
import { isCkptError } from "../../errors.ts";
import { loadPreset } from "../../pipelines/presets.ts";
import { runPipeline } from "../../pipelines/run.ts";
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
