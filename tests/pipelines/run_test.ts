import assert from "node:assert/strict";
import { join } from "node:path";
import { CkptError, isCkptError } from "../../errors.ts";
import { readManifest } from "../../pipelines/manifest.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { OutputLock } from "../../pipelines/_output_lock.ts";
import { outputKey } from "../../pipelines/_staging.ts";
import { round1 } from "../../pipelines/_stage_loop.ts";
import type { PipelineEvent } from "../../pipelines/stage.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { FAKE_STAGES } from "./_fake_stages.ts";

async function entries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

const base = { stages: FAKE_STAGES, env: {} };

Deno.test("`runPipeline()` runs stages in order, times them and writes a manifest", async () => {
  await withTempDir(async (dir) => {
    const events: PipelineEvent[] = [];
    const result = await runPipeline({
      output: "out",
      stages: [
        { use: "writeText", name: "a.txt", text: "abc" },
        { use: "fakeMerge" },
        { use: "writeText", name: "b.txt" },
      ],
    }, { ...base, baseDir: dir, onEvent: (e) => events.push(e), backend: "cpu" });
    assert.equal(result.output, join(dir, "out"));
    assert.deepEqual(await entries(dir), ["out"]);
    assert.deepEqual(await entries(join(dir, "out")), ["a.txt", "b.txt", "ckpt-manifest.json"]);
    assert.deepEqual(result.stages.map((s) => s.name), ["writeText", "fakeMerge", "writeText"]);
    const manifest = await readManifest(join(dir, "out"));
    assert.deepEqual(manifest.files.map((f) => [f.path, f.size]), [["a.txt", 3], ["b.txt", 5]]);
    assert.equal(
      manifest.files[0]!.sha256,
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
    assert.equal(manifest.backend, "cpu");
    assert.equal(manifest.dtype, "BF16");
    assert.equal(manifest.timings.stages.length, 3);
    assert.match(result.manifestSha256, /^[0-9a-f]{64}$/);
    assert.deepEqual(events.map((e) => e.type), [
      "pipeline-start",
      "stage-start",
      "progress",
      "stage-end",
      "stage-start",
      "stage-end",
      "stage-start",
      "progress",
      "stage-end",
      "pipeline-end",
    ]);
  });
});

Deno.test("`runPipeline()` refuses an existing output unless overwrite, then replaces it", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "out"));
    await Deno.writeTextFile(join(dir, "out", "old.txt"), "old");
    const cfg = { output: "out", stages: [{ use: "writeText", name: "new.txt" }] };
    await assert.rejects(
      () => runPipeline(cfg, { ...base, baseDir: dir }),
      (e: unknown) => isCkptError(e, "OUTPUT_EXISTS"),
    );
    assert.deepEqual(await entries(join(dir, "out")), ["old.txt"]);
    assert.deepEqual(await entries(dir), ["out"]);
    // A folder ckpt did not write (no manifest) is replaced only with force.
    await assert.rejects(
      () => runPipeline(cfg, { ...base, baseDir: dir, overwrite: true }),
      (e: unknown) => isCkptError(e, "OUTPUT_NOT_CKPT"),
    );
    assert.deepEqual(await entries(join(dir, "out")), ["old.txt"]);
    assert.deepEqual(await entries(dir), ["out"]);
    await runPipeline(cfg, { ...base, baseDir: dir, overwrite: true, force: true });
    assert.deepEqual(await entries(join(dir, "out")), ["ckpt-manifest.json", "new.txt"]);
    assert.deepEqual(await entries(dir), ["out"]);
    // A ckpt output is replaced with overwrite alone.
    const next = { output: "out", stages: [{ use: "writeText", name: "next.txt" }] };
    await runPipeline(next, { ...base, baseDir: dir, overwrite: true });
    assert.deepEqual(await entries(join(dir, "out")), ["ckpt-manifest.json", "next.txt"]);
    assert.deepEqual(await entries(dir), ["out"]);
  });
});

