import assert from "node:assert/strict";
import { join } from "node:path";
import { builtinStages, type RawConfig, validateConfig } from "../../../pipelines/config.ts";
import { runPipeline } from "../../../pipelines/run.ts";
import { REPO_ROOT } from "../../_helpers/peer.ts";
import { withTempDir } from "../../_helpers/tmp.ts";

const CASE = join(REPO_ROOT, "tests", "fixtures", "lora", "linear_bf16");

async function run(stages: RawConfig["stages"], output: string) {
  const config = validateConfig({ output, stages }, {
    stages: await builtinStages(),
    source: "test",
    env: {},
  });
  return await runPipeline(config, { backend: "cpu" });
}

const gather = { use: "gatherShards", from: join(CASE, "base.safetensors") };
const merge = { use: "mergeLora", adapter: join(CASE, "adapter") };

Deno.test("writeReport after writeModel writes ckpt-report.html with every merged module, listed in the manifest", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    const result = await run([gather, merge, { use: "writeModel" }, { use: "writeReport" }], out);
    assert.ok(result.manifest.files.some((f) => f.path === "ckpt-report.html"));
    const stage = result.manifest.stages.find((s) => s.name === "writeReport")!;
    assert.equal(stage.report.measured, stage.report.modules);
    assert.ok((stage.report.modules as number) > 0);
    const html = await Deno.readTextFile(join(out, "ckpt-report.html"));
    const changes = result.manifest.stages.find((s) => s.name === "mergeLora")!.report
      .moduleChanges as { module: string }[];
    for (const c of changes) assert.ok(html.includes(`<td data-value="${c.module}">`), c.module);
  });
});

Deno.test("writeReport before writeModel fails with REPORT_INCOMPLETE and writes no output", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    await assert.rejects(
      run([gather, merge, { use: "writeReport" }, { use: "writeModel" }], out),
      (e: Error & { code?: string }) => e.code === "REPORT_INCOMPLETE",
    );
    await assert.rejects(Deno.stat(out));
  });
});

Deno.test("writeReport without a merge fails with REPORT_NO_MERGE", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(
      run([gather, { use: "writeModel" }, { use: "writeReport" }], join(dir, "out")),
      (e: Error & { code?: string }) => e.code === "REPORT_NO_MERGE",
    );
  });
});
