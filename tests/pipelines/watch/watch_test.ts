import assert from "node:assert/strict";
import { CkptError } from "../../../errors.ts";
import { parseWatchSettings, type WatchSettingsInput } from "../../../pipelines/watch/config.ts";
import { FileLock } from "../../../pipelines/watch/lock.ts";
import { loadState, updateState } from "../../../pipelines/watch/state.ts";
import {
  checkpointLockPath,
  type ExportJob,
  type ExportRunner,
  retryFailed,
  type WatchEvent,
  watchOnce,
  type WatchOptions,
  watchScheduled,
  watchStatus,
} from "../../../pipelines/watch/watch.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { age, halosCheckpoint, writeTree } from "./_files.ts";

/** A runner that writes `<runs>/exports/<step>/` like the real one and records every call. */
function fakeRunner(runs: string, opts: {
  delayMs?: number;
  fail?: (job: ExportJob) => boolean;
  onStart?: (job: ExportJob) => void;
} = {}): { runner: ExportRunner; calls: ExportJob[] } {
  const calls: ExportJob[] = [];
  const runner: ExportRunner = async (job) => {
    calls.push(job);
    opts.onStart?.(job);
    const out = `${runs}/exports/${job.vars.name}`;
    if (opts.delayMs) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(resolve, opts.delayMs);
        job.signal.addEventListener("abort", () => {
          clearTimeout(t);
          reject(new CkptError("ABORTED", "Cannot run: aborted"));
        }, { once: true });
      });
    }
    if (opts.fail?.(job)) {
      throw new CkptError("STAGE_FAILED", `Cannot export ${job.vars.name}: broken`);
    }
    const exists = await Deno.lstat(out).then(() => true, () => false);
    if (exists && !job.overwrite) {
      throw new CkptError("OUTPUT_EXISTS", `Cannot write "${out}": exists`);
    }
    await Deno.mkdir(out, { recursive: true });
    await Deno.writeTextFile(`${out}/ckpt-manifest.json`, JSON.stringify(job.vars));
    job.onEvent({ type: "stage-end", stage: "writeModel", index: 0, ms: 5 });
    return { output: out, manifestSha256: `sha-${job.vars.name}` };
  };
  return { runner, calls };
}

async function makeRun(runs: string, names: string[]): Promise<void> {
  for (const [i, name] of names.entries()) await writeTree(`${runs}/${name}`, halosCheckpoint(i));
  await age(runs, 120);
}

function options(
  runs: string,
  runner: ExportRunner,
  settings: WatchSettingsInput = {},
  extra: Partial<WatchOptions> = {},
): WatchOptions & { events: WatchEvent[] } {
  const events: WatchEvent[] = [];
  return {
    runsDir: runs,
    settings: parseWatchSettings({ quietSeconds: 30, ...settings }),
    runner,
    onEvent: (e) => events.push(e),
    events,
    ...extra,
  };
}

Deno.test("`watchOnce()` exports complete checkpoints oldest first, exactly once", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-640", "step-64", "FINAL"]);
    await writeTree(`${runs}/step-1280`, { "metrics.json": "{}" }); // still being written
    const { runner, calls } = fakeRunner(runs);
    const o = options(runs, runner);
    const first = await watchOnce(o);
    assert.deepEqual(first.exported, ["step-64", "step-640", "FINAL"]);
    assert.deepEqual(first.incomplete, ["step-1280"]);
    assert.deepEqual(calls.map((c) => c.vars), [
      { step: "64", name: "step-64", run: runs, checkpoint: `${runs}/step-64`, counter: "64" },
      { step: "640", name: "step-640", run: runs, checkpoint: `${runs}/step-640`, counter: "640" },
      { step: "FINAL", name: "FINAL", run: runs, checkpoint: `${runs}/FINAL`, counter: "" },
    ]);
    assert.ok(calls.every((c) => !c.overwrite));
    const second = await watchOnce(o);
    assert.deepEqual(second.exported, []);
    assert.equal(second.settled, 3);
    assert.equal(calls.length, 3);
    const state = await loadState(runs);
    assert.equal(state.checkpoints["step-64"]?.status, "done");
    assert.equal(state.checkpoints["step-64"]?.manifestSha256, "sha-step-64");
    assert.equal(state.checkpoints["step-64"]?.output, `${runs}/exports/step-64`);
    assert.equal(state.checkpoints["step-1280"], undefined);
    const kinds = o.events.map((e) => e.event);
    for (
      const k of [
        "tick-start",
        "found",
        "skipped-incomplete",
        "started",
        "stage",
        "done",
        "tick-end",
      ]
    ) {
      assert.ok(kinds.includes(k as WatchEvent["event"]), k);
    }
    const inc = o.events.find((e) => e.event === "skipped-incomplete");
    assert.equal(inc?.event === "skipped-incomplete" && inc.reason, "not-quiet");
    assert.ok(o.events.every((e) => typeof e.ts === "string"));
  });
});

