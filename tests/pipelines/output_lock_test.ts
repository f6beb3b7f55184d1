/**
 * The output lock and the output's parent folders, below the runner: which folders a run creates
 * and removes again after a failure (only empty ones, only its own), and the lock itself:
 * exclusive or shared, who removes its file, and that it creates no folder.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import {
  makeParents,
  OutputLock,
  outputLockPath,
  removeCreatedParents,
  removeCreatedParentsSync,
} from "../../pipelines/_output_lock.ts";
import { exists } from "../../pipelines/_staging.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const signal = new AbortController().signal;

async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    for await (const e of Deno.readDir(join(dir, rel))) {
      const p = rel === "" ? e.name : `${rel}/${e.name}`;
      out.push(p);
      if (e.isDirectory) await walk(p);
    }
  }
  await walk("");
  return out.sort();
}

Deno.test("`makeParents()` creates the missing folders above the output and names the topmost, or nothing when the parent exists", async () => {
  await withTempDir(async (dir) => {
    assert.equal(await makeParents(join(dir, "out")), undefined);
    assert.deepEqual(await tree(dir), []);
    await Deno.mkdir(join(dir, "a"));
    assert.equal(await makeParents(join(dir, "a", "b", "c", "out")), join(dir, "a", "b"));
    assert.deepEqual(await tree(dir), ["a", "a/b", "a/b/c"]);
  });
});

Deno.test("`makeParents()` leaves a parent that is there alone, even a file or a dangling link: it creates nothing and fails nothing", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "file"), "x");
    await Deno.symlink(join(dir, "nowhere"), join(dir, "dangling"));
    assert.equal(await makeParents(join(dir, "file", "out")), undefined);
    assert.equal(await makeParents(join(dir, "dangling", "out")), undefined);
    assert.deepEqual(await tree(dir), ["dangling", "file"]);
  });
});

Deno.test("`removeCreatedParents()` removes the empty folders up to the topmost it created, and stops at one that is not empty", async (t) => {
  for (
    const [name, remove] of [
      ["async", removeCreatedParents],
      [
        "sync",
        (o: string, top: string | undefined) => Promise.resolve(removeCreatedParentsSync(o, top)),
      ],
    ] as const
  ) {
    await t.step(name, async () => {
      await withTempDir(async (dir) => {
        const out = join(dir, "a", "b", "c", "out");
        await Deno.mkdir(join(dir, "a"));
        const top = await makeParents(out);
        await remove(out, top);
        assert.deepEqual(await tree(dir), ["a"], "a existed before: it stays");
        // another run wrote beside: its folder and those above stay
        const again = await makeParents(out);
        await Deno.writeTextFile(join(dir, "a", "b", "theirs.txt"), "x");
        await remove(out, again);
        assert.deepEqual(await tree(dir), ["a", "a/b", "a/b/theirs.txt"]);
        // nothing created: nothing removed
        await Deno.mkdir(join(dir, "a", "b", "c"));
        await remove(out, undefined);
        assert.deepEqual(await tree(dir), ["a", "a/b", "a/b/c", "a/b/theirs.txt"]);
      });
    });
  }
});

Deno.test("`OutputLock.acquire()` is exclusive: a second holder gets OUTPUT_LOCKED naming the first, until it releases", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    const first = await OutputLock.acquire(out, { wait: false, signal, purpose: "the first run" });
    await assert.rejects(
      () => OutputLock.acquire(out, { wait: false, signal }),
      (e: unknown) => isCkptError(e, "OUTPUT_LOCKED") && e.message.includes("the first run"),
    );
    await assert.rejects(
      () => OutputLock.acquire(out, { wait: false, signal, shared: true }),
      (e: unknown) => isCkptError(e, "OUTPUT_LOCKED"),
    );
    await first.release();
    assert.equal(await exists(outputLockPath(out)), false, "an exclusive holder removes the file");
    const second = await OutputLock.acquire(out, { wait: false, signal });
    second.releaseSync();
    assert.equal(await exists(outputLockPath(out)), false);
  });
});

Deno.test("`OutputLock.acquire()` shared: parts hold it together, leave its file, and keep an exclusive run out", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    const a = await OutputLock.acquire(out, { wait: false, signal, shared: true });
    const b = await OutputLock.acquire(out, { wait: false, signal, shared: true });
    await assert.rejects(
      () => OutputLock.acquire(out, { wait: false, signal }),
      (e: unknown) => isCkptError(e, "OUTPUT_LOCKED"),
    );
    await a.release();
    b.releaseSync();
    assert.equal(await exists(outputLockPath(out)), true, "a shared holder leaves the file");
    (await OutputLock.acquire(out, { wait: false, signal })).releaseSync();
  });
});

Deno.test("`OutputLock.acquire()` with wait takes the lock once its holder lets go, and an abort ends the wait", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    const first = await OutputLock.acquire(out, { wait: false, signal });
    const waiting = OutputLock.acquire(out, { wait: true, signal });
    await first.release();
    (await waiting).releaseSync();
    const held = await OutputLock.acquire(out, { wait: false, signal });
    const ac = new AbortController();
    const aborted = OutputLock.acquire(out, { wait: true, signal: ac.signal });
    ac.abort(new Error("SIGTERM"));
    await assert.rejects(aborted);
    await held.release();
  });
});

Deno.test("`OutputLock.acquire()` creates no folder: the parents are makeParents' to create and remove", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(() =>
      OutputLock.acquire(join(dir, "missing", "out"), { wait: false, signal })
    );
    assert.deepEqual(await tree(dir), []);
  });
});
