/**
 * How the runner's stage loop (`pipelines/_stage_loop.ts`) names a failure: an uncoded error
 * becomes STAGE_FAILED naming the stage and its place, and the error event names the stage that
 * failed, the first one included; after the last stage ended, no stage is named.
 */
import assert from "node:assert/strict";
import { z } from "zod";
import { isCkptError } from "../../errors.ts";
import { runPipeline } from "../../pipelines/run.ts";
import type { PipelineEvent, Stage } from "../../pipelines/stage.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { FAKE_STAGES } from "./_fake_stages.ts";

const boom: Stage = {
  name: "boom",
  summary: "throws an uncoded error",
  options: z.strictObject({}),
  run() {
    return Promise.reject(new TypeError("x is not a function"));
  },
};

async function failure(
  stages: { use: string; name?: string }[],
  onEvent?: (e: PipelineEvent) => void,
) {
  return await withTempDir(async (dir) => {
    const events: PipelineEvent[] = [];
    let error: unknown;
    try {
      await runPipeline({ output: "out", stages }, {
        stages: { ...FAKE_STAGES, boom },
        env: {},
        baseDir: dir,
        onEvent: (e) => {
          events.push(e);
          onEvent?.(e);
        },
      });
    } catch (e) {
      error = e;
    }
    return { error, last: events[events.length - 1] };
  });
}

Deno.test("a stage's uncoded error fails the run with STAGE_FAILED naming the stage, its index and the message", async () => {
  const { error, last } = await failure([{ use: "writeText", name: "a.txt" }, { use: "boom" }]);
  assert.ok(isCkptError(error, "STAGE_FAILED"), String(error));
  assert.equal(error.message, "Cannot run stage boom (stages[1]): x is not a function");
  assert.deepEqual(last, {
    type: "pipeline-error",
    code: "STAGE_FAILED",
    message: error.message,
    stage: "boom",
  });
});

Deno.test("the error event names the first stage when the first stage fails", async () => {
  const { error, last } = await failure([{ use: "fail" }, { use: "writeText", name: "a.txt" }]);
  assert.ok(isCkptError(error, "TENSOR_MISSING"));
  assert.equal(last?.type === "pipeline-error" && last.stage, "fail");
});

Deno.test("the error event names no stage for a failure after the last stage ended, or before the first began", async () => {
  // a file no stage reported: the check after the last stage fails the run
  const stray: Stage = {
    name: "stray",
    summary: "writes a file it does not report",
    options: z.strictObject({}),
    async run(ctx) {
      if (!ctx.dryRun) await Deno.writeTextFile(`${ctx.outDir}/stray.txt`, "x");
    },
  };
  await withTempDir(async (dir) => {
    const last = async (config: { output: string; stages: { use: string }[] }) => {
      const events: PipelineEvent[] = [];
      const error = await runPipeline(config, {
        stages: { ...FAKE_STAGES, stray },
        env: {},
        baseDir: dir,
        onEvent: (e) => events.push(e),
      }).then(() => undefined, (e: unknown) => e);
      return { error, event: events[events.length - 1] };
    };
    const after = await last({ output: "out", stages: [{ use: "stray" }] });
    assert.ok(isCkptError(after.error, "STAGING_UNREPORTED"));
    assert.equal(after.event?.type, "pipeline-error");
    assert.equal("stage" in after.event!, false, JSON.stringify(after.event));
    // an output already there is refused before any stage
    await Deno.mkdir(`${dir}/there`);
    const before = await last({ output: "there", stages: [{ use: "stray" }] });
    assert.ok(isCkptError(before.error, "OUTPUT_EXISTS"));
    assert.equal(before.event?.type, "pipeline-error");
    assert.equal("stage" in before.event!, false, JSON.stringify(before.event));
  });
});

Deno.test("what a preflight hands over after the run stopped waiting for it (an abort) is closed at once, not left open", async () => {
  await withTempDir(async (dir) => {
    let release = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    let closed = 0;
    let handedOver = () => {};
    const handed = new Promise<void>((resolve) => (handedOver = resolve));
    // a preflight blocked in I/O that does not watch the signal, then opens something for its run
    const slow: Stage = {
      name: "slow",
      summary: "opens something for its run after a slow preflight",
      options: z.strictObject({}),
      async preflight(ctx) {
        await gate;
        ctx.closeAtEnd?.(() => Promise.resolve(void closed++));
        handedOver();
      },
      run: () => Promise.resolve(),
    };
    const stop = new AbortController();
    const running = runPipeline({ output: "out", stages: [{ use: "slow" }] }, {
      stages: { ...FAKE_STAGES, slow },
      env: {},
      baseDir: dir,
      signal: stop.signal,
    });
    setTimeout(() => stop.abort(new Error("stop")), 20);
    const error = await running.then(() => undefined, (e: unknown) => e);
    assert.ok(isCkptError(error, "ABORTED"), String(error));
    release();
    await handed;
    assert.equal(closed, 1);
  });
});
