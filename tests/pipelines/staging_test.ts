/**
 * The runner's staging folder and output lock: what lands is exactly what the stages reported,
 * a second run on one output is refused (or waits), names of any legal length work, and an
 * output is compared with its inputs by real path.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { z } from "zod";
import { isCkptError } from "../../errors.ts";
import { FileLock } from "../../pipelines/lock.ts";
import { readManifest } from "../../pipelines/manifest.ts";
import { runPipeline } from "../../pipelines/run.ts";
import type { Stage } from "../../pipelines/stage.ts";
import { outputLockPath } from "../../pipelines/_output_lock.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { FAKE_STAGES } from "./_fake_stages.ts";

async function entries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

const base = { stages: FAKE_STAGES, env: {} };

/** A stage that writes what `write` does and reports `files`. */
function custom(
  write: (dir: string) => Promise<void>,
  files: Array<{ path: string; bytes?: number }>,
): Stage {
  return {
    name: "custom",
    summary: "writes and reports what the test says",
    options: z.strictObject({}),
    async run(ctx) {
      ctx.report("custom", { files });
      if (!ctx.dryRun) await write(ctx.outDir);
    },
  };
}

async function runCustom(dir: string, stage: Stage) {
  return await runPipeline({ output: "out", stages: [{ use: "custom" }] }, {
    stages: { custom: stage },
    env: {},
    baseDir: dir,
  });
}

Deno.test("the manifest lists exactly the reported files, in subfolders too", async () => {
  await withTempDir(async (dir) => {
    const stage = custom(async (d) => {
      await Deno.mkdir(join(d, "sub"));
      await Deno.writeTextFile(join(d, "sub", "x.txt"), "xx");
      await Deno.writeTextFile(join(d, "a.txt"), "a");
    }, [{ path: "a.txt", bytes: 1 }, { path: "sub/x.txt", bytes: 2 }]);
    const result = await runCustom(dir, stage);
    assert.deepEqual(result.manifest.files.map((f) => [f.path, f.size]), [
      ["a.txt", 1],
      ["sub/x.txt", 2],
    ]);
    assert.deepEqual(result.files.map((f) => f.stage), ["custom", "custom"]);
    assert.deepEqual((await readManifest(join(dir, "out"))).files.length, 2);
  });
});

Deno.test("anything in staging no stage reported fails the run with STAGING_UNREPORTED", async (t) => {
  const cases: Array<[string, string, (d: string) => Promise<void>]> = [
    ["an extra file", "file", (d) => Deno.writeTextFile(join(d, "extra.txt"), "?")],
    ["an empty folder", "folder", (d) => Deno.mkdir(join(d, "empty"))],
    ["a symlink", "symlink", (d) => Deno.symlink("a.txt", join(d, "adapter_config.json"))],
    ["a FIFO", "entry", async (d) => {
      const mk = await new Deno.Command("mkfifo", { args: [join(d, "pipe")] }).output();
      assert.ok(mk.success);
    }],
  ];
  for (const [what, kind, extra] of cases) {
    await t.step(what, async () => {
      await withTempDir(async (dir) => {
        const stage = custom(async (d) => {
          await Deno.writeTextFile(join(d, "a.txt"), "a");
          await extra(d);
        }, [{ path: "a.txt", bytes: 1 }]);
        await assert.rejects(
          () => runCustom(dir, stage),
          (e: unknown) =>
            isCkptError(e, "STAGING_UNREPORTED") && e.details?.kind === kind &&
            e.message.includes(`the ${kind} "`),
        );
        assert.deepEqual(await entries(dir), []);
      });
    });
  }
});

