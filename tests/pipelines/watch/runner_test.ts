import assert from "node:assert/strict";
import { join } from "node:path";
import { loadConfig } from "../../../pipelines/config.ts";
import { parseWatchSettings } from "../../../pipelines/watch/config.ts";
import {
  checkpointVerifier,
  pipelineRunner,
  readWatchSettings,
} from "../../../pipelines/watch/runner.ts";
import { watchOnce } from "../../../pipelines/watch/watch.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { age, halosCheckpoint, writeTree } from "./_files.ts";

const EXAMPLE = new URL("../../../examples/cron/export.jsonc", import.meta.url).pathname;

Deno.test("examples/cron/export.jsonc loads as a pipeline and its watch block parses", async () => {
  const settings = await readWatchSettings(EXAMPLE);
  assert.deepEqual(settings.pattern, ["step-*", "FINAL"]);
  assert.equal(settings.keep, 3);
  const cfg = await loadConfig(EXAMPLE, {
    vars: {
      step: "64",
      name: "step-64",
      run: "/runs/x",
      checkpoint: "/runs/x/step-64",
      counter: "64",
    },
    env: {},
  });
  assert.equal(cfg.output, "/runs/x/exports/step-64");
  assert.deepEqual(cfg.stages.map((s) => s.use), [
    "gatherShards",
    "writeModel",
    "writeTokenizer",
    "writeOptim",
    "writeMetrics",
  ]);
});

Deno.test("`readWatchSettings()` applies CLI overrides and reports bad blocks", async () => {
  await withTempDir(async (dir) => {
    const cfg = join(dir, "c.jsonc");
    await Deno.writeTextFile(cfg, `{ "output": "x", "stages": [], "watch": { "keep": 2, } }`);
    assert.equal((await readWatchSettings(cfg, { keep: 5 })).keep, 5);
    await Deno.writeTextFile(cfg, `{ "output": "x", "stages": [], "watch": { "kep": 2 } }`);
    await assert.rejects(
      readWatchSettings(cfg),
      (e: unknown) => (e as { code?: string }).code === "WATCH_CONFIG",
    );
    await assert.rejects(
      readWatchSettings(join(dir, "none.jsonc")),
      (e: unknown) => (e as { code?: string }).code === "CONFIG_READ",
    );
  });
});

Deno.test("`pipelineRunner()` + `checkpointVerifier()` export and verify real weights", async () => {
  await withTempDir(async (root) => {
    const runs = join(root, "runs");
    await writeTree(join(runs, "step-64"), halosCheckpoint(64));
    await age(runs, 120);
    const runner = pipelineRunner(
      {
        output: "${run}/../exports/${name}",
        stages: [
          { use: "gatherShards", from: "${checkpoint}" },
          { use: "writeModel", dtype: "bfloat16" },
          { use: "writeMetrics", from: "${checkpoint}/metrics.json" },
        ],
      },
      { env: {}, baseDir: root },
    );
    const verify = checkpointVerifier();
    const tick = await watchOnce({
      runsDir: runs,
      settings: parseWatchSettings({}),
      runner,
      verify,
    });
    assert.deepEqual(tick.exported, ["step-64"]);
    const out = join(root, "exports", "step-64");
    const names = (await Array.fromAsync(Deno.readDir(out))).map((e) => e.name).sort();
    assert.deepEqual(names, [
      "ckpt-manifest.json",
      "config.json",
      "metrics.json",
      "model.safetensors",
    ]);
    // A flipped byte makes the verifier fail with WATCH_VERIFY_FILE.
    const bytes = await Deno.readFile(join(out, "metrics.json"));
    bytes[1] = bytes[1]! ^ 1;
    await Deno.writeFile(join(out, "metrics.json"), bytes);
    await assert.rejects(
      verify(out, new AbortController().signal),
      (e: unknown) => (e as { code?: string }).code === "WATCH_VERIFY_FILE",
    );
  });
});
