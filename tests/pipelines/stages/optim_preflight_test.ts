/**
 * writeOptim's preflight in the runner: it hands the load of its inputs to the runner
 * (`ctx.defer`), so the first stage starts at once and a bad input still ends the run with its
 * code; the run reuses what the preflight loaded while the files are unchanged (device, inode,
 * size, modification time); what the preflight opened is closed however the run ends (Deno's
 * resource sanitizer does not see `node:fs` file handles, so the test looks at the process's open
 * files in `/proc/self/fd`).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { z } from "zod";
import { CkptError, isCkptError } from "../../../errors.ts";
import { loadTorch } from "../../../formats/torch/load.ts";
import { saveTorch } from "../../../formats/torch/save.ts";
import { type PyDict, pyDict, tensorOfBytes } from "../../../formats/torch/values.ts";
import { runPipeline } from "../../../pipelines/run.ts";
import type { PipelineEvent, Stage } from "../../../pipelines/stage.ts";
import { createWriteOptimStage, writeOptimStage } from "../../../pipelines/stages/write_optim.ts";
import { inputsLoaded } from "../../../pipelines/stages/_optim_load.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { FAKE_STAGES } from "../_fake_stages.ts";

/** HALOs' optimizer.pt value with one parameter; `lr` changes the pickle, not its size. */
function halosOptimizer(lr: number): PyDict {
  const exp = tensorOfBytes("F32", [2], new Uint8Array(new Float32Array([1, 2]).buffer));
  return pyDict([
    [
      "state_dict",
      pyDict([
        ["state", pyDict([[0, pyDict([["exp_avg", exp]])]])],
        ["param_groups", [pyDict([["lr", lr], ["params", [0]]])]],
      ]),
    ],
    ["class", "AdamW"],
  ]);
}

/** The `lr` of the optimizer.pt at `path`. */
async function lrOf(path: string): Promise<unknown> {
  await using f = await loadTorch(path);
  const sd = f.dict().get("state_dict") as PyDict;
  return ((sd.get("param_groups") as PyDict[])[0]!).get("lr");
}

/** Overwrites `path` in place with `from`'s bytes; with `keepTime`, puts its times back. */
const rewrite: Stage = {
  name: "rewrite",
  summary: "rewrites a file in place",
  split: "one-part",
  options: z.strictObject({ path: z.string(), from: z.string(), keepTime: z.boolean() }),
  async run(ctx, raw) {
    const o = raw as { path: string; from: string; keepTime: boolean };
    const path = ctx.resolve(o.path);
    const before = await Deno.stat(path);
    using f = await Deno.open(path, { write: true });
    await f.write(await Deno.readFile(ctx.resolve(o.from)));
    if (o.keepTime) await Deno.utime(path, before.atime!, before.mtime!);
  },
};

async function run(
  dir: string,
  stages: Record<string, unknown>[],
  options: { dryRun?: boolean; signal?: AbortSignal; writeOptim?: Stage } = {},
): Promise<{ error: unknown; events: PipelineEvent[]; ms: number }> {
  const events: PipelineEvent[] = [];
  const t0 = performance.now();
  const { writeOptim = writeOptimStage, ...rest } = options;
  const error = await runPipeline({ output: "out", stages: stages as never }, {
    stages: { ...FAKE_STAGES, rewrite, writeOptim },
    env: {},
    baseDir: dir,
    onEvent: (e) => events.push(e),
    ...rest,
  }).then(() => undefined, (e: unknown) => e);
  return { error, events, ms: performance.now() - t0 };
}

