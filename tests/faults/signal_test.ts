/**
 * SIGTERM and SIGINT at every file-system call of a small `ckpt merge` (the runner's test-only
 * `CKPT_TEST_PAUSE_AT`, `pipelines/_faults.ts`, holds the run just before call k; the signal
 * arrives there): the run exits by itself with 130 and a coded ABORTED line, no stack trace, and
 * leaves nothing behind, neither staging folder nor lock nor output; the next run succeeds and
 * verifies.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../_helpers/tmp.ts";
import {
  assertNoStack,
  assertVerifies,
  countCalls,
  leftovers,
  makeSmallRun,
  mergeArgs,
  nextRun,
  pool,
  type SmallRun,
  spawnChild,
} from "./_harness.ts";

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** Holds a merge before call `k`, signals it, lets it go on; checks what it leaves. */
async function signalAt(run: SmallRun, dir: string, k: number, calls: number): Promise<void> {
  const parent = join(dir, `s${k}`);
  const out = join(parent, "out");
  const pause = join(dir, `pause-${k}`);
  const signal: Deno.Signal = k % 2 === 0 ? "SIGINT" : "SIGTERM";
  const what = `${signal} at call ${k} of ${calls}`;
  const child = spawnChild(mergeArgs(run, out, "--log", "json"), {
    env: { CKPT_TEST_PAUSE_AT: String(k), CKPT_TEST_PAUSE_FILE: pause },
  });
  const output = child.output();
  // wait until the run holds at call k (or has ended: k beyond what this run makes)
  let ended = false;
  void output.then(() => ended = true);
  while (!ended && !(await exists(pause))) await new Promise((r) => setTimeout(r, 5));
  child.kill(signal);
  await Deno.remove(pause).catch(() => {});
  const r = await output;
  const dec = new TextDecoder();
  const res = {
    code: r.code,
    signal: r.signal,
    stdout: dec.decode(r.stdout),
    stderr: dec.decode(r.stderr),
  };
  assertNoStack(res, what);
  assert.equal(res.signal, null, `${what}: killed`);
  assert.equal(res.code, 130, `${what}: exit ${res.code}\n${res.stderr}`);
  assert.match(res.stdout + res.stderr, /"code":"ABORTED"|\[ABORTED\]/, what);
  assert.deepEqual(await leftovers(parent), [], `${what}: left behind`);
  assert.equal(await exists(out), false, `${what}: an output appeared`);
  assert.equal(await nextRun(run, out), "ok", `${what}: the next run`);
  assert.ok(await assertVerifies(run, out, `${what}, the next run`));
  await Deno.remove(parent, { recursive: true });
}

Deno.test("faults: SIGTERM or SIGINT at every file-system call of a merge ends it with 130, leaving nothing", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const log = join(dir, "calls.log");
    const calls = await countCalls(mergeArgs(run, join(dir, "count", "out")), log);
    await Deno.remove(join(dir, "count"), { recursive: true });
    // the last calls are the final rename and after: a signal there comes too late to abort
    const renameAt = calls.findIndex((l) => l.split(" ")[1] === "rename") + 1;
    assert.ok(renameAt > 1, "the run renames its staging folder");
    const points = Array.from({ length: renameAt - 1 }, (_, i) => i + 1);
    console.log(
      `signals at ${points.length} calls (of ${calls.length}; the rename is call ${renameAt})`,
    );
    await pool(points, 2, (k) => signalAt(run, dir, k, calls.length));
  });
});
