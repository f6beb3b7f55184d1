/**
 * `runPart()` and `finishParts()` in one process on a small model: what a part does when it runs
 * twice at once, fails, or meets a finished output; what the finish says of missing, failed and
 * disagreeing parts; and how the output lock keeps one-machine runs, finishes and parts apart
 * while parts run side by side.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { z } from "zod";
import { CkptError } from "../../errors.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { builtinStages, type RawConfig, validateConfig } from "../../pipelines/config.ts";
import { finishParts } from "../../pipelines/finish_parts.ts";
import { FileLock } from "../../pipelines/lock.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { runPart } from "../../pipelines/run_part.ts";
import { splitId } from "../../pipelines/split.ts";
import { defineStage } from "../../pipelines/stage.ts";
import { OutputLock } from "../../pipelines/_output_lock.ts";
import { partPaths, splitFolder } from "../../pipelines/_split_receipts.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { makeDemoRun } from "../../examples/_demo_run.ts";

/** Six 100-byte tensors, written as 100-byte shards: six weight files. */
async function smallModel(dir: string): Promise<RawConfig> {
  const sd = new StateDict();
  for (let i = 0; i < 6; i++) {
    sd.set(`t${i}.weight`, tensorFromBytes("U8", [100], new Uint8Array(100).fill(i)));
  }
  await writeSafetensors(join(dir, "in.safetensors"), sd);
  await Deno.writeTextFile(join(dir, "eval.json"), '{"loss": 0.5, "counter": 3}');
  return {
    output: "out",
    stages: [
      { use: "gatherShards", from: "in.safetensors" },
      { use: "writeModel", maxShardSize: "100B" },
      { use: "writeMetrics", from: "eval.json" },
    ],
  };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CkptError) return e.code;
    throw e;
  }
  return "none";
}

async function errorOf(p: Promise<unknown>): Promise<CkptError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CkptError) return e;
    throw e;
  }
  throw new Error("expected an error");
}

async function where(
  dir: string,
  config: RawConfig,
  count: number,
  stages?: Awaited<ReturnType<typeof builtinStages>>,
) {
  const cfg = await validateConfig(config, {
    baseDir: dir,
    stages: stages ?? await builtinStages(),
  });
  const folder = splitFolder(cfg.output, splitId(cfg, count));
  return { folder, paths: (i: number) => partPaths(folder, i, count) };
}

Deno.test("`runPart()` writes only its share, and the lead part alone runs the one-part stages", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const lead = await runPart(config, { baseDir: dir, part: { index: 2, count: 3 } });
    const first = await runPart(config, { baseDir: dir, part: { index: 0, count: 3 } });
    assert.equal(lead.status, "written");
    assert.deepEqual(lead.files.map((f) => f.path), [
      "metrics.json",
      "model-00003-of-00006.safetensors",
      "model-00006-of-00006.safetensors",
    ]);
    assert.deepEqual(first.files.map((f) => f.path), [
      "model-00001-of-00006.safetensors",
      "model-00004-of-00006.safetensors",
    ]);
    const again = await runPart(config, { baseDir: dir, part: { index: 0, count: 3 } });
    assert.equal(again.status, "already-done");
    assert.deepEqual(again.files, first.files);
  });
});

Deno.test("`runPart()` of a part that is already running is PART_RUNNING naming it and its holder", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    await runPart(config, { baseDir: dir, part: { index: 0, count: 2 } });
    const { paths } = await where(dir, config, 2);
    const held = await FileLock.tryAcquire(paths(1).lock, "another host", { mkdir: false });
    try {
      const e = await errorOf(runPart(config, { baseDir: dir, part: { index: 1, count: 2 } }));
      assert.equal(e.code, "PART_RUNNING");
      assert.match(e.message, /part 1 of 2: it is already running: pid \d+ .*another host/);
      const details = e.details as { part?: number; pid?: number; purpose?: string };
      assert.deepEqual([details.part, details.pid, details.purpose], [1, Deno.pid, "another host"]);
    } finally {
      await held?.release();
    }
    assert.equal(
      (await runPart(config, { baseDir: dir, part: { index: 1, count: 2 } })).status,
      "written",
    );
    assert.equal((await finishParts(config, { baseDir: dir, count: 2 })).status, "finished");
  });
});

