/**
 * Runs that share a folder: two runs in separate PID namespaces (`unshare --pid --fork`, each
 * seeing itself as the same small PID, as containers sharing a volume do), a run killed in one
 * namespace and cleaned up by the next in another, and concurrent `--overwrite` runs. A run is
 * held in the middle with the runner's test-only pause (`CKPT_TEST_PAUSE_AT`).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../_helpers/tmp.ts";
import {
  assertCoded,
  assertNoStack,
  assertVerifies,
  type ChildOptions,
  type ChildResult,
  ckptChild,
  countCalls,
  leftovers,
  makeSmallRun,
  mergeArgs,
  nextRun,
  type SmallRun,
  spawnChild,
} from "./_harness.ts";

/** A PID namespace of its own (with its own /proc); the shell keeps ckpt off PID 1. */
const NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", '"$0" "$@"; exit $?'];

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function collect(child: Deno.ChildProcess): Promise<ChildResult> {
  const out = await child.output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** A merge started and held at its call `at` (until {@linkcode Held.resume}). */
interface Held {
  child: Deno.ChildProcess;
  /** What the held process wrote into the pause file: its pid (in its namespace), op, path. */
  note: string;
  resume(): Promise<ChildResult>;
}

async function holdAt(
  args: string[],
  at: number,
  pauseFile: string,
  options: ChildOptions = {},
): Promise<Held> {
  const child = spawnChild(args, {
    ...options,
    env: { ...options.env, CKPT_TEST_PAUSE_AT: String(at), CKPT_TEST_PAUSE_FILE: pauseFile },
  });
  const started = Date.now();
  while (!(await exists(pauseFile))) {
    assert.ok(Date.now() - started < 60_000, "the run reaches its pause point");
    await new Promise((r) => setTimeout(r, 20));
  }
  const note = await Deno.readTextFile(pauseFile);
  return {
    child,
    note,
    resume: async () => {
      await Deno.remove(pauseFile);
      return await collect(child);
    },
  };
}

async function stagingFolders(dir: string): Promise<string[]> {
  return (await leftovers(dir)).filter((n) => n.startsWith(".ckpt-staging-"));
}

/** The index (1-based) of the first call `op` in a run's call log. */
function callIndex(calls: string[], op: string): number {
  const i = calls.findIndex((l) => l.split(" ")[1] === op);
  assert.ok(i >= 0, `a ${op} call`);
  return i + 1;
}

Deno.test("faults: runs in separate PID namespaces sharing a folder", async (t) => {
  await withTempDir(async (dir) => {
    const run: SmallRun = await makeSmallRun(join(dir, "run"));
    const shared = join(dir, "shared");
    await Deno.mkdir(shared);
    const calls = await countCalls(mergeArgs(run, join(shared, "counted")), join(dir, "calls.log"));
    await Deno.remove(join(shared, "counted"), { recursive: true });
    const firstWrite = callIndex(calls, "write");
    const pause = join(dir, "pause");
    const out = join(shared, "out");

    await t.step(
      "a second run on the same output is refused, the live staging untouched",
      async () => {
        const a = await holdAt(mergeArgs(run, out), firstWrite, pause, { wrap: NAMESPACE });
        assert.match(a.note, /^\d+ write /);
        assert.equal((await stagingFolders(shared)).length, 1);
        const b = await ckptChild(mergeArgs(run, out), { wrap: NAMESPACE });
        assertCoded(b, ["OUTPUT_LOCKED"], "the second run");
        assert.match(b.stderr, /another run is writing it: pid \d+ on .+ since \d{4}-/);
        assert.equal((await stagingFolders(shared)).length, 1, "A's staging survives");
        // A third run waits for A, then replaces its output.
        const c = spawnChild(mergeArgs(run, out, "--overwrite", "--wait"), { wrap: NAMESPACE });
        await new Promise((r) => setTimeout(r, 500));
        const ra = await a.resume();
        assert.equal(ra.code, 0, ra.stderr);
        const rc = await collect(c);
        assert.equal(rc.code, 0, rc.stderr);
        assertNoStack(rc, "the waiting run");
        assert.deepEqual(await leftovers(shared), []);
        assert.ok(await assertVerifies(run, out, "after A and C"));
      },
    );

    await t.step(
      "runs on two outputs of one folder, both the same PID, leave each other alone",
      async () => {
        const out2 = join(shared, "out2");
        const a = await holdAt(mergeArgs(run, join(shared, "out1")), firstWrite, pause, {
          wrap: NAMESPACE,
        });
        const b = await ckptChild(mergeArgs(run, out2), { wrap: NAMESPACE });
        assert.equal(b.code, 0, b.stderr);
        assert.equal(a.note.split(" ")[0], "2", "ckpt runs as PID 2 in its namespace");
        assert.equal((await stagingFolders(shared)).length, 1, "A's staging survives B");
        const ra = await a.resume();
        assert.equal(ra.code, 0, ra.stderr);
        assert.deepEqual(await leftovers(shared), []);
        assert.ok(await assertVerifies(run, join(shared, "out1"), "out1"));
        assert.ok(await assertVerifies(run, out2, "out2"));
      },
    );

    await t.step(
      "a run killed in one namespace is cleaned up by the next run in another",
      async () => {
        const out3 = join(shared, "out3");
        const killed = await ckptChild(mergeArgs(run, out3), {
          wrap: NAMESPACE,
          env: { CKPT_TEST_KILL_AT: String(firstWrite + 1) },
        });
        assert.equal(killed.code, 137, killed.stderr);
        assert.equal((await stagingFolders(shared)).length, 1, "the dead run's staging");
        const next = await ckptChild(mergeArgs(run, out3), { wrap: NAMESPACE });
        assert.equal(next.code, 0, next.stderr);
        assert.deepEqual(await leftovers(shared), []);
        assert.ok(await assertVerifies(run, out3, "out3"));
      },
    );

    await t.step(
      "files removed from a live staging folder fail the run instead of landing",
      async () => {
        const out4 = join(shared, "out4");
        const a = await holdAt(mergeArgs(run, out4), callIndex(calls, "stat"), pause, {
          wrap: NAMESPACE,
        });
        const [staging] = await stagingFolders(shared);
        await Deno.remove(join(shared, staging!, "config.json"));
        const ra = await a.resume();
        assertCoded(ra, ["STAGING_MISMATCH"], "a staging folder that lost config.json");
        assert.ok(!(await exists(out4)));
        assert.deepEqual(await leftovers(shared), []);
      },
    );
  });
});

Deno.test("faults: concurrent --overwrite runs are serialized, never interleaved", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const out = join(dir, "out");
    assert.equal(await nextRun(run, out), "ok");
    const calls = await countCalls(mergeArgs(run, out, "--overwrite"), join(dir, "calls.log"));
    const firstRename = callIndex(calls, "rename");
    const pause = join(dir, "pause");
    // A is held between setting the old output aside and renaming the new one in.
    const a = await holdAt(mergeArgs(run, out, "--overwrite"), firstRename + 1, pause);
    assert.match(a.note, / rename /);
    assert.ok(!(await exists(out)), "A is between its renames");
    const b = await ckptChild(mergeArgs(run, out, "--overwrite", "--log", "json"));
    assertCoded(b, ["OUTPUT_LOCKED"], "B while A is between its renames");
    const c = spawnChild(mergeArgs(run, out, "--overwrite", "--wait"));
    await new Promise((r) => setTimeout(r, 500));
    const ra = await a.resume();
    assert.equal(ra.code, 0, ra.stderr);
    const rc = await collect(c);
    assert.equal(rc.code, 0, rc.stderr);
    assert.deepEqual(await leftovers(dir), []);
    assert.ok(await assertVerifies(run, out, "after A and C"));
    // Started together, with --wait: both land, one after the other.
    const both = await Promise.all(
      [0, 1].map(() => ckptChild(mergeArgs(run, out, "--overwrite", "--wait"))),
    );
    for (const r of both) assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await leftovers(dir), []);
    assert.ok(await assertVerifies(run, out, "after two concurrent --overwrite --wait runs"));
  });
});