Deno.test("a reported file missing, of another size or outside the folder is STAGING_MISMATCH", async (t) => {
  const cases: Array<[string, Array<{ path: string; bytes?: number }>]> = [
    ["missing", [{ path: "a.txt", bytes: 1 }, { path: "b.txt", bytes: 1 }]],
    ["another size", [{ path: "a.txt", bytes: 7 }]],
    ["outside", [{ path: "a.txt", bytes: 1 }, { path: "../a.txt" }]],
  ];
  for (const [what, files] of cases) {
    await t.step(what, async () => {
      await withTempDir(async (dir) => {
        const stage = custom((d) => Deno.writeTextFile(join(d, "a.txt"), "a"), files);
        await assert.rejects(
          () => runCustom(dir, stage),
          (e: unknown) => isCkptError(e, "STAGING_MISMATCH"),
        );
        assert.deepEqual(await entries(dir), []);
      });
    });
  }
  // A file reported without a size is only checked to exist.
  await withTempDir(async (dir) => {
    const stage = custom((d) => Deno.writeTextFile(join(d, "a.txt"), "abc"), [{ path: "a.txt" }]);
    assert.equal((await runCustom(dir, stage)).manifest.files[0]?.size, 3);
  });
});

Deno.test("a symlink a stage reported writing is STAGING_MISMATCH: no output holds a symlink", async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, "elsewhere.json");
    await Deno.writeTextFile(target, "{}");
    const stage = custom(async (d) => {
      await Deno.writeTextFile(join(d, "a.txt"), "a");
      await Deno.symlink(target, join(d, "adapter_config.json"));
    }, [{ path: "a.txt", bytes: 1 }, { path: "adapter_config.json", bytes: 2 }]);
    await assert.rejects(
      () => runCustom(dir, stage),
      (e: unknown) => isCkptError(e, "STAGING_MISMATCH") && /not a regular file/.test(e.message),
    );
    assert.deepEqual(await entries(dir), ["elsewhere.json"]);
  });
});

Deno.test("a second run on a locked output fails with OUTPUT_LOCKED naming the holder, or waits", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    const held = await FileLock.tryAcquire(outputLockPath(out), "a test holding it");
    assert.ok(held);
    const cfg = { output: "out", stages: [{ use: "writeText", name: "a" }] };
    await assert.rejects(
      () => runPipeline(cfg, { ...base, baseDir: dir }),
      (e: unknown) =>
        isCkptError(e, "OUTPUT_LOCKED") &&
        e.message.includes(`pid ${Deno.pid} on ${Deno.hostname()} since `) &&
        e.details?.pid === Deno.pid,
    );
    assert.deepEqual(await entries(dir), [outputLockPath(out).slice(dir.length + 1)]);
    // With wait, the run starts once the holder lets go.
    const waiting = runPipeline(cfg, { ...base, baseDir: dir, wait: true });
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await entries(dir), [outputLockPath(out).slice(dir.length + 1)]);
    await held.release();
    const result = await waiting;
    assert.equal(result.output, out);
    assert.deepEqual(await entries(dir), ["out"]);
    // A waiting run is aborted by its signal.
    const again = await FileLock.tryAcquire(outputLockPath(out));
    assert.ok(again);
    const ac = new AbortController();
    const aborted = runPipeline(cfg, {
      ...base,
      baseDir: dir,
      wait: true,
      overwrite: true,
      signal: ac.signal,
    });
    setTimeout(() => ac.abort(new Error("SIGTERM")), 100);
    await assert.rejects(() => aborted, (e: unknown) => isCkptError(e, "ABORTED"));
    await again.release({ remove: true });
    assert.deepEqual(await entries(dir), ["out"]);
  });
});

Deno.test("any legal output name works: 226 to 255 characters", async () => {
  await withTempDir(async (dir) => {
    for (const n of [226, 255]) {
      const name = "n".repeat(n);
      const result = await runPipeline(
        { output: name, stages: [{ use: "writeText", name: "a" }] },
        { ...base, baseDir: dir },
      );
      assert.equal(result.output, join(dir, name));
    }
    assert.deepEqual(await entries(dir), ["n".repeat(226), "n".repeat(255)]);
    // 256 is too long for the file system: a coded error, before anything is written.
    await assert.rejects(
      () =>
        runPipeline({ output: "n".repeat(256), stages: [{ use: "writeText", name: "a" }] }, {
          ...base,
          baseDir: dir,
        }),
      (e: unknown) => isCkptError(e, "FS_NAME_TOO_LONG"),
    );
    assert.deepEqual(await entries(dir), ["n".repeat(226), "n".repeat(255)]);
  });
});