Deno.test("`finishParts()` names the missing parts, then the failed part and its error", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    assert.match(
      (await errorOf(finishParts(config, { baseDir: dir, count: 3 }))).message,
      /no part has run/,
    );
    await runPart(config, { baseDir: dir, part: { index: 1, count: 3 } });
    const missing = await errorOf(finishParts(config, { baseDir: dir, count: 3 }));
    assert.equal(missing.code, "PARTS_MISSING");
    assert.match(missing.message, /parts 0, 2 have no receipt .*; rerun them with --part I\/3$/);

    const boom = defineStage({
      name: "boom",
      summary: "fails",
      split: "one-part",
      options: z.strictObject({}),
      run() {
        return Promise.reject(new CkptError("METRICS_INPUT", "Cannot read metrics: test"));
      },
    });
    const failing = { ...config, stages: [...config.stages, { use: "boom" }] };
    const stages = { ...(await builtinStages()), boom };
    assert.equal(
      await codeOf(runPart(failing, { baseDir: dir, stages, part: { index: 2, count: 3 } })),
      "METRICS_INPUT",
    );
    await runPart(failing, { baseDir: dir, stages, part: { index: 0, count: 3 } });
    await runPart(failing, { baseDir: dir, stages, part: { index: 1, count: 3 } });
    const failed = await errorOf(finishParts(failing, { baseDir: dir, stages, count: 3 }));
    assert.equal(failed.code, "PART_FAILED");
    assert.match(
      failed.message,
      /part 2 failed on .*: \[METRICS_INPUT\] Cannot read metrics: test; rerun it with --part I\/3$/,
    );
    const { folder } = await where(dir, config, 3);
    assert.ok(await Deno.stat(folder), "the finished parts are kept");
  });
});

Deno.test("`finishParts()` refuses parts that followed different weight plans", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    const { paths } = await where(dir, config, 2);
    const receipt = JSON.parse(await Deno.readTextFile(paths(0).receipt));
    receipt.plans[0].shared[0].bytes += 1;
    await Deno.writeTextFile(paths(0).receipt, JSON.stringify(receipt));
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.equal(e.code, "PARTS_MISMATCH");
    assert.match(e.message, /part 0 planned other weight files than part 1/);
  });
});

Deno.test("parts share the output lock; a one-machine run and a finish wait for them to end", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const cfg = await validateConfig(config, { baseDir: dir, stages: await builtinStages() });
    // a part of this export running elsewhere holds the lock shared
    const running = await OutputLock.acquire(cfg.output, {
      wait: false,
      signal: new AbortController().signal,
      shared: true,
    });
    try {
      for (const index of [0, 1]) {
        assert.equal(
          (await runPart(config, { baseDir: dir, part: { index, count: 2 } })).status,
          "written",
        );
      }
      assert.equal(await codeOf(runPipeline(config, { baseDir: dir })), "OUTPUT_LOCKED");
      assert.equal(await codeOf(finishParts(config, { baseDir: dir, count: 2 })), "OUTPUT_LOCKED");
    } finally {
      await running.release();
    }
    assert.equal((await finishParts(config, { baseDir: dir, count: 2 })).status, "finished");
  });
});

Deno.test("a one-machine run between the parts leaves their folder alone, and later parts refuse its output", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    await runPart(config, { baseDir: dir, part: { index: 0, count: 2 } });
    await runPipeline(config, { baseDir: dir });
    const { paths } = await where(dir, config, 2);
    assert.ok((await Deno.stat(paths(0).receipt)).isFile);
    assert.equal(
      await codeOf(runPart(config, { baseDir: dir, part: { index: 1, count: 2 } })),
      "OUTPUT_EXISTS",
    );
    assert.equal(await codeOf(finishParts(config, { baseDir: dir, count: 2 })), "PARTS_MISSING");
  });
});

