/**
 * `StagingFolder` itself, below the runner: what a dry run touches (nothing), how a folder lands
 * (a rename; with `overwrite`, the old output set aside and removed, or put back when the new one
 * cannot go in), what each way of letting it go leaves behind, and the output that appears
 * between the existence check and the rename. Renames that fail are injected by replacing
 * `Deno.rename` for the one call.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import { exists, StagingFolder } from "../../pipelines/_staging.ts";
import { MANIFEST_NAME } from "../../pipelines/_staging_contents.ts";
import { withTempDir } from "../_helpers/tmp.ts";

async function entries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

/** A staging folder for `<dir>/out` holding `new.txt`. */
async function staged(dir: string): Promise<StagingFolder> {
  const staging = await StagingFolder.create(join(dir, "out"), { dryRun: false });
  await Deno.writeTextFile(join(staging.path, "new.txt"), "new");
  return staging;
}

/** Runs `fn` with `Deno.rename` replaced by `fake` (given the real one). */
async function withRename<T>(
  fake: (real: typeof Deno.rename, from: string | URL, to: string | URL) => Promise<void>,
  fn: () => Promise<T>,
): Promise<T> {
  const real = Deno.rename;
  const deno = Deno as { rename: typeof Deno.rename };
  deno.rename = (from, to) => fake(real, from, to);
  try {
    return await fn();
  } finally {
    deno.rename = real;
  }
}

/** An output ckpt wrote earlier: a manifest and `old.txt`. */
async function oldOutput(dir: string): Promise<void> {
  await Deno.mkdir(join(dir, "out"));
  await Deno.writeTextFile(join(dir, "out", "old.txt"), "old");
  await Deno.writeTextFile(join(dir, "out", MANIFEST_NAME), "{}");
}

Deno.test("`StagingFolder.create()` in a dry run creates nothing, and its discard removes nothing", async () => {
  await withTempDir(async (dir) => {
    const staging = await StagingFolder.create(join(dir, "out"), { dryRun: true });
    assert.deepEqual(await entries(dir), []);
    // even a folder that took its name is not the dry run's to remove
    await Deno.mkdir(staging.path);
    await staging.discard(Promise.resolve());
    staging.discardSync();
    assert.equal(await exists(staging.path), true);
  });
});

Deno.test("`commit()` renames the folder into place, leaving nothing beside the output", async () => {
  await withTempDir(async (dir) => {
    const staging = await staged(dir);
    await staging.commit({ overwrite: false, force: false });
    assert.deepEqual(await entries(dir), ["out"]);
    assert.deepEqual(await entries(join(dir, "out")), ["new.txt"]);
  });
});

