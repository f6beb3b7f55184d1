/**
 * A SIGKILL at every file-system call of a small `ckpt merge` and of an `--overwrite` merge (the
 * runner's test-only `CKPT_TEST_KILL_AT`, `pipelines/_faults.ts`: every call of the runner, its
 * staging folder and locks, each block of output bytes and each stage start is one point). After
 * each kill the next run cleans up: no staging, old or lock entry is left, and the output verifies.
 * For an `--overwrite` run the old output (or the new one) is always there: an overwrite never
 * loses it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../_helpers/tmp.ts";
import {
  assertVerifies,
  ckptChild,
  countCalls,
  leftovers,
  makeSmallRun,
  mergeArgs,
  nextRun,
  pool,
  type SmallRun,
} from "./_harness.ts";

/** Kills `args` at call `k`; checks the state it leaves and the next run's clean-up. */
async function killAt(
  run: SmallRun,
  dir: string,
  k: number,
  setup: (out: string) => Promise<void>,
  overwrite: boolean,
): Promise<void> {
  const parent = join(dir, `k${k}`);
  const out = join(parent, "out");
  await setup(out);
  const what = `${overwrite ? "overwrite" : "fresh"} run killed at call ${k}`;
  const r = await ckptChild(mergeArgs(run, out, ...(overwrite ? ["--overwrite"] : [])), {
    env: { CKPT_TEST_KILL_AT: String(k) },
  });
  assert.equal(r.signal, "SIGKILL", `${what}: ${r.code} ${r.stderr}`);
  // Whatever the kill left: an output that exists verifies; an overwrite never lost its output
  // for longer than the next run's clean-up.
  await assertVerifies(run, out, what);
  const next = await nextRun(run, out);
  assert.ok(next === "ok" || next === "OUTPUT_EXISTS", `${what}: next run ${next}`);
  assert.deepEqual(await leftovers(parent), [], `${what}: left behind`);
  assert.ok(await assertVerifies(run, out, `${what}, after the next run`), `${what}: no output`);
  await Deno.remove(parent, { recursive: true });
}

Deno.test("faults: a SIGKILL at every file-system call of a merge and of an --overwrite merge", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const log = join(dir, "calls.log");
    const fresh = await countCalls(mergeArgs(run, join(dir, "count", "out")), log);
    const overwrite = await countCalls(
      mergeArgs(run, join(dir, "count", "out"), "--overwrite"),
      log,
    );
    await Deno.remove(join(dir, "count"), { recursive: true });
    // The calls a run makes, for the report: lock, clean-up, staging, each write, fsyncs, renames.
    console.log(`fresh run: ${fresh.length} calls; --overwrite run: ${overwrite.length} calls`);
    for (const op of ["open-lock", "mkdir", "write", "fsync", "write-manifest", "rename"]) {
      assert.ok(fresh.some((l) => l.split(" ")[1] === op), `the fresh run marks ${op}`);
    }
    assert.ok(overwrite.filter((l) => l.split(" ")[1] === "rename").length >= 2);

    const template = join(dir, "template");
    assert.equal(await nextRun(run, template), "ok");
    const copyOutput = async (out: string) => {
      await Deno.mkdir(out, { recursive: true });
      for await (const e of Deno.readDir(template)) {
        await Deno.copyFile(join(template, e.name), join(out, e.name));
      }
    };
    const points = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
    await pool(
      points(fresh.length),
      2,
      (k) => killAt(run, join(dir, "fresh"), k, async () => {}, false),
    );
    await pool(
      points(overwrite.length),
      2,
      (k) => killAt(run, join(dir, "overwrite"), k, copyOutput, true),
    );
  });
});