Deno.test("an output reached through a symlinked parent is still inside its input", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "run", "base"), { recursive: true });
    await Deno.writeTextFile(join(dir, "run", "base", "w.txt"), "weights");
    await Deno.writeTextFile(join(dir, "run", "base", "ckpt-manifest.json"), "{}");
    await Deno.symlink(join(dir, "run"), join(dir, "link"));
    // `--out link/base --overwrite` would replace the input base folder.
    await assert.rejects(
      () =>
        runPipeline(
          { output: "link/base", stages: [{ use: "writeText", name: "a", from: "run/base" }] },
          { ...base, baseDir: dir, overwrite: true },
        ),
      (e: unknown) => isCkptError(e, "OUTPUT_INSIDE_INPUT") && /really/.test(e.message),
    );
    // ...and an output folder under the input through the link.
    await assert.rejects(
      () =>
        runPipeline(
          { output: "link/base/new/out", stages: [{ use: "writeText", name: "a", from: "run" }] },
          { ...base, baseDir: dir },
        ),
      (e: unknown) => isCkptError(e, "OUTPUT_INSIDE_INPUT"),
    );
    assert.deepEqual(await entries(join(dir, "run", "base")), ["ckpt-manifest.json", "w.txt"]);
    assert.deepEqual(await entries(dir), ["link", "run"]);
  });
});

Deno.test("a failed run removes the parent folders it created, and only those", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(() =>
      runPipeline({ output: "a/b/out", stages: [{ use: "fail" }] }, { ...base, baseDir: dir })
    );
    assert.deepEqual(await entries(dir), []);
    await runPipeline({ output: "a/b/out", stages: [{ use: "writeText", name: "x" }] }, {
      ...base,
      baseDir: dir,
    });
    assert.deepEqual(await entries(join(dir, "a", "b")), ["out"]);
    // A dry run creates nothing: no folder, no lock.
    await runPipeline({ output: "c/out", stages: [{ use: "writeText", name: "x" }] }, {
      ...base,
      baseDir: dir,
      dryRun: true,
    });
    assert.deepEqual(await entries(dir), ["a"]);
  });
});

Deno.test("a reported path that is not plain and relative is STAGING_MISMATCH, even when the file it names exists", async (t) => {
  const cases: Array<[string, (dir: string) => string, (d: string) => Promise<void>]> = [
    [
      "through .. to a file beside the staging folder",
      () => "../beside.txt",
      (d) => Deno.writeTextFile(join(d, "..", "beside.txt"), "a"),
    ],
    ["absolute, to a file that exists", (dir) => join(dir, "abs.txt"), () => Promise.resolve()],
    ["with an empty segment", () => "sub//x.txt", async (d) => {
      await Deno.mkdir(join(d, "sub"));
      await Deno.writeTextFile(join(d, "sub", "x.txt"), "a");
    }],
    ["empty: the folder itself", () => "", () => Promise.resolve()],
  ];
  for (const [what, path, write] of cases) {
    await t.step(what, async () => {
      await withTempDir(async (dir) => {
        await Deno.writeTextFile(join(dir, "abs.txt"), "a");
        const stage = custom(write, [{ path: path(dir) }]);
        await assert.rejects(
          () => runCustom(dir, stage),
          (e: unknown) =>
            isCkptError(e, "STAGING_MISMATCH") && e.details?.path === path(dir) &&
            e.message.includes("not a plain relative path"),
        );
        assert.ok(!(await entries(dir)).includes("out"));
      });
    });
  }
});