Deno.test("`finishParts()` refuses parts that read an input rewritten between them", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    await runPart(config, { baseDir: dir, part: { index: 0, count: 2 } });
    // the training job saves again, same shapes, between the parts
    const later = new Date(Date.now() + 60_000);
    await Deno.utime(join(dir, "in.safetensors"), later, later);
    await runPart(config, { baseDir: dir, part: { index: 1, count: 2 } });
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.equal(e.code, "PARTS_MISMATCH");
    assert.match(
      e.message,
      /the input ".*in\.safetensors" \(weights\) changed between parts: part 0 saw/,
    );
  });
});

Deno.test("`runPart()` cannot start while a finish or a one-machine run holds the output", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const cfg = await validateConfig(config, { baseDir: dir, stages: await builtinStages() });
    const finishing = await OutputLock.acquire(cfg.output, {
      wait: false,
      signal: new AbortController().signal,
    });
    try {
      const e = await errorOf(runPart(config, { baseDir: dir, part: { index: 0, count: 2 } }));
      assert.equal(e.code, "OUTPUT_LOCKED");
    } finally {
      await finishing.release();
    }
  });
});

Deno.test("`runPart()` aborted after its last stage leaves no receipt and nothing in the shared folder", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const ac = new AbortController();
    const e = await errorOf(runPart(config, {
      baseDir: dir,
      part: { index: 1, count: 2 },
      signal: ac.signal,
      onEvent: (ev) => {
        if (ev.type === "stage-end" && ev.stage === "writeMetrics") ac.abort(new Error("SIGTERM"));
      },
    }));
    assert.equal(e.code, "ABORTED");
    const { folder, paths } = await where(dir, config, 2);
    assert.deepEqual((await Array.fromAsync(Deno.readDir(folder))).map((d) => d.name), [
      ".ckpt-split",
    ]);
    await assert.rejects(Deno.stat(paths(1).receipt), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(paths(1).work), Deno.errors.NotFound);
    const failed = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.match(failed.message, /part 1 failed on .*\[ABORTED\]/);
  });
});

Deno.test("`finishParts()` refuses a file two receipts claim, and a count below 1", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    assert.equal(await codeOf(finishParts(config, { baseDir: dir, count: 0 })), "PART_SPEC");
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    const { paths } = await where(dir, config, 2);
    const first = JSON.parse(await Deno.readTextFile(paths(0).receipt));
    const lead = JSON.parse(await Deno.readTextFile(paths(1).receipt));
    first.files.push(lead.files[0]);
    await Deno.writeTextFile(paths(0).receipt, JSON.stringify(first));
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.equal(e.code, "PARTS_MISMATCH");
    assert.match(
      e.message,
      new RegExp(`"${lead.files[0].path}" was written by part 0 and by part 1`),
    );
  });
});

Deno.test("a finish aborted before its rename lands on the next finish, without the receipts", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    const ac = new AbortController();
    ac.abort(new Error("SIGTERM"));
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 2, signal: ac.signal }));
    assert.equal(e.code, "ABORTED");
    const { folder } = await where(dir, config, 2);
    await assert.rejects(Deno.stat(join(dir, "out")), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(join(folder, ".ckpt-split")), Deno.errors.NotFound);
    const done = await finishParts(config, { baseDir: dir, count: 2 });
    assert.equal(done.status, "finished");
    assert.deepEqual(done.manifest.files.map((f) => f.path), [
      "metrics.json",
      ...[1, 2, 3, 4, 5, 6].map((i) => `model-0000${i}-of-00006.safetensors`),
      "model.safetensors.index.json",
    ]);
    assert.equal(
      (await finishParts(config, { baseDir: dir, count: 2 })).status,
      "already-finished",
    );
  });
});

Deno.test("`finishParts()` refuses parts written by another ckpt version", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    const { paths } = await where(dir, config, 2);
    const receipt = JSON.parse(await Deno.readTextFile(paths(0).receipt));
    receipt.ckpt = "0.0.1";
    await Deno.writeTextFile(paths(0).receipt, JSON.stringify(receipt));
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.equal(e.code, "PARTS_MISMATCH");
    assert.match(e.message, /part 0 was written by ckpt 0\.0\.1, part 1 by ckpt /);
  });
});