Deno.test("`runPipeline()` leaves no trace when a stage fails", async () => {
  await withTempDir(async (dir) => {
    const events: PipelineEvent[] = [];
    await assert.rejects(
      () =>
        runPipeline({
          output: "deep/er/out",
          stages: [{ use: "writeText", name: "a.txt" }, { use: "fail" }],
        }, { ...base, baseDir: dir, onEvent: (e) => events.push(e) }),
      (e: unknown) => isCkptError(e, "TENSOR_MISSING"),
    );
    assert.deepEqual(await entries(dir), []);
    const last = events[events.length - 1]!;
    assert.equal(last.type, "pipeline-error");
    assert.equal(last.type === "pipeline-error" && last.stage, "fail");
  });
});

Deno.test("`runPipeline()` aborts on the signal and removes its staging folder", async () => {
  await withTempDir(async (dir) => {
    const ac = new AbortController();
    const run = runPipeline(
      { output: "out", stages: [{ use: "writeText", name: "a.txt" }, { use: "wait" }] },
      {
        ...base,
        baseDir: dir,
        signal: ac.signal,
        onEvent: (e) => {
          if (e.type === "stage-start" && e.stage === "wait") setTimeout(() => ac.abort(), 20);
        },
      },
    );
    await assert.rejects(() => run, (e: unknown) => isCkptError(e, "ABORTED"));
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`runPipeline()` with dryRun plans files and writes nothing", async () => {
  await withTempDir(async (dir) => {
    const result = await runPipeline(
      { output: "out", stages: [{ use: "writeText", name: "a.txt", repeat: 4 }] },
      { ...base, baseDir: dir, dryRun: true },
    );
    assert.equal(result.dryRun, true);
    assert.deepEqual(result.files, [{ path: "a.txt", bytes: 20, stage: "writeText" }]);
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`runPipeline()` with dryRun plans while another run holds the output's lock: it takes no lock", async () => {
  await withTempDir(async (dir) => {
    const signal = new AbortController().signal;
    const held = await OutputLock.acquire(join(dir, "out"), { wait: false, signal });
    try {
      const result = await runPipeline(
        { output: "out", stages: [{ use: "writeText", name: "a.txt", repeat: 4 }] },
        { ...base, baseDir: dir, dryRun: true },
      );
      assert.deepEqual(result.files, [{ path: "a.txt", bytes: 20, stage: "writeText" }]);
    } finally {
      await held.release();
    }
  });
});

Deno.test("`runPipeline()` refuses an output inside an input folder", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "run"));
    await Deno.writeTextFile(join(dir, "run", "x"), "x");
    await assert.rejects(
      () =>
        runPipeline(
          { output: "run/FINAL", stages: [{ use: "writeText", name: "a", from: "run" }] },
          { ...base, baseDir: dir },
        ),
      (e: unknown) => isCkptError(e, "OUTPUT_INSIDE_INPUT"),
    );
    // ...and an output that would contain (and so replace) an input.
    await assert.rejects(
      () =>
        runPipeline(
          { output: ".", stages: [{ use: "writeText", name: "a", from: "run/x" }] },
          { ...base, baseDir: dir, overwrite: true },
        ),
      (e: unknown) => isCkptError(e, "OUTPUT_INSIDE_INPUT"),
    );
    assert.deepEqual(await entries(dir), ["run"]);
    assert.deepEqual(await entries(join(dir, "run")), ["x"]);
  });
});

Deno.test("`runPipeline()` records inputs and config vars in the manifest", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "in.txt"), "12345");
    const result = await runPipeline(
      {
        vars: { step: "0" },
        output: "out-${step}",
        stages: [{ use: "writeText", name: "a", from: "in.txt" }],
      },
      { ...base, baseDir: dir, vars: { step: "64" } },
    );
    assert.equal(result.output, join(dir, "out-64"));
    assert.deepEqual(result.manifest.inputs.map((i) => [i.path, i.role, i.size]), [
      [join(dir, "in.txt"), "source", 5],
    ]);
    assert.equal(result.manifest.config?.vars.step, "64");
  });
});