Deno.test("`commit()` of a staging folder that vanished is the rename's coded error, not OUTPUT_EXISTS", async () => {
  await withTempDir(async (dir) => {
    const staging = await staged(dir);
    await Deno.remove(staging.path, { recursive: true });
    await assert.rejects(
      () => staging.commit({ overwrite: true, force: true }),
      (e: unknown) => isCkptError(e) && e.code === "FS_ERROR" && e.message.includes("rename"),
    );
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`commit()` refuses an output that appears between its check and its rename: OUTPUT_EXISTS, or OUTPUT_NOT_CKPT with overwrite", async () => {
  await withTempDir(async (dir) => {
    // another program creates the output just before the rename, which then fails
    const race = async (real: typeof Deno.rename, from: string | URL, to: string | URL) => {
      await Deno.mkdir(to);
      await Deno.writeTextFile(join(String(to), "theirs.txt"), "theirs");
      await real(from, to);
    };
    const staging = await staged(dir);
    await withRename(race, async () => {
      await assert.rejects(
        () => staging.commit({ overwrite: false, force: false }),
        (e: unknown) => isCkptError(e, "OUTPUT_EXISTS"),
      );
    });
    await Deno.remove(join(dir, "out"), { recursive: true });
    await withRename(race, async () => {
      await assert.rejects(
        () => staging.commit({ overwrite: true, force: false }),
        (e: unknown) => isCkptError(e, "OUTPUT_NOT_CKPT"),
      );
    });
    // their output is untouched, the staging folder still there to discard
    assert.deepEqual(await entries(join(dir, "out")), ["theirs.txt"]);
    assert.deepEqual(await entries(staging.path), ["new.txt"]);
  });
});

Deno.test("`commit()` with overwrite replaces a ckpt output and removes the old one it set aside", async () => {
  await withTempDir(async (dir) => {
    await oldOutput(dir);
    const staging = await staged(dir);
    await staging.commit({ overwrite: true, force: false });
    assert.deepEqual(await entries(dir), ["out"]);
    assert.deepEqual(await entries(join(dir, "out")), ["new.txt"]);
    // settled: letting it go afterwards touches nothing
    await staging.discard(Promise.resolve());
    staging.discardSync();
    assert.deepEqual(await entries(join(dir, "out")), ["new.txt"]);
  });
});

Deno.test("`commit()` with overwrite puts the old output back when the new one cannot be renamed in", async () => {
  await withTempDir(async (dir) => {
    await oldOutput(dir);
    const staging = await staged(dir);
    const failing = (real: typeof Deno.rename, from: string | URL, to: string | URL) =>
      String(from) === staging.path
        ? Promise.reject(Object.assign(new Error("No space left on device"), { code: "ENOSPC" }))
        : real(from, to);
    await withRename(failing, async () => {
      await assert.rejects(
        () => staging.commit({ overwrite: true, force: false }),
        (e: unknown) => isCkptError(e, "FS_NO_SPACE"),
      );
    });
    assert.deepEqual(await entries(join(dir, "out")), [MANIFEST_NAME, "old.txt"]);
    assert.deepEqual((await entries(dir)).filter((n) => n.startsWith(".ckpt-old-")), []);
  });
});

Deno.test("`discard()` removes the folder with what it holds, again after a stage still in flight wrote into it", async () => {
  await withTempDir(async (dir) => {
    const staging = await staged(dir);
    let finish = () => {};
    const inFlight = new Promise<void>((resolve) => (finish = resolve));
    const discarded = staging.discard(inFlight.then(async () => {
      // the abandoned stage writes once more, after the first removal
      await Deno.mkdir(staging.path, { recursive: true });
      await Deno.writeTextFile(join(staging.path, "late.txt"), "late");
    }));
    // the stage's late write comes after the first removal (which runs on another thread)
    while (await Deno.lstat(staging.path).then(() => true, () => false)) {
      await new Promise((r) => setTimeout(r, 1));
    }
    finish();
    await discarded;
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`discardSync()` removes the folder with what it holds", async () => {
  await withTempDir(async (dir) => {
    const staging = await staged(dir);
    await Deno.mkdir(join(staging.path, "sub"));
    await Deno.writeTextFile(join(staging.path, "sub", "x.txt"), "x");
    staging.discardSync();
    assert.deepEqual(await entries(dir), []);
  });
});

Deno.test("`release()` keeps the folder: neither discard removes it afterwards", async () => {
  await withTempDir(async (dir) => {
    const staging = await staged(dir);
    staging.release();
    await staging.discard(Promise.resolve());
    staging.discardSync();
    assert.deepEqual(await entries(staging.path), ["new.txt"]);
    // and its lock is let go: another process could adopt it now
    const adopted = await StagingFolder.adopt(join(dir, "out"), staging.path);
    adopted.release();
  });
});

Deno.test("`commit()` refuses an empty output folder that appeared meanwhile: OUTPUT_EXISTS, not a rename over it", async () => {
  await withTempDir(async (dir) => {
    const staging = await staged(dir);
    await Deno.mkdir(join(dir, "out")); // a rename would replace an empty folder silently
    await assert.rejects(
      () => staging.commit({ overwrite: false, force: false }),
      (e: unknown) => isCkptError(e, "OUTPUT_EXISTS"),
    );
    assert.deepEqual(await entries(join(dir, "out")), []);
    assert.deepEqual(await entries(staging.path), ["new.txt"]);
  });
});