Deno.test("`finishParts()` never replaces an output that appeared meanwhile unless told to", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    await Deno.mkdir(join(dir, "out"));
    await Deno.writeTextFile(join(dir, "out", "mine.txt"), "someone else's");
    assert.equal(await codeOf(finishParts(config, { baseDir: dir, count: 2 })), "OUTPUT_EXISTS");
    assert.equal(await Deno.readTextFile(join(dir, "out", "mine.txt")), "someone else's");
    const done = await finishParts(config, {
      baseDir: dir,
      count: 2,
      overwrite: true,
      force: true,
    });
    assert.equal(done.status, "finished");
    await assert.rejects(Deno.stat(join(dir, "out", "mine.txt")), Deno.errors.NotFound);
  });
});

Deno.test("`runPart()` with dryRun lists the part's files and writes, creates and locks nothing", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const before = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    const first = await runPart(config, {
      baseDir: dir,
      dryRun: true,
      part: { index: 0, count: 3 },
    });
    const lead = await runPart(config, {
      baseDir: dir,
      dryRun: true,
      part: { index: 2, count: 3 },
    });
    assert.equal(first.status, "planned");
    assert.deepEqual(first.files.map((f) => f.path), [
      "model-00001-of-00006.safetensors",
      "model-00004-of-00006.safetensors",
    ]);
    assert.deepEqual(lead.files.map((f) => f.path), [
      "model-00003-of-00006.safetensors",
      "model-00006-of-00006.safetensors",
      "metrics.json",
    ]);
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(), before);
    // the plan is what the part then writes
    const written = await runPart(config, { baseDir: dir, part: { index: 0, count: 3 } });
    assert.deepEqual(
      written.files.map((f) => [f.path, f.size]),
      first.files.map((f) => [f.path, f.size]),
    );
  });
});

Deno.test("`runPart()` refuses a part outside 0 to N-1 with PART_SPEC before it touches anything", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const before = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    for (const part of [{ index: 2, count: 2 }, { index: -1, count: 2 }, { index: 0, count: 0 }]) {
      assert.equal(
        await codeOf(runPart(config, { baseDir: dir, part })),
        "PART_SPEC",
        JSON.stringify(part),
      );
    }
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(), before);
  });
});

Deno.test("`runPart()` refuses a count that is not a whole number with PART_SPEC, even for part 0", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const before = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    // each count is at least 1 and part 0 is below it: only the integer check refuses these
    for (const count of [2.5, NaN, Infinity]) {
      const part = { index: 0, count };
      assert.equal(await codeOf(runPart(config, { baseDir: dir, part })), "PART_SPEC", `${count}`);
    }
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(), before);
  });
});

Deno.test("`runPart()` with a signal aborted before it starts is ABORTED and creates nothing", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const before = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
    const ac = new AbortController();
    ac.abort(new Error("SIGTERM"));
    assert.equal(
      await codeOf(runPart({ ...config, output: "deep/er/out" }, {
        baseDir: dir,
        part: { index: 0, count: 2 },
        signal: ac.signal,
      })),
      "ABORTED",
    );
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(), before);
  });
});

Deno.test("`runPart()` moves a file two folders deep into the shared folder, and the finish lands it", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const nested = defineStage({
      name: "nested",
      summary: "writes sub/deeper/x.txt",
      split: "one-part",
      options: z.strictObject({}),
      async run(ctx) {
        ctx.report("nested", { files: [{ path: "sub/deeper/x.txt", bytes: 1 }] });
        if (ctx.dryRun) return;
        await Deno.mkdir(join(ctx.outDir, "sub", "deeper"), { recursive: true });
        await Deno.writeTextFile(join(ctx.outDir, "sub", "deeper", "x.txt"), "x");
      },
    });
    const stages = { ...(await builtinStages()), nested };
    const withNested = { ...config, stages: [...config.stages, { use: "nested" }] };
    for (const index of [0, 1]) {
      await runPart(withNested, { baseDir: dir, stages, part: { index, count: 2 } });
    }
    // the lead's work folder, which held sub/deeper/, is gone with the folders its file left
    const { paths } = await where(dir, withNested, 2, stages);
    await assert.rejects(Deno.stat(paths(1).work), Deno.errors.NotFound);
    const done = await finishParts(withNested, { baseDir: dir, stages, count: 2 });
    assert.ok(done.manifest.files.some((f) => f.path === "sub/deeper/x.txt"));
    assert.equal(await Deno.readTextFile(join(dir, "out", "sub", "deeper", "x.txt")), "x");
  });
});

