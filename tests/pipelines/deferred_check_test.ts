/**
 * Checks a preflight hands the runner (`ctx.defer`, `pipelines/_stage_loop.ts`): the stages run
 * while they do; a failed one ends the run promptly with its own error, naming the stage whose
 * preflight started it, and leaves nothing (one-machine run, dry run, split part); a run never
 * finishes before every check passed; a stage that fails first wins, and stops the checks.
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { CkptError, isCkptError } from "../../errors.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { runPart } from "../../pipelines/run_part.ts";
import type { PipelineEvent, Stage } from "../../pipelines/stage.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { FAKE_STAGES } from "./_fake_stages.ts";

/** What the `check` stage's deferred checks did, in order, with the runner's events. */
const log: string[] = [];

/**
 * A stage whose preflight defers a check that settles after `ms` (failing with `fails`, a code,
 * when given), or rejects `ABORTED` when `ctx.signal` stops it first.
 */
const check: Stage = {
  name: "check",
  summary: "defers a check",
  split: "one-part",
  options: z.strictObject({ ms: z.number(), fails: z.string().optional() }),
  preflight(ctx, raw) {
    const { ms, fails } = raw as { ms: number; fails?: string };
    ctx.defer!(
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          log.push(fails ? "check failed" : "check passed");
          if (fails) reject(new CkptError(fails as "TOKENIZER_INVALID", "Cannot load it: bad"));
          else resolve();
        }, ms);
        ctx.signal.addEventListener("abort", () => {
          clearTimeout(timer);
          log.push("check stopped");
          reject(new CkptError("ABORTED", "Cannot check: aborted"));
        }, { once: true });
      }),
    );
    return Promise.resolve();
  },
  run() {
    return Promise.resolve();
  },
};

/** A stage (every part) that waits until `ctx.signal` aborts, or `ms` pass. */
const slow: Stage = { ...FAKE_STAGES.wait!, name: "slow", split: "every-part" };

async function run(
  dir: string,
  stages: Record<string, unknown>[],
  options: { dryRun?: boolean } = {},
): Promise<{ error: unknown; events: PipelineEvent[]; ms: number }> {
  log.length = 0;
  const events: PipelineEvent[] = [];
  const t0 = performance.now();
  const error = await runPipeline({ output: "out", stages: stages as never }, {
    stages: { ...FAKE_STAGES, check, slow },
    env: {},
    baseDir: dir,
    onEvent: (e) => {
      events.push(e);
      if (e.type !== "progress" && e.type !== "log") {
        log.push(`${e.type} ${"stage" in e ? e.stage : ""}`);
      }
    },
    ...options,
  }).then(() => undefined, (e: unknown) => e);
  return { error, events, ms: performance.now() - t0 };
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

Deno.test("a deferred check runs beside the stages, and the run ends only after it passed", async () => {
  await withTempDir(async (dir) => {
    const { error } = await run(dir, [
      { use: "check", ms: 300 },
      { use: "writeText", name: "a.txt" },
    ]);
    assert.equal(error, undefined);
    assert.deepEqual(log.map((l) => l.trim()), [
      "pipeline-start",
      "stage-start check",
      "stage-end check",
      "stage-start writeText",
      "stage-end writeText",
      "check passed",
      "pipeline-end",
    ]);
    assert.deepEqual(await names(`${dir}/out`), ["a.txt", "ckpt-manifest.json"]);
  });
});

Deno.test("a failed deferred check ends the run at once with its error: the running stage is stopped, nothing is left", async () => {
  await withTempDir(async (dir) => {
    const { error, events, ms } = await run(dir, [
      { use: "slow", ms: 20_000 },
      { use: "check", ms: 100, fails: "TOKENIZER_INVALID" },
    ]);
    assert.ok(isCkptError(error, "TOKENIZER_INVALID"), String(error));
    assert.ok(ms < 10_000, `the run took ${ms} ms`);
    assert.deepEqual(events.at(-1), {
      type: "pipeline-error",
      code: "TOKENIZER_INVALID",
      message: "Cannot load it: bad",
      stage: "check",
    });
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("a deferred check that fails after the last stage still fails the run: no manifest, no output", async () => {
  await withTempDir(async (dir) => {
    const { error, events } = await run(dir, [
      { use: "check", ms: 200, fails: "TOKENIZER_TEMPLATE" },
      { use: "writeText", name: "a.txt" },
    ]);
    assert.ok(isCkptError(error, "TOKENIZER_TEMPLATE"), String(error));
    assert.equal(events.some((e) => e.type === "pipeline-end"), false);
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("a stage that fails while a check is pending wins, and the check is stopped", async () => {
  await withTempDir(async (dir) => {
    const { error, events } = await run(dir, [
      { use: "check", ms: 20_000, fails: "TOKENIZER_INVALID" },
      { use: "fail" },
    ]);
    assert.ok(isCkptError(error, "TENSOR_MISSING"), String(error));
    const last = events.at(-1);
    assert.equal(last?.type === "pipeline-error" && last.stage, "fail");
    assert.ok(log.includes("check stopped"), log.join(", "));
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("a dry run waits for the deferred checks too: a failed one fails it", async () => {
  await withTempDir(async (dir) => {
    const failed = await run(dir, [
      { use: "check", ms: 100, fails: "TOKENIZER_INVALID" },
      { use: "writeText", name: "a.txt" },
    ], { dryRun: true });
    assert.ok(isCkptError(failed.error, "TOKENIZER_INVALID"), String(failed.error));
    const passed = await run(dir, [
      { use: "check", ms: 100 },
      { use: "writeText", name: "a.txt" },
    ], { dryRun: true });
    assert.equal(passed.error, undefined);
    assert.ok(log.indexOf("check passed") < log.indexOf("pipeline-end "), log.join(", "));
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("a split part whose deferred check fails ends with its error and writes no receipt", async () => {
  await withTempDir(async (dir) => {
    log.length = 0;
    const error = await runPart({
      output: "out",
      stages: [{ use: "slow", ms: 20_000 }, { use: "check", ms: 100, fails: "TOKENIZER_INVALID" }],
    }, {
      stages: { ...FAKE_STAGES, check, slow },
      env: {},
      baseDir: dir,
      part: { index: 0, count: 1 },
    }).then(() => undefined, (e: unknown) => e);
    assert.ok(isCkptError(error, "TOKENIZER_INVALID"), String(error));
    assert.equal(await Deno.stat(`${dir}/out`).then(() => true, () => false), false);
  });
});
