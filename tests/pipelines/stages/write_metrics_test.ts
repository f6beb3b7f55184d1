import { parseStageOptions } from "../../../pipelines/stage.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { buildMetrics, writeMetricsStage } from "../../../pipelines/stages/write_metrics.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { fakeContext, listFiles } from "../_context.ts";

Deno.test("`writeMetrics` writes eval results plus counter as Python's json.dump does", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      join(dir, "eval.json"),
      '{"metadata": {"seed": 1}, "results": {"rewards/chosen": 1.0, "loss": 1e-05, "n": 3, "é": NaN}}',
    );
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir });
    const opts = parseStageOptions(writeMetricsStage, {
      from: "eval.json",
      field: "results",
      counter: "64000",
    });
    await writeMetricsStage.run(ctx, opts);
    assert.equal(
      await Deno.readTextFile(join(out, "metrics.json")),
      '{"rewards/chosen": 1.0, "loss": 1e-05, "n": 3, "\\u00e9": NaN, "counter": 64000}',
    );
    assert.deepEqual(ctx.inputs, [{ path: join(dir, "eval.json"), role: "metrics" }]);
    assert.equal(ctx.reports[0]?.data.counter, 64000);
  });
});

Deno.test("`buildMetrics()` takes the last JSONL line or a chosen step, counter from the input", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "eval.jsonl");
    await Deno.writeTextFile(
      p,
      '{"counter": 100, "loss": 0.9}\n{"counter": 200, "loss": 0.8}\n{"counter": 300, "loss": 0.7}\n',
    );
    assert.equal((await buildMetrics(p, {})).text, '{"counter": 300, "loss": 0.7}');
    const at = await buildMetrics(p, { step: 200 });
    assert.equal(at.text, '{"counter": 200, "loss": 0.8}');
    assert.equal(at.counter, 200);
    await assert.rejects(buildMetrics(p, { step: 250 }), (e) => isCkptError(e, "METRICS_STEP"));
  });
});

Deno.test("`buildMetrics()` refuses a missing counter and a missing input before writing", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "eval.json");
    await Deno.writeTextFile(p, '{"loss": 0.5}');
    await assert.rejects(buildMetrics(p, {}), (e) => isCkptError(e, "METRICS_COUNTER"));
    await assert.rejects(
      buildMetrics(join(dir, "nope.json"), { counter: 1 }),
      (e) => isCkptError(e, "INPUT_MISSING"),
    );
    await Deno.writeTextFile(p, '{"loss": 0.5,');
    await assert.rejects(buildMetrics(p, { counter: 1 }), (e) => isCkptError(e, "JSON_PARSE"));
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir });
    await assert.rejects(
      writeMetricsStage.run(ctx, parseStageOptions(writeMetricsStage, { from: "eval.json" })),
      (e) => isCkptError(e, "JSON_PARSE"),
    );
    assert.deepEqual(await listFiles(out), []);
  });
});

Deno.test("`writeMetrics` options reject unknown keys and writes nothing on a dry run", async () => {
  assert.equal(writeMetricsStage.options.safeParse({ from: "a", frm: "b" }).success, false);
  await withTempDir(async (dir) => {
    const ctx = fakeContext(dir, { dryRun: true });
    await writeMetricsStage.run(
      ctx,
      parseStageOptions(writeMetricsStage, { metrics: { a: 1 }, counter: 5 }),
    );
    assert.deepEqual(await listFiles(dir), []);
    assert.deepEqual(ctx.reports[0]?.data.files, [{
      path: "metrics.json",
      bytes: '{"a": 1, "counter": 5}'.length,
    }]);
  });
});