Deno.test("`finishParts()` with one part missing names it alone: 'part 1 has no receipt', 'rerun it'", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    for (const index of [0, 2]) await runPart(config, { baseDir: dir, part: { index, count: 3 } });
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 3 }));
    assert.equal(e.code, "PARTS_MISSING");
    assert.match(
      e.message,
      /: part 1 has no receipt \(not run yet, or killed\); rerun it with --part I\/3$/,
    );
  });
});

Deno.test("`finishParts()` refuses an earlier finish's folder whose manifest is another split's", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    const ac = new AbortController();
    ac.abort(new Error("SIGTERM"));
    await errorOf(finishParts(config, { baseDir: dir, count: 2, signal: ac.signal }));
    // the folder now holds a finished manifest and no receipts: make it another split's
    const { folder } = await where(dir, config, 2);
    const path = join(folder, "ckpt-manifest.json");
    const manifest = JSON.parse(await Deno.readTextFile(path));
    manifest.split.id = "another split";
    await Deno.writeTextFile(path, JSON.stringify(manifest));
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.equal(e.code, "PARTS_MISMATCH");
    assert.match(e.message, /its manifest is not this split's/);
    await assert.rejects(Deno.stat(join(dir, "out")), Deno.errors.NotFound);
  });
});

Deno.test("`runPart()`'s receipt: the lead part alone records the stages, and its time lies within the call", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const { paths } = await where(dir, config, 2);
    const before = performance.now();
    await runPart(config, { baseDir: dir, part: { index: 0, count: 2 } });
    await runPart(config, { baseDir: dir, part: { index: 1, count: 2 } });
    const elapsed = performance.now() - before;
    const first = JSON.parse(await Deno.readTextFile(paths(0).receipt));
    const lead = JSON.parse(await Deno.readTextFile(paths(1).receipt));
    assert.deepEqual([first.lead, "stages" in first], [false, false]);
    assert.deepEqual([lead.lead, Array.isArray(lead.stages)], [true, true]);
    for (const r of [first, lead]) assert.ok(r.ms >= 0 && r.ms <= Math.ceil(elapsed), String(r.ms));
  });
});

Deno.test("`finishParts()` refuses a receipt that names another part, or that is not a receipt", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    const { paths } = await where(dir, config, 2);
    const receipt = JSON.parse(await Deno.readTextFile(paths(0).receipt));
    await Deno.writeTextFile(paths(0).receipt, JSON.stringify({ ...receipt, part: 1 }));
    const other = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.equal(other.code, "PARTS_MISMATCH");
    assert.match(other.message, /it says it is part 1 of 2 of split .*, not 0 of 2 of /);
    await Deno.writeTextFile(paths(0).receipt, JSON.stringify({ hello: "world" }));
    const junk = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.equal(junk.code, "PARTS_MISMATCH");
    assert.match(junk.message, /it is not a ckpt part receipt/);
  });
});

Deno.test("`finishParts()` takes a count of 1 (a one-part split) and refuses 0", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    assert.equal(await codeOf(finishParts(config, { baseDir: dir, count: 0 })), "PART_SPEC");
    await runPart(config, { baseDir: dir, part: { index: 0, count: 1 } });
    const { paths } = await where(dir, config, 1);
    const partMs = JSON.parse(await Deno.readTextFile(paths(0).receipt)).ms;
    const done = await finishParts(config, { baseDir: dir, count: 1 });
    assert.equal(done.status, "finished");
    // the export's time: the slowest part's, plus the finish's own
    assert.ok(
      done.manifest.timings.totalMs >= partMs,
      `${done.manifest.timings.totalMs} < ${partMs}`,
    );
  });
});

