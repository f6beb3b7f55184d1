/**
 * What the runner's shared parts do at edges a held-out mutation sample (seed 3) found open: a
 * stage's reports merged (files added up, anything else replaced), inputs recorded with a size
 * only when they are files, a raw config validated even when it carries a baseDir, the error a
 * failed run ends with, and the staging folder's lock refused or taken twice; and where the
 * exploratory sample (seed 101) found them open: realPathOf without read permission, and each way
 * checkOutputAgainst compares paths (as written, real paths, device/inode) catching a case the
 * others miss.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { CkptError, isCkptError } from "../../errors.ts";
import { runPipeline } from "../../pipelines/run.ts";
import type { Stage } from "../../pipelines/stage.ts";
import { runError } from "../../pipelines/_run_shared.ts";
import { exists, StagingFolder } from "../../pipelines/_staging.ts";
import { checkOutputAgainst, realPathOf } from "../../pipelines/_context.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { FAKE_STAGES } from "./_fake_stages.ts";

const twice: Stage = {
  name: "twice",
  summary: "reports in two calls",
  options: z.strictObject({}),
  async run(ctx) {
    ctx.report("twice", { files: [{ path: "a.txt", bytes: 1 }], notes: ["first"] });
    ctx.report("twice", { files: [{ path: "b.txt", bytes: 1 }], notes: ["second"] });
    if (ctx.dryRun) return;
    await Deno.writeTextFile(join(ctx.outDir, "a.txt"), "a");
    await Deno.writeTextFile(join(ctx.outDir, "b.txt"), "b");
  },
};

Deno.test("a stage reporting twice: its files add up, any other field takes the last value", async () => {
  await withTempDir(async (dir) => {
    const r = await runPipeline({ output: "out", stages: [{ use: "twice" }] }, {
      stages: { ...FAKE_STAGES, twice },
      env: {},
      baseDir: dir,
    });
    assert.deepEqual(r.manifest.files.map((f) => f.path), ["a.txt", "b.txt"]);
    const report = r.manifest.stages[0]!.report as { files: unknown[]; notes: string[] };
    assert.equal(report.files.length, 2);
    assert.deepEqual(report.notes, ["second"]);
  });
});

Deno.test("the manifest records an input file with its size, an input folder without one", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "src.txt"), "12345");
    await Deno.mkdir(join(dir, "srcdir"));
    const r = await runPipeline({
      output: "out",
      stages: [
        { use: "writeText", name: "a.txt", from: "src.txt" },
        { use: "writeText", name: "b.txt", from: "srcdir" },
      ],
    }, { stages: FAKE_STAGES, env: {}, baseDir: dir });
    const inputs = r.manifest.inputs.map((i) => [i.path.slice(dir.length + 1), i.size]);
    assert.deepEqual(inputs, [["src.txt", 5], ["srcdir", undefined]]);
  });
});

Deno.test("`runPipeline()` validates a raw config even when it carries a baseDir", async () => {
  await withTempDir(async (dir) => {
    const raw = { output: "out", baseDir: dir, stages: [{ use: "writeText", name: "a.txt" }] };
    await assert.rejects(
      () => runPipeline(raw as never, { stages: FAKE_STAGES, env: {}, baseDir: dir }),
      (e: unknown) => isCkptError(e) && e.code.startsWith("CONFIG_"),
    );
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
  });
});

Deno.test("`runError()` codes an OS error, turns anything uncoded after an abort into ABORTED, and keeps a coded error", () => {
  const live = new AbortController().signal;
  const gone = Object.assign(new Error("No such file or directory (os error 2)"), {
    code: "ENOENT",
  });
  const os = runError(gone, live, "/x/out");
  assert.ok(isCkptError(os) && os.code === "FS_ERROR" && os.message.includes("/x/out"), String(os));
  const full = Object.assign(new Error("No space left on device (os error 28)"), {
    code: "ENOSPC",
  });
  assert.ok(isCkptError(runError(full, live, "/x/out"), "FS_NO_SPACE"));
  const coded = new CkptError("TENSOR_MISSING", "Cannot go on: test");
  assert.equal(runError(coded, live, "/x/out"), coded);
  const plain = new TypeError("a bug");
  assert.equal(runError(plain, live, "/x/out"), plain);
  const ac = new AbortController();
  ac.abort(new Error("SIGTERM"));
  assert.ok(isCkptError(runError(plain, ac.signal, "/x/out"), "ABORTED"));
  assert.equal(runError(coded, ac.signal, "/x/out"), coded);
});

Deno.test("`exists()` answers for a missing path and a path through a file, and codes a name too long", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "f"), "x");
    assert.equal(await exists(join(dir, "f")), true);
    assert.equal(await exists(join(dir, "missing")), false);
    assert.equal(await exists(join(dir, "f", "below")), false); // NotADirectory
    await assert.rejects(
      () => exists(join(dir, "n".repeat(300))),
      (e: unknown) => isCkptError(e, "FS_NAME_TOO_LONG"),
    );
  });
});

Deno.test("`StagingFolder.adopt()` refuses a folder another holder has locked, or that is not there", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "shared");
    await Deno.mkdir(folder);
    const first = await StagingFolder.adopt(join(dir, "out"), folder);
    await assert.rejects(
      () => StagingFolder.adopt(join(dir, "out"), folder),
      (e: unknown) => isCkptError(e, "OUTPUT_LOCKED"),
    );
    first.release();
    (await StagingFolder.adopt(join(dir, "out"), folder)).release();
    await assert.rejects(
      () => StagingFolder.adopt(join(dir, "out"), join(dir, "missing")),
      (e: unknown) => isCkptError(e, "OUTPUT_LOCKED"),
    );
  });
});

Deno.test("`StagingFolder.create()` on a file system that refuses the lock is OUTPUT_LOCKED and leaves nothing", async () => {
  await withTempDir(async (dir) => {
    // a file system without flock: every tryLock says no (replaced for this test only)
    const proto = Deno.FsFile.prototype as { tryLock: (exclusive?: boolean) => Promise<boolean> };
    const real = proto.tryLock;
    proto.tryLock = () => Promise.resolve(false);
    try {
      await assert.rejects(
        () => StagingFolder.create(join(dir, "out"), { dryRun: false }),
        (e: unknown) => isCkptError(e, "OUTPUT_LOCKED"),
      );
    } finally {
      proto.tryLock = real;
    }
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
  });
});

Deno.test("`realPathOf()` resolves the symlinks of a path's nearest existing folder and appends the rest", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "real"));
    await Deno.symlink(join(dir, "real"), join(dir, "link"));
    const real = Deno.realPathSync(join(dir, "real"));
    assert.equal(realPathOf(join(dir, "link", "new", "out")), join(real, "new", "out"));
    assert.equal(realPathOf(join(dir, "link")), real);
  });
});

Deno.test("`realPathOf()` in a process that may read nothing gives the path as written: no folder, not even the root, resolves", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "real"));
    await Deno.symlink(join(dir, "real"), join(dir, "link"));
    const path = join(dir, "link", "out");
    assert.equal(realPathOf(path), join(Deno.realPathSync(join(dir, "real")), "out"));
    const script = join(dir, "real_path_of.ts");
    const module = JSON.stringify(import.meta.resolve("../../pipelines/_context.ts"));
    await Deno.writeTextFile(
      script,
      `import { realPathOf } from ${module};\nconsole.log(realPathOf(${JSON.stringify(path)}));\n`,
    );
    const config = fileURLToPath(import.meta.resolve("../../deno.json"));
    const ac = new AbortController();
    const guard = setTimeout(() => ac.abort(), 60_000); // a realPathOf that loops fails here
    try {
      const child = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--no-prompt", "--config", config, script], // no --allow-read
        stdout: "piped",
        stderr: "piped",
        signal: ac.signal,
      }).output();
      const stderr = new TextDecoder().decode(child.stderr);
      assert.equal(new TextDecoder().decode(child.stdout), `${path}\n`, stderr);
    } finally {
      clearTimeout(guard);
    }
  });
});

/** Where `checkOutputAgainst()` places `output`: "is inside" or "contains" the input, or "apart". */
function placed(output: string, input: string): string {
  try {
    checkOutputAgainst(output, input, "folder");
    return "apart";
  } catch (e) {
    if (!isCkptError(e, "OUTPUT_INSIDE_INPUT")) throw e;
    return / it (is inside|contains) the input /.exec(e.message)?.[1] ?? e.message;
  }
}