Deno.test("`runPipeline()` removes staging folders of dead runs, never a locked one", async () => {
  await withTempDir(async (dir) => {
    // Liveness is the folder's lock, not a PID: an unlocked folder is a dead run's...
    const key = outputKey("out");
    const stale = join(dir, `.ckpt-staging-${key}-deadbeef`);
    await Deno.mkdir(stale);
    await Deno.writeTextFile(join(stale, "part.bin"), "x");
    // ...and one whose lock is held (here by this process) is live, whatever its PID.
    const live = join(dir, `.ckpt-staging-${key}-0badf00d`);
    await Deno.mkdir(live);
    const held = await Deno.open(live, { read: true });
    assert.equal(await held.tryLock(true), true);
    // Another output's staging folder is not this run's business.
    const other = join(dir, `.ckpt-staging-${outputKey("other")}-deadbeef`);
    await Deno.mkdir(other);
    try {
      await runPipeline({ output: "out", stages: [{ use: "writeText", name: "a" }] }, {
        ...base,
        baseDir: dir,
      });
      assert.deepEqual(await entries(dir), [
        `.ckpt-staging-${key}-0badf00d`,
        `.ckpt-staging-${outputKey("other")}-deadbeef`,
        "out",
      ]);
    } finally {
      held.close();
    }
  });
});

Deno.test("`runPipeline()` abandons a stage that ignores the abort signal", async () => {
  await withTempDir(async (dir) => {
    const ac = new AbortController();
    let release!: () => void;
    const stuck = {
      ...FAKE_STAGES.fakeMerge!,
      name: "stuck",
      // The abort comes once the stage runs: a timer started with the pipeline could fire during
      // the preflight on a busy machine, before the stage (and `release`) ever existed.
      run: () =>
        new Promise<void>((r) => {
          release = r;
          setTimeout(() => ac.abort(new Error("SIGTERM")), 20);
        }),
    };
    const run = runPipeline({ output: "out", stages: [{ use: "stuck" }] }, {
      ...base,
      stages: { stuck },
      baseDir: dir,
      signal: ac.signal,
    });
    await assert.rejects(
      () => run,
      (e: unknown) => isCkptError(e, "ABORTED") && e.message.endsWith("aborted (SIGTERM)"),
    );
    assert.deepEqual(await entries(dir), []);
    release();
  });
});

Deno.test("`runPipeline()` stops at once when the abort comes as a stage starts, naming a string reason", async () => {
  await withTempDir(async (dir) => {
    const ac = new AbortController();
    let release!: () => void;
    // A stage that ignores the signal and only ends when the test releases it, after the run.
    const stuck = {
      ...FAKE_STAGES.fakeMerge!,
      name: "stuck",
      run: () => new Promise<void>((r) => release = r),
    };
    const run = runPipeline({ output: "out", stages: [{ use: "stuck" }] }, {
      ...base,
      stages: { stuck },
      baseDir: dir,
      signal: ac.signal,
      onEvent: (e) => {
        if (e.type === "stage-start") ac.abort("user cancelled");
      },
    });
    await assert.rejects(
      () => run,
      (e: unknown) => isCkptError(e, "ABORTED") && e.message.endsWith("aborted (user cancelled)"),
    );
    assert.deepEqual(await entries(dir), []);
    release();
  });
});

Deno.test("`round1()` rounds milliseconds to a tenth", () => {
  assert.deepEqual([round1(1.26), round1(1.24), round1(0.04), round1(1234.56)], [
    1.3,
    1.2,
    0,
    1234.6,
  ]);
});

Deno.test("`runPipeline()` runs every preflight before the first stage", async () => {
  await withTempDir(async (dir) => {
    const order: string[] = [];
    const checked = {
      ...FAKE_STAGES.fakeMerge!,
      name: "checked",
      preflight: () => {
        order.push("preflight");
        return Promise.reject(new CkptError("INPUT_MISSING", "Cannot read x: it does not exist"));
      },
    };
    const first = {
      ...FAKE_STAGES.fakeMerge!,
      run: () => {
        order.push("run");
        return Promise.resolve();
      },
    };
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "first" }, { use: "checked" }] }, {
          ...base,
          stages: { first, checked },
          baseDir: dir,
        }),
      (e: unknown) => isCkptError(e, "INPUT_MISSING"),
    );
    assert.deepEqual(order, ["preflight"]);
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`runPipeline()` hashes the final bytes of a file a later stage rewrote", async () => {
  await withTempDir(async (dir) => {
    const result = await runPipeline({
      output: "out",
      stages: [
        { use: "writeText", name: "a.txt", text: "abc" },
        { use: "wait", ms: 20 },
        { use: "writeText", name: "a.txt", text: "xyz" },
        { use: "writeText", name: "b.txt", text: "abcd" },
      ],
    }, { ...base, baseDir: dir });
    const sha = (await import("node:crypto")).createHash("sha256").update("xyz").digest("hex");
    const a = result.manifest.files.find((f) => f.path === "a.txt")!;
    assert.equal(a.sha256, sha);
    const { verifyCheckpoint } = await import("../../pipelines/verify.ts");
    assert.equal((await verifyCheckpoint(result.output)).ok, true);
  });
});