Deno.test("`finishParts()` joins the module changes each part of a LoRA merge measured, in the one-machine order", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    const config = (output: string): RawConfig => ({
      output,
      stages: [
        { use: "gatherShards", from: run.base },
        { use: "mergeLora", adapter: run.adapter, backend: "cpu" },
        { use: "writeModel", dtype: "bfloat16", maxShardSize: "8KB" },
      ],
    });
    const one = await runPipeline(config("one"), { baseDir: dir });
    for (const index of [0, 1, 2]) {
      await runPart(config("split"), { baseDir: dir, part: { index, count: 3 } });
    }
    const split = await finishParts(config("split"), { baseDir: dir, count: 3 });
    const changes = (m: { stages: { name: string; report: Record<string, unknown> }[] }) =>
      m.stages.find((s) => s.name === "mergeLora")!.report.moduleChanges as { tensor: string }[];
    const want = changes(one.manifest);
    assert.equal(want.length, 7 * run.shape.layers);
    assert.deepEqual(changes(split.manifest), want);

    // a module two parts measured differently (a receipt edited): the finish refuses to join them
    const again = config("again");
    for (const index of [0, 1, 2]) {
      await runPart(again, { baseDir: dir, part: { index, count: 3 } });
    }
    const { paths } = await where(dir, again, 3);
    const receipts = [0, 1, 2].map((i) => paths(i).receipt);
    const read = async (path: string) => JSON.parse(await Deno.readTextFile(path));
    const all = await Promise.all(receipts.map(read));
    const from = all.findIndex((r) => r.gathered[0].items.length > 0);
    const to = (from + 1) % 3;
    const item = all[from].gathered[0].items[0];
    all[to].gathered[0].items.push({ ...item, sumSqDelta: -1 });
    await Deno.writeTextFile(receipts[to]!, JSON.stringify(all[to]));
    const e = await errorOf(finishParts(again, { baseDir: dir, count: 3 }));
    assert.equal(e.code, "PARTS_MISMATCH");
    assert.match(
      e.message,
      new RegExp(`measured "${item.tensor}" differently \\(moduleChanges\\)`),
    );
  });
});

Deno.test("a part's unload handler (its process exiting mid-run) removes the part's work folder and its lock file", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    let workLeft: boolean | undefined;
    let lockLeft: boolean | undefined;
    const exiting = defineStage({
      name: "exiting",
      summary: "the process exits while this stage runs",
      split: "one-part",
      options: z.strictObject({}),
      async run(ctx) {
        if (ctx.dryRun) return;
        await Deno.writeTextFile(join(ctx.outDir, "x.txt"), "x");
        globalThis.dispatchEvent(new Event("unload"));
        workLeft = await Deno.stat(ctx.outDir).then(() => true, () => false);
        lockLeft = await Deno.stat(`${ctx.outDir}.lock`).then(() => true, () => false);
      },
    });
    const stages = { ...(await builtinStages()), exiting };
    const withExit = { ...config, stages: [...config.stages, { use: "exiting" }] };
    await errorOf(runPart(withExit, { baseDir: dir, stages, part: { index: 1, count: 2 } }));
    assert.deepEqual({ workLeft, lockLeft }, { workLeft: false, lockLeft: false });
  });
});

Deno.test("`runPart()` after the finish is already finished; with overwrite it still refuses an output ckpt did not write", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    await finishParts(config, { baseDir: dir, count: 2 });
    const late = await runPart(config, { baseDir: dir, part: { index: 0, count: 2 } });
    assert.deepEqual([late.status, late.files], ["already-finished", []]);
    // another export's folder, no manifest: overwrite alone does not replace it, force does
    const other = { ...config, output: "theirs" };
    await Deno.mkdir(join(dir, "theirs"));
    await Deno.writeTextFile(join(dir, "theirs", "mine.txt"), "x");
    assert.equal(
      await codeOf(runPart(other, { baseDir: dir, overwrite: true, part: { index: 0, count: 2 } })),
      "OUTPUT_NOT_CKPT",
    );
    assert.equal(
      (await runPart(other, {
        baseDir: dir,
        overwrite: true,
        force: true,
        part: { index: 0, count: 2 },
      })).status,
      "written",
    );
  });
});

Deno.test("`finishParts()` takes a receipt that cannot be read for an error, not a missing part", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    await runPart(config, { baseDir: dir, part: { index: 0, count: 2 } });
    const { paths } = await where(dir, config, 2);
    // part 0's receipt replaced by a folder: reading it fails (EISDIR)
    await Deno.remove(paths(0).receipt);
    await Deno.mkdir(paths(0).receipt);
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.notEqual(e.code, "PARTS_MISSING");
    assert.match(e.message, /Cannot read/);
  });
});