Deno.test("`watchOnce()` marks a checkpoint failed after maxTries without blocking others", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1", "step-2"]);
    const { runner, calls } = fakeRunner(runs, { fail: (j) => j.vars.name === "step-1" });
    const o = options(runs, runner, { maxTries: 2 });
    const t1 = await watchOnce(o);
    assert.deepEqual([t1.exported, t1.failed], [["step-2"], ["step-1"]]);
    assert.equal((await loadState(runs)).checkpoints["step-1"]?.status, "error");
    const t2 = await watchOnce(o);
    assert.deepEqual(t2.failed, ["step-1"]);
    const rec = (await loadState(runs)).checkpoints["step-1"];
    assert.equal(rec?.status, "failed");
    assert.equal(rec?.tries, 2);
    assert.equal(rec?.error?.code, "STAGE_FAILED");
    const t3 = await watchOnce(o);
    assert.deepEqual(t3.failed, []);
    assert.equal(calls.filter((c) => c.vars.name === "step-1").length, 2);
    const finals = o.events.filter((e) => e.event === "failed").map((e) =>
      e.event === "failed" && e.final
    );
    assert.deepEqual(finals, [false, true]);
    // --retry-failed: a new round of tries.
    assert.deepEqual(await retryFailed(runs), ["step-1"]);
    assert.deepEqual(await retryFailed(runs), []);
    const t4 = await watchOnce(o);
    assert.deepEqual(t4.failed, ["step-1"]);
    assert.equal((await loadState(runs)).checkpoints["step-1"]?.tries, 1);
  });
});

Deno.test("`watchOnce()` retries a crashed export from scratch with overwrite", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1"]);
    // A watcher died mid-export: its record says running, its lock is free, its output is there.
    await updateState(runs, (s) => {
      s.checkpoints["step-1"] = { status: "running", tries: 1, owner: { pid: 1, host: "gone" } };
    });
    await Deno.mkdir(`${runs}/exports/step-1`, { recursive: true });
    assert.equal((await watchStatus(runs)).checkpoints[0]?.status, "interrupted");
    const { runner, calls } = fakeRunner(runs);
    const t = await watchOnce(options(runs, runner));
    assert.deepEqual(t.exported, ["step-1"]);
    assert.equal(calls[0]?.overwrite, true);
    const rec = (await loadState(runs)).checkpoints["step-1"];
    assert.deepEqual([rec?.status, rec?.tries], ["done", 2]);
  });
});

Deno.test("`watchOnce()` skips a checkpoint another watcher holds", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1", "step-2"]);
    const held = await FileLock.tryAcquire(checkpointLockPath(runs, "step-1"));
    assert.ok(held);
    const { runner, calls } = fakeRunner(runs);
    const o = options(runs, runner);
    const t1 = await watchOnce(o);
    assert.deepEqual([t1.locked, t1.exported], [["step-1"], ["step-2"]]);
    await held.release();
    const t2 = await watchOnce(o);
    assert.deepEqual(t2.exported, ["step-1"]);
    assert.equal(calls.length, 2);
  });
});

Deno.test("two concurrent `watchOnce()` ticks export every checkpoint exactly once", async () => {
  await withTempDir(async (runs) => {
    const names = Array.from({ length: 6 }, (_, i) => `step-${(i + 1) * 64}`);
    await makeRun(runs, names);
    const { runner, calls } = fakeRunner(runs, { delayMs: 30 });
    const a = options(runs, runner);
    const b = options(runs, runner);
    const [ta, tb] = await Promise.all([watchOnce(a), watchOnce(b)]);
    // Whatever either skipped this tick (locked), a later tick picks up.
    const tc = await watchOnce(options(runs, runner));
    const all = [...ta.exported, ...tb.exported, ...tc.exported].sort();
    assert.deepEqual(all, [...names].sort());
    assert.deepEqual(calls.map((c) => c.vars.name).sort(), [...names].sort());
    const state = await loadState(runs);
    assert.ok(names.every((n) => state.checkpoints[n]?.status === "done"));
  });
});

Deno.test("`watchOnce()` aborts the running export cleanly and resumes it next tick", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1", "step-2"]);
    // The export would succeed after 30 s; the abort comes once it has started. An abort that
    // is not passed on lets it finish, and the assertions below fail (timing: bench latency).
    const ac = new AbortController();
    const { runner, calls: started } = fakeRunner(runs, {
      delayMs: 30_000,
      onStart: () => setTimeout(() => ac.abort(), 0),
    });
    const o = options(runs, runner, {}, { signal: ac.signal });
    const t = await watchOnce(o);
    assert.deepEqual(started.map((c) => c.vars.name), ["step-1"]);
    assert.equal(t.aborted, true);
    assert.deepEqual(t.exported, []);
    const rec = (await loadState(runs)).checkpoints["step-1"];
    assert.deepEqual([rec?.status, rec?.tries], ["aborted", 0]);
    assert.equal((await loadState(runs)).checkpoints["step-2"], undefined);
    const { runner: fast, calls } = fakeRunner(runs);
    const t2 = await watchOnce(options(runs, fast));
    assert.deepEqual(t2.exported, ["step-1", "step-2"]);
    assert.equal((await loadState(runs)).checkpoints["step-1"]?.tries, 1);
    assert.equal(calls[0]?.overwrite, true);
  });
});