Deno.test("`checkOutputAgainst()` goes by the path as written too: a symlink inside the input or the output that leads elsewhere does not hide one in the other", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "elsewhere"));
    await Deno.writeTextFile(join(dir, "elsewhere", "model"), "x");
    await Deno.mkdir(join(dir, "in"));
    await Deno.symlink(join(dir, "elsewhere"), join(dir, "in", "a"));
    assert.equal(placed(join(dir, "in", "a", "out"), join(dir, "in")), "is inside");
    await Deno.mkdir(join(dir, "out"));
    await Deno.symlink(join(dir, "elsewhere"), join(dir, "out", "a"));
    assert.equal(placed(join(dir, "out"), join(dir, "out", "a", "model")), "contains");
  });
});

Deno.test("`checkOutputAgainst()` resolves the symlinked parents of paths not there yet: an input a stage records before it reads it", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "real"));
    await Deno.symlink(join(dir, "real"), join(dir, "link"));
    assert.equal(placed(join(dir, "real", "in", "out"), join(dir, "link", "in")), "is inside");
    assert.equal(placed(join(dir, "real", "out"), join(dir, "link", "out", "model")), "contains");
    assert.equal(placed(join(dir, "real", "out"), join(dir, "link", "in")), "apart");
  });
});

Deno.test("`checkOutputAgainst()` refuses an output that is the input under another name (a hard link) as inside it, as it does the same path", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "model"), "x");
    await Deno.link(join(dir, "model"), join(dir, "out"));
    assert.equal(placed(join(dir, "model"), join(dir, "model")), "is inside");
    assert.equal(placed(join(dir, "out"), join(dir, "model")), "is inside");
  });
});

