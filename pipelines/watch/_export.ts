/**
 * One export of `ckpt watch`: claim the checkpoint in the state file (under its lock, held by the
 * caller), run and verify the pipeline, record the outcome (`done`, `error`/`failed`, `aborted`)
 * and apply retention.
 * @module
 */
import { dirname } from "node:path";
import { CkptError } from "../../errors.ts";
import { errorText, type EventBody, type ExportResult, type WatchOptions } from "./events.ts";
import { prune } from "./_prune.ts";
import type { CheckpointFolder } from "./scan.ts";
import { type CheckpointRecord, updateState, type WatchState } from "./state.ts";

/** How one export ended, and the state after it. */
export type Outcome = { result: "done" | "failed" | "aborted" | "settled"; state: WatchState };

type Owner = { pid: number; host: string };

/**
 * Claims `cp` under the state lock (another watcher may have finished it since the scan): its
 * record becomes `running` with one more try. `settled` when it is already done or failed;
 * `overwrite` when a dead earlier try may have put its output in place.
 */
async function claim(
  cp: CheckpointFolder,
  runsDir: string,
  owner: Owner,
): Promise<{ settled: boolean; tries: number; overwrite: boolean; state: WatchState }> {
  let tries = 0;
  let overwrite = false;
  let settled = false;
  const state = await updateState(runsDir, (s) => {
    const prev = s.checkpoints[cp.name];
    if (prev?.status === "done" || prev?.status === "failed") {
      settled = true;
      return s;
    }
    // We hold the lock, so a "running" record is a dead try; its output may be in place.
    overwrite = prev?.status === "running" || prev?.status === "aborted" ||
      prev?.error?.code === "WATCH_VERIFY";
    tries = (prev?.tries ?? 0) + 1;
    s.checkpoints[cp.name] = {
      ...prev,
      status: "running",
      tries,
      ...(cp.step === undefined ? {} : { step: cp.step }),
      startedAt: new Date().toISOString(),
      owner,
    };
    return s;
  });
  return { settled, tries, overwrite, state };
}

/** The pipeline variables of `cp` (see `ExportJob.vars`). */
function jobVars(cp: CheckpointFolder): Record<string, string> {
  const folder = cp.name.split("/").pop()!;
  return {
    step: cp.step === undefined ? folder : String(cp.step),
    name: folder,
    run: dirname(cp.path),
    checkpoint: cp.path,
    counter: cp.step === undefined ? "" : String(cp.step),
  };
}

/** Runs the export of `cp` and, when asked, verifies it (`WATCH_VERIFY`). */
async function runAndVerify(
  cp: CheckpointFolder,
  options: WatchOptions,
  job: { overwrite: boolean; signal: AbortSignal; emit: (e: EventBody) => void },
): Promise<ExportResult> {
  const { signal, emit } = job;
  signal.throwIfAborted();
  const result = await options.runner({
    checkpoint: cp,
    vars: jobVars(cp),
    overwrite: job.overwrite,
    signal,
    onEvent: (e) => {
      if (e.type === "stage-end") {
        emit({ event: "stage", checkpoint: cp.name, stage: e.stage, ms: Math.round(e.ms) });
      }
    },
  });
  if (options.settings.verify && options.verify && !result.handedOff) {
    try {
      await options.verify(result.output, signal);
    } catch (cause) {
      if (signal.aborted) throw cause;
      throw new CkptError(
        "WATCH_VERIFY",
        `Cannot verify export "${result.output}": ${errorText(cause).message}`,
        { file: result.output, cause, details: { verifyCode: errorText(cause).code } },
      );
    }
  }
  return result;
}

/** Records a finished export as `done`. */
function recordDone(
  cp: CheckpointFolder,
  runsDir: string,
  done: { tries: number; ms: number; owner: Owner; result: ExportResult },
): Promise<WatchState> {
  const { result } = done;
  return updateState(runsDir, (s) => {
    const rec: CheckpointRecord = {
      status: "done",
      tries: done.tries,
      ...(cp.step === undefined ? {} : { step: cp.step }),
      startedAt: s.checkpoints[cp.name]?.startedAt ?? new Date().toISOString(),
      finishedAt: new Date().toISOString(),
      ms: done.ms,
      owner: done.owner,
      output: result.output,
      ...(result.manifestSha256 === undefined ? {} : { manifestSha256: result.manifestSha256 }),
    };
    s.checkpoints[cp.name] = rec;
    return s;
  });
}

/** Records a try that did not finish: `aborted` (not counted as a try), else `error`/`failed`. */
async function recordFailure(
  cp: CheckpointFolder,
  runsDir: string,
  failure: { err: unknown; tries: number; maxTries: number; aborted: boolean },
  emit: (e: EventBody) => void,
): Promise<Outcome> {
  const { tries } = failure;
  if (failure.aborted) {
    const state = await updateState(runsDir, (s) => {
      const prev = s.checkpoints[cp.name];
      s.checkpoints[cp.name] = {
        ...prev,
        status: "aborted",
        tries: Math.max(0, tries - 1),
        finishedAt: new Date().toISOString(),
      };
      return s;
    });
    emit({ event: "aborted", checkpoint: cp.name });
    return { result: "aborted", state };
  }
  const { code, message } = errorText(failure.err);
  const final = tries >= failure.maxTries;
  const state = await updateState(runsDir, (s) => {
    const prev = s.checkpoints[cp.name];
    s.checkpoints[cp.name] = {
      ...prev,
      status: final ? "failed" : "error",
      tries,
      finishedAt: new Date().toISOString(),
      error: { code, message },
    };
    return s;
  });
  emit({ event: "failed", checkpoint: cp.name, code, message, try: tries, final });
  return { result: "failed", state };
}

/** Exports `cp` once: claims it, runs the pipeline, records the outcome. */
export async function exportOne(
  cp: CheckpointFolder,
  runsDir: string,
  options: WatchOptions,
  signal: AbortSignal,
  emit: (e: EventBody) => void,
): Promise<Outcome> {
  const { settings } = options;
  const owner = { pid: Deno.pid, host: Deno.hostname() };
  const { settled, tries, overwrite, state: claimed } = await claim(cp, runsDir, owner);
  if (settled) return { result: "settled", state: claimed };

  emit({ event: "started", checkpoint: cp.name, try: tries, overwrite });
  const t0 = performance.now();
  try {
    const result = await runAndVerify(cp, options, { overwrite, signal, emit });
    const ms = Math.round(performance.now() - t0);
    if (result.handedOff) {
      emit({
        event: "handed-off",
        checkpoint: cp.name,
        output: result.output,
        ...result.handedOff,
      });
    }
    let state = await recordDone(cp, runsDir, { tries, ms, owner, result });
    emit({
      event: "done",
      checkpoint: cp.name,
      output: result.output,
      manifestSha256: result.manifestSha256 ?? null,
      ms,
    });
    if (settings.keep !== undefined) state = await prune(cp, runsDir, settings.keep, emit);
    return { result: "done", state };
  } catch (err) {
    const failure = { err, tries, maxTries: settings.maxTries, aborted: signal.aborted };
    return await recordFailure(cp, runsDir, failure, emit);
  }
}