Deno.test("`watchOnce()` records a failed verification and retries with overwrite", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1"]);
    const { runner, calls } = fakeRunner(runs);
    let verifies = 0;
    const verify = (): Promise<void> =>
      ++verifies === 1
        ? Promise.reject(new CkptError("WATCH_VERIFY_FILE", "Cannot verify: hash differs"))
        : Promise.resolve();
    const t1 = await watchOnce(options(runs, runner, {}, { verify }));
    assert.deepEqual(t1.failed, ["step-1"]);
    assert.equal((await loadState(runs)).checkpoints["step-1"]?.error?.code, "WATCH_VERIFY");
    const t2 = await watchOnce(options(runs, runner, {}, { verify }));
    assert.deepEqual(t2.exported, ["step-1"]);
    assert.equal(calls[1]?.overwrite, true);
    // verify: false skips the verifier.
    await makeRun(runs, ["step-2"]);
    await watchOnce(options(runs, runner, { verify: false }, {
      verify: () => Promise.reject(new Error("not called")),
    }));
    assert.equal((await loadState(runs)).checkpoints["step-2"]?.status, "done");
  });
});

Deno.test("`watchOnce()` with keep deletes older exports, never inputs", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1", "step-2", "step-3"]);
    const { runner } = fakeRunner(runs);
    const o = options(runs, runner, { keep: 2 });
    await watchOnce(o);
    const exists = (p: string) => Deno.lstat(p).then(() => true, () => false);
    assert.equal(await exists(`${runs}/exports/step-1`), false);
    assert.equal(await exists(`${runs}/exports/step-2`), true);
    assert.equal(await exists(`${runs}/exports/step-3`), true);
    for (const n of ["step-1", "step-2", "step-3"]) {
      assert.equal(await exists(`${runs}/${n}`), true);
    }
    const state = await loadState(runs);
    assert.equal(state.checkpoints["step-1"]?.pruned, true);
    assert.equal(state.checkpoints["step-1"]?.status, "done");
    assert.ok(o.events.some((e) => e.event === "pruned" && e.checkpoint === "step-1"));
  });
});

Deno.test("`watchOnce()` refuses to prune an output that is an input or has no manifest", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1", "step-2", "step-3"]);
    // A runner whose output is the input folder itself (misconfigured), and one without manifest.
    const runner: ExportRunner = (job) =>
      Promise.resolve({
        output: job.vars.name === "step-1"
          ? job.vars.checkpoint!
          : job.vars.name === "step-2"
          ? `${runs}/plain-${job.vars.name}`
          : `${runs}/x-${job.vars.name}`,
        manifestSha256: undefined,
      });
    await Deno.mkdir(`${runs}/plain-step-2`);
    const o = options(runs, runner, { keep: 1 });
    await watchOnce(o);
    const failed = o.events.filter((e) => e.event === "prune-failed").map((e) =>
      e.event === "prune-failed" ? [e.checkpoint, e.code] : []
    );
    assert.deepEqual(failed, [["step-1", "WATCH_PRUNE"], ["step-2", "WATCH_PRUNE"]]);
    assert.ok(await Deno.lstat(`${runs}/step-1/model.safetensors`));
    assert.ok(await Deno.lstat(`${runs}/plain-step-2`));
  });
});

Deno.test("`watchStatus()` summarizes the state file", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1", "step-2"]);
    const { runner } = fakeRunner(runs, { fail: (j) => j.vars.name === "step-2" });
    await watchOnce(options(runs, runner));
    const s = await watchStatus(runs);
    assert.deepEqual(s.counts, { done: 1, error: 1 });
    assert.deepEqual(s.checkpoints.map((c) => [c.checkpoint, c.status]), [
      ["step-1", "done"],
      ["step-2", "error"],
    ]);
    assert.equal(s.checkpoints[1]?.error?.code, "STAGE_FAILED");
  });
});

Deno.test("`watchScheduled()` ticks at once, stops on abort, rejects bad schedules", async () => {
  await withTempDir(async (runs) => {
    await makeRun(runs, ["step-1"]);
    const { runner, calls } = fakeRunner(runs);
    await assert.rejects(
      watchScheduled({ ...options(runs, runner), schedule: "every minute" }),
      (e: unknown) => (e as { code?: string }).code === "WATCH_SCHEDULE",
    );
    const ac = new AbortController();
    const o = options(runs, runner, {}, { signal: ac.signal });
    const done = watchScheduled({ ...o, schedule: "*/5 * * * *" });
    while (calls.length === 0) await new Promise((r) => setTimeout(r, 10));
    ac.abort();
    await done;
    assert.equal((await loadState(runs)).checkpoints["step-1"]?.status, "done");
    assert.ok(o.events.some((e) => e.event === "tick-end"));
  });
});