Deno.test("`finishParts()` of an output whose name is too long for the file system says so, not that no part has run", async () => {
  await withTempDir(async (dir) => {
    const config = { ...(await smallModel(dir)), output: "o".repeat(300) };
    const e = await errorOf(finishParts(config, { baseDir: dir, count: 2 }));
    assert.equal(e.code, "FS_NAME_TOO_LONG");
  });
});

Deno.test("`runPart()` clears what a killed run of the same part left in its work folder, then writes the part", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const { paths } = await where(dir, config, 2);
    // killed mid-stage (no cleanup): the work folder still holds a folder with a half-written file
    await Deno.mkdir(join(paths(0).work, "sub"), { recursive: true });
    await Deno.writeTextFile(join(paths(0).work, "sub", "half.bin"), "x");
    const part = await runPart(config, { baseDir: dir, part: { index: 0, count: 2 } });
    assert.equal(part.status, "written");
    await assert.rejects(Deno.stat(paths(0).work), Deno.errors.NotFound);
  });
});

Deno.test("a part whose process exits as it reports its end keeps its receipt, and takes its lock file and work folder with it", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const { paths } = await where(dir, config, 2);
    const there = (path: string) => {
      try {
        Deno.statSync(path);
        return true;
      } catch {
        return false;
      }
    };
    let left: Record<string, boolean> = {};
    await runPart(config, {
      baseDir: dir,
      part: { index: 0, count: 2 },
      onEvent: (ev) => {
        if (ev.type !== "pipeline-end") return;
        globalThis.dispatchEvent(new Event("unload"));
        const { receipt, lock, work } = paths(0);
        left = { receipt: there(receipt), lock: there(lock), work: there(work) };
      },
    });
    assert.deepEqual(left, { receipt: true, lock: false, work: false });
  });
});

Deno.test("`finishParts()` lists every weight file in the writing stage's report, as a one-machine run does", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    const one = await runPipeline({ ...config, output: "one" }, { baseDir: dir });
    for (const index of [0, 1]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
    const split = await finishParts(config, { baseDir: dir, count: 2 });
    const files = (m: { stages: { name: string; report: Record<string, unknown> }[] }) =>
      m.stages.map((s) => [s.name, s.report.files]);
    assert.deepEqual(files(split.manifest), files(one.manifest));
    assert.equal((split.manifest.stages[1]!.report.files as unknown[]).length, 7);
  });
});

Deno.test("`finishParts()` names the first part that measured an item when a later part measured it differently", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    // every part measures "shared"; parts 0 and 1 alike, part 2 otherwise
    const measure = defineStage({
      name: "measure",
      summary: "measures one item in every part",
      split: "every-part",
      options: z.strictObject({}),
      run(ctx) {
        const value = ctx.part?.index === 2 ? 2 : 1;
        ctx.report("measure", { seen: [{ name: "shared", value }] });
        ctx.part?.gather({ key: "seen", by: "name", order: ["shared"] });
        return Promise.resolve();
      },
    });
    const stages = { ...(await builtinStages()), measure };
    const measured = { ...config, stages: [...config.stages, { use: "measure" }] };
    for (const index of [0, 1, 2]) {
      await runPart(measured, { baseDir: dir, stages, part: { index, count: 3 } });
    }
    const e = await errorOf(finishParts(measured, { baseDir: dir, stages, count: 3 }));
    assert.equal(e.code, "PARTS_MISMATCH");
    assert.match(e.message, /: parts 0 and 2 measured "shared" differently \(seen\)$/);
  });
});

Deno.test("`runPart()` that wrote its share leaves only its receipt in the bookkeeping folder: no work folder, no lock file", async () => {
  await withTempDir(async (dir) => {
    const config = await smallModel(dir);
    await runPart(config, { baseDir: dir, part: { index: 0, count: 2 } });
    const { folder } = await where(dir, config, 2);
    const left = await Array.fromAsync(Deno.readDir(join(folder, ".ckpt-split")));
    assert.deepEqual(left.map((e) => e.name), ["part-00000-of-00002.json"]);
  });
});