/** How many of this process's open files are `path` (Linux: `/proc/self/fd`). */
function openFilesOn(path: string): number {
  const real = Deno.realPathSync(path);
  let n = 0;
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${e.name}`) === real) n++;
    } catch {
      // closed while listed
    }
  }
  return n;
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

/** Waits until `done()` holds, or `ms` have passed (the caller asserts what it expects). */
async function within(ms: number, done: () => boolean): Promise<void> {
  for (const end = performance.now() + ms; !done() && performance.now() < end;) {
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** optimizer.pt (lr 0.001, dated in the past) and optimize2.pt (lr 0.002, the same size) in `dir`. */
async function inputs(dir: string): Promise<void> {
  await saveTorch(join(dir, "optimizer.pt"), halosOptimizer(0.001));
  await saveTorch(join(dir, "optimize2.pt"), halosOptimizer(0.002));
  const a = await Deno.stat(join(dir, "optimizer.pt"));
  const b = await Deno.stat(join(dir, "optimize2.pt"));
  assert.equal(a.size, b.size);
  const past = new Date(Date.now() - 60_000);
  await Deno.utime(join(dir, "optimizer.pt"), past, past);
}

Deno.test("writeOptim's preflight loads its inputs beside the stages: the first stage starts first", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "state"));
    let opened = () => {};
    const gate = new Promise<void>((resolve) => (opened = resolve));
    // The load waits until the first stage has started; a preflight that awaits it fails.
    const writeOptim = createWriteOptimStage({
      optimizerSources: [{
        name: "gated",
        detect: (p) => p.isDirectory,
        load: async () => {
          let timer: ReturnType<typeof setTimeout> | undefined;
          const late = new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(new CkptError("OPTIM_INVALID", "Cannot load: no stage started")),
              2000,
            );
          });
          await Promise.race([gate, late]).finally(() => clearTimeout(timer));
          return { value: halosOptimizer(0.001), close: () => Promise.resolve() };
        },
      }],
    });
    const open: Stage = {
      ...FAKE_STAGES.writeText!,
      run: (ctx, o) => {
        opened();
        return FAKE_STAGES.writeText!.run(ctx, o);
      },
    };
    const { error } = await runPipeline({
      output: "out",
      stages: [{ use: "open", name: "a.txt" }, { use: "writeOptim", optimizer: "state" }],
    }, { stages: { open, writeOptim }, env: {}, baseDir: dir }).then(
      () => ({ error: undefined }),
      (e: unknown) => ({ error: e }),
    );
    assert.equal(error, undefined);
    assert.deepEqual(await names(join(dir, "out")), [
      "a.txt",
      "ckpt-manifest.json",
      "optimizer.pt",
    ]);
  });
});

Deno.test("writeOptim's failed load ends the run promptly with its code once a stage started, and leaves nothing", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "optimizer.pt"), "not a torch archive");
    const { error, events, ms } = await run(dir, [
      { use: "wait", ms: 10_000 },
      { use: "writeOptim", optimizer: "optimizer.pt" },
    ]);
    assert.ok(isCkptError(error, "TORCH_NOT_TORCH"), String(error));
    assert.ok(ms < 5000, `took ${ms} ms`);
    assert.ok(events.some((e) => e.type === "stage-start" && e.stage === "wait"));
    const end = events.find((e) => e.type === "pipeline-error");
    assert.deepEqual(end && "stage" in end ? end.stage : undefined, "writeOptim");
    assert.deepEqual(await names(dir), ["optimizer.pt"]);
  });
});

Deno.test("writeOptim's missing input still fails before any stage starts", async () => {
  await withTempDir(async (dir) => {
    const { error, events } = await run(dir, [
      { use: "writeText", name: "a.txt" },
      { use: "writeOptim", optimizer: "optimizer.pt" },
    ]);
    assert.ok(isCkptError(error, "INPUT_MISSING"), String(error));
    assert.deepEqual(events.filter((e) => e.type === "stage-start"), []);
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("writeOptim's run reuses what its preflight loaded while the file is unchanged", async () => {
  await withTempDir(async (dir) => {
    await inputs(dir);
    const before = inputsLoaded.count;
    const { error } = await run(dir, [
      { use: "wait", ms: 100 },
      { use: "writeOptim", optimizer: "optimizer.pt" },
    ]);
    assert.equal(error, undefined);
    assert.equal(inputsLoaded.count - before, 1, "loaded once, by the preflight");
    assert.equal(await lrOf(join(dir, "out", "optimizer.pt")), 0.001);
    if (Deno.build.os === "linux") assert.equal(openFilesOn(join(dir, "optimizer.pt")), 0);
  });
});

for (const keepTime of [false, true]) {
  Deno.test(
    `writeOptim's run loads again after a same-size rewrite${
      keepTime ? " that set the modification time back (the change time moved)" : ""
    }`,
    async () => {
      await withTempDir(async (dir) => {
        await inputs(dir);
        // (The wait lets the preflight's load, which runs beside the stages, end before the
        // rewrite; the change time has whole seconds.)
        const { error } = await run(dir, [
          { use: "wait", ms: keepTime ? 1100 : 500 },
          { use: "rewrite", path: "optimizer.pt", from: "optimize2.pt", keepTime },
          { use: "writeOptim", optimizer: "optimizer.pt" },
        ]);
        assert.equal(error, undefined);
        assert.equal(await lrOf(join(dir, "out", "optimizer.pt")), 0.002);
        if (Deno.build.os === "linux") assert.equal(openFilesOn(join(dir, "optimizer.pt")), 0);
      });
    },
  );
}

Deno.test({
  name: "writeOptim's preflight closes what it loaded however the run ends",
  ignore: Deno.build.os !== "linux",
}, async (t) => {
  await withTempDir(async (dir) => {
    await inputs(dir);
    // closed by the time the run returns, or (a preflight still loading when an abort ended the
    // run, on a busy machine) as soon as that load ends: never left open
    const closed = async () => {
      await within(
        2000,
        () => openFilesOn(join(dir, "optimizer.pt")) + openFilesOn(join(dir, "optimize2.pt")) === 0,
      );
      assert.equal(openFilesOn(join(dir, "optimizer.pt")), 0);
      assert.equal(openFilesOn(join(dir, "optimize2.pt")), 0);
    };
    await t.step("a stage before it fails", async () => {
      const { error } = await run(dir, [
        { use: "fail" },
        { use: "writeOptim", optimizer: "optimizer.pt", scheduler: "optimize2.pt" },
      ]);
      assert.ok(isCkptError(error, "TENSOR_MISSING"), String(error));
      await closed();
    });
    await t.step("an abort during a stage before it", async () => {
      const stop = new AbortController();
      setTimeout(() => stop.abort(new Error("stop")), 50);
      const { error } = await run(dir, [
        { use: "wait", ms: 10_000 },
        { use: "writeOptim", optimizer: "optimizer.pt", scheduler: "optimize2.pt" },
      ], { signal: stop.signal });
      assert.ok(isCkptError(error, "ABORTED"), String(error));
      await closed();
    });
    await t.step("a dry run", async () => {
      const { error } = await run(dir, [
        { use: "writeOptim", optimizer: "optimizer.pt", scheduler: "optimize2.pt" },
      ], { dryRun: true });
      assert.equal(error, undefined);
      await closed();
    });
    await t.step("its scheduler is not a dict (the optimizer was loaded)", async () => {
      await saveTorch(join(dir, "scheduler.pt"), [1, 2]);
      const { error } = await run(dir, [
        { use: "writeText", name: "a.txt" },
        { use: "writeOptim", optimizer: "optimizer.pt", scheduler: "scheduler.pt" },
      ]);
      assert.ok(isCkptError(error, "SCHEDULER_INVALID"), String(error));
      await closed();
      await Deno.remove(join(dir, "scheduler.pt"));
    });
    assert.deepEqual(await names(dir), ["optimize2.pt", "optimizer.pt"]);
  });
});

Deno.test("a run that fails while writeOptim's load still runs ends at once, and what the load opens is closed when it ends", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "state"));
    let release = () => {};
    const stalled = new Promise<void>((resolve) => (release = resolve));
    let closed = 0;
    // a source whose load hangs (a network file system) and does not watch any signal
    const writeOptim = createWriteOptimStage({
      optimizerSources: [{
        name: "stalled",
        detect: (p) => p.isDirectory,
        load: async () => {
          await stalled;
          return { value: halosOptimizer(0.001), close: () => Promise.resolve(void closed++) };
        },
      }],
    });
    const t0 = performance.now();
    const error = await runPipeline({
      output: "out",
      stages: [{ use: "fail" }, { use: "writeOptim", optimizer: "state" }],
    }, { stages: { ...FAKE_STAGES, writeOptim }, env: {}, baseDir: dir }).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(isCkptError(error), String(error));
    assert.ok(performance.now() - t0 < 5000, `took ${performance.now() - t0} ms`);
    assert.deepEqual(await names(dir), ["state"]);
    assert.equal(closed, 0);
    release();
    await within(500, () => closed > 0);
    assert.equal(closed, 1);
  });
});