Deno.test("`runPipeline()` removes what an abandoned stage writes after the abort", async () => {
  await withTempDir(async (dir) => {
    const ac = new AbortController();
    const late = {
      ...FAKE_STAGES.fakeMerge!,
      name: "late",
      async run(ctx: { outDir: string }) {
        await new Promise((r) => setTimeout(r, 150));
        await Deno.mkdir(ctx.outDir, { recursive: true });
        await Deno.writeTextFile(`${ctx.outDir}/late.bin`, "written after the abort");
      },
    };
    const run = runPipeline({ output: "out", stages: [{ use: "late" }] }, {
      ...base,
      stages: { late },
      baseDir: dir,
      signal: ac.signal,
    });
    setTimeout(() => ac.abort(new Error("SIGINT")), 20);
    await assert.rejects(() => run, (e: unknown) => isCkptError(e, "ABORTED"));
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`runPipeline()` names the stage whose preflight failed in the error event", async () => {
  await withTempDir(async (dir) => {
    const events: PipelineEvent[] = [];
    const checked = {
      ...FAKE_STAGES.fakeMerge!,
      preflight: () => Promise.reject(new CkptError("INPUT_MISSING", "Cannot read x: missing")),
    };
    await assert.rejects(() =>
      runPipeline(
        { output: "out", stages: [{ use: "writeText", name: "a" }, { use: "checked" }] },
        {
          ...base,
          stages: { ...FAKE_STAGES, checked },
          baseDir: dir,
          onEvent: (e) => events.push(e),
        },
      )
    );
    const last = events[events.length - 1]!;
    assert.ok(last.type === "pipeline-error" && last.stage === "checked", JSON.stringify(last));
  });
});

Deno.test("`runPipeline()` restores an output an interrupted overwrite set aside", async () => {
  await withTempDir(async (dir) => {
    // A killed `--overwrite` run renamed the old output aside and died before renaming the new in.
    const aside = join(dir, `.ckpt-old-${outputKey("out")}-deadbeef`);
    await Deno.mkdir(aside);
    await Deno.writeTextFile(join(aside, "old.txt"), "previous export");
    await Deno.mkdir(join(dir, `.ckpt-staging-${outputKey("out")}-deadbeef`));
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "writeText", name: "a" }] }, {
          ...base,
          baseDir: dir,
        }),
      (e: unknown) => isCkptError(e, "OUTPUT_EXISTS"),
    );
    assert.deepEqual(await entries(dir), ["out"]);
    assert.equal(await Deno.readTextFile(join(dir, "out", "old.txt")), "previous export");
  });
});

Deno.test("`runPipeline()` loads a config from its path, paths relative to the config's folder", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "cfg"));
    await Deno.writeTextFile(
      join(dir, "cfg", "run.jsonc"),
      '// a comment\n{ "output": "out-${step}", "stages": [{ "use": "writeText", "name": "a.txt" }] }',
    );
    const result = await runPipeline(join(dir, "cfg", "run.jsonc"), {
      ...base,
      vars: { step: "7" },
    });
    assert.equal(result.output, join(dir, "cfg", "out-7"));
    assert.equal(await Deno.readTextFile(join(dir, "cfg", "out-7", "a.txt")), "hello");
  });
});

Deno.test("`runPipeline()` takes an empty string option for no path, not for the config's folder", async () => {
  await withTempDir(async (dir) => {
    // "" resolved against the config's folder would name that folder, which holds the output.
    const result = await runPipeline(
      { output: "out", stages: [{ use: "writeText", name: "a.txt", text: "" }] },
      { ...base, baseDir: dir },
    );
    assert.deepEqual(result.manifest.inputs, []);
    assert.equal(await Deno.readTextFile(join(dir, "out", "a.txt")), "");
  });
});