Deno.test("`runPipeline()` takes an option of any length that names an existing path for an input: 4,202 characters refuse the output inside it", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "in"));
    for (const text of ["in", `${"./".repeat(2100)}in`]) {
      await assert.rejects(
        () =>
          runPipeline({ output: "in/out", stages: [{ use: "writeText", name: "a.txt", text }] }, {
            stages: FAKE_STAGES,
            env: {},
            baseDir: dir,
          }),
        (e: unknown) => isCkptError(e, "OUTPUT_INSIDE_INPUT"),
        `an option of ${text.length} characters`,
      );
      assert.deepEqual(await Array.fromAsync(Deno.readDir(join(dir, "in"))), []);
    }
  });
});

/** Writes a.txt and feeds its bytes to the output hasher while writing it. */
const fed: Stage = {
  name: "fed",
  summary: "writes a.txt, hashed while written",
  options: z.strictObject({}),
  async run(ctx) {
    const bytes = new TextEncoder().encode("abc");
    ctx.report("fed", { files: [{ path: "a.txt", bytes: 3 }] });
    if (ctx.dryRun) return;
    await Deno.writeFile(join(ctx.outDir, "a.txt"), bytes);
    await ctx.onOutputBytes?.("a.txt", bytes);
  },
};

Deno.test("`runPipeline()` honours an abort that comes after the manifest is written, just before the rename: no output", async () => {
  await withTempDir(async (dir) => {
    const ac = new AbortController();
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "fed" }] }, {
          stages: { ...FAKE_STAGES, fed },
          env: {},
          baseDir: dir,
          signal: ac.signal,
          // the hashing summary comes once the manifest is built, before it is written and renamed
          onEvent: (e) => {
            if (e.type === "log" && e.message.startsWith("output hashes")) ac.abort(new Error("x"));
          },
        }),
      (e: unknown) => isCkptError(e, "ABORTED"),
    );
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
  });
});

Deno.test("`runPipeline()` with a signal aborted before it starts touches nothing, not even a dead run's staging folder", async () => {
  await withTempDir(async (dir) => {
    const ac = new AbortController();
    ac.abort(new Error("SIGTERM"));
    // a dead run's staging folder for this output: unlocked, so a live run would remove it
    const dead = await StagingFolder.create(join(dir, "out"), { dryRun: false });
    dead.release();
    const before = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name);
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "writeText", name: "a.txt" }] }, {
          stages: FAKE_STAGES,
          env: {},
          baseDir: dir,
          signal: ac.signal,
        }),
      (e: unknown) => isCkptError(e, "ABORTED"),
    );
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name), before);
  });
});

/** A stage during which a folder holding `file` appears at the output "out" (another writer). */
function appearsAtOutput(file: string, text: string): Stage {
  return {
    name: "appear",
    summary: `a folder holding ${file} appears at the output meanwhile`,
    options: z.strictObject({}),
    async run(ctx) {
      ctx.report("appear", { files: [] });
      if (ctx.dryRun) return;
      await Deno.mkdir(join(ctx.baseDir, "out"));
      await Deno.writeTextFile(join(ctx.baseDir, "out", file), text);
    },
  };
}

Deno.test("`runPipeline()` without overwrite never replaces an output that appeared while it ran, even one ckpt wrote", async () => {
  const appear = appearsAtOutput("ckpt-manifest.json", "{}");
  await withTempDir(async (dir) => {
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "appear" }] }, {
          stages: { ...FAKE_STAGES, appear },
          env: {},
          baseDir: dir,
        }),
      (e: unknown) => isCkptError(e, "OUTPUT_EXISTS"),
    );
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(join(dir, "out")))).map((e) => e.name),
      ["ckpt-manifest.json"],
    );
  });
});

Deno.test("`runPipeline()` with overwrite but not force never replaces an output that appeared meanwhile without a ckpt manifest", async () => {
  const appear = appearsAtOutput("theirs.txt", "x");
  await withTempDir(async (dir) => {
    await assert.rejects(
      () =>
        runPipeline({ output: "out", stages: [{ use: "appear" }] }, {
          stages: { ...FAKE_STAGES, appear },
          env: {},
          baseDir: dir,
          overwrite: true,
        }),
      (e: unknown) => isCkptError(e, "OUTPUT_NOT_CKPT"),
    );
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(join(dir, "out")))).map((e) => e.name),
      ["theirs.txt"],
    );
  });
});

Deno.test("`runPipeline()` gives a one-machine run's stages a context without a `part` key at all, as the StageContext doc says", async () => {
  const seen: boolean[] = [];
  const probe: Stage = {
    name: "probe",
    summary: "records whether its context has a `part` key",
    options: z.strictObject({}),
    run(ctx) {
      seen.push("part" in ctx);
      return Promise.resolve();
    },
  };
  await withTempDir(async (dir) => {
    await runPipeline({
      output: "out",
      stages: [{ use: "probe" }, { use: "writeText", name: "a.txt" }],
    }, { stages: { ...FAKE_STAGES, probe }, env: {}, baseDir: dir });
  });
  assert.deepEqual(seen, [false]);
});