Deno.test("`runPipeline()` honours an abort that comes as the last stage ends, dry run or not: no output", async () => {
  for (const dryRun of [false, true]) {
    await withTempDir(async (dir) => {
      const ac = new AbortController();
      await assert.rejects(
        () =>
          runPipeline({ output: "out", stages: [{ use: "writeText", name: "a.txt" }] }, {
            ...base,
            baseDir: dir,
            dryRun,
            signal: ac.signal,
            onEvent: (e) => {
              if (e.type === "stage-end") ac.abort("too late?");
            },
          }),
        (e: unknown) => isCkptError(e, "ABORTED") && e.message.endsWith("aborted (too late?)"),
        `dryRun: ${dryRun}`,
      );
      assert.deepEqual(await entries(dir), []);
    });
  }
});

Deno.test("`runPipeline()` starts no further stage once an abort comes as a stage ends", async () => {
  await withTempDir(async (dir) => {
    const ac = new AbortController();
    let runs = 0;
    const counted = {
      ...FAKE_STAGES.fakeMerge!,
      name: "counted",
      run: () => (runs++, Promise.resolve()),
    };
    const started: number[] = [];
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "counted" }, { use: "counted" }] }, {
          ...base,
          stages: { counted },
          baseDir: dir,
          signal: ac.signal,
          onEvent: (e) => {
            if (e.type === "stage-start") started.push(e.index);
            if (e.type === "stage-end") ac.abort("enough");
          },
        }),
      (e: unknown) => isCkptError(e, "ABORTED") && e.message.endsWith("aborted (enough)"),
    );
    assert.equal(runs, 1);
    assert.deepEqual(started, [0]);
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`runPipeline()` reports its time as a duration within the time around the call, dry run or not", async () => {
  for (const dryRun of [false, true]) {
    await withTempDir(async (dir) => {
      const before = performance.now();
      const result = await runPipeline(
        { output: "out", stages: [{ use: "writeText", name: "a.txt" }] },
        { ...base, baseDir: dir, dryRun },
      );
      const around = performance.now() - before;
      const total = result.manifest.timings.totalMs;
      assert.ok(result.ms >= 0 && result.ms <= around, `dryRun ${dryRun}: ms ${result.ms}`);
      assert.ok(total >= 0 && total <= Math.ceil(around), `dryRun ${dryRun}: totalMs ${total}`);
    });
  }
});

Deno.test("`runPipeline()` refuses an existing empty output folder without overwrite", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "out"));
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "writeText", name: "a.txt" }] }, {
          ...base,
          baseDir: dir,
        }),
      (e: unknown) => isCkptError(e, "OUTPUT_EXISTS"),
    );
    assert.deepEqual(await entries(join(dir, "out")), []);
    assert.deepEqual(await entries(dir), ["out"]);
  });
});

Deno.test("`runPipeline()` codes an OS error a stage lets escape by its kind, naming the path", async () => {
  await withTempDir(async (dir) => {
    const reads = {
      ...FAKE_STAGES.fakeMerge!,
      name: "reads",
      run: async () => {
        await Deno.readTextFile(join(dir, "no-such-input.txt"));
      },
    };
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "reads" }] }, {
          ...base,
          stages: { reads },
          baseDir: dir,
        }),
      (e: unknown) =>
        isCkptError(e) && e.code !== "STAGE_FAILED" && e.message.includes("no-such-input.txt"),
    );
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`runPipeline()` reports an abort during a preflight as ABORTED, whatever the reason or the preflight's own error", async () => {
  // A reason that is itself a coded error must not pass for the run's error.
  for (const reason of ["stop", new CkptError("TENSOR_MISSING", "Cannot go on: stop")]) {
    await withTempDir(async (dir) => {
      const ac = new AbortController();
      const checks = {
        ...FAKE_STAGES.fakeMerge!,
        name: "checks",
        preflight: () => {
          ac.abort(reason);
          return Promise.reject(new Error("the check broke as the run stopped"));
        },
      };
      await assert.rejects(
        () =>
          runPipeline({ output: "out", stages: [{ use: "checks" }] }, {
            ...base,
            stages: { checks },
            baseDir: dir,
            signal: ac.signal,
          }),
        (e: unknown) => isCkptError(e, "ABORTED") && e.message.includes("aborted ("),
        String(reason),
      );
      assert.deepEqual(await entries(dir), []);
    });
  }
});
