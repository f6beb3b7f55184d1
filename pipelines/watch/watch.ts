/**
 * `watchOnce` (one tick: find new complete checkpoints and export each exactly once) and
 * `watchScheduled` (ticks on a cron schedule with Deno's built-in `Deno.cron`, unstable: run with
 * `--unstable-cron`, or `"unstable": ["cron"]` in deno.json).
 *
 * Exactly once, with overlapping watchers and crashes:
 * - each checkpoint has its own lock (`<runs>/.ckpt-watch/locks/<name>.lock`, an `flock` the kernel
 *   drops when the holder dies); a watcher that cannot take it skips the checkpoint this tick;
 * - the state file is re-read under the state lock after the checkpoint lock is taken, so a
 *   checkpoint another watcher finished meanwhile is not exported again;
 * - a record left `running` whose lock is free belongs to a watcher that died: it is retried from
 *   scratch (with `overwrite`, since the dead try may have put its output in place); the runner's
 *   staging folder keeps half-written exports out of sight;
 * - a checkpoint whose export fails `maxTries` times is marked `failed` and no longer tried; the
 *   others go on;
 * - an abort (SIGTERM) stops the running export through the runner's signal, records it as
 *   `aborted` (not counted as a try) and ends the tick.
 *
 * The export itself is injected ({@linkcode ExportRunner}); `cli/watch.ts` passes one that calls
 * `runPipeline` and `verifyCheckpoint`.
 *
 * @example One tick with a fake runner
 * ```ts
 * import { watchOnce } from "./watch.ts";
 * import { parseWatchSettings } from "./config.ts";
 * import assert from "node:assert/strict";
 *
 * const runs = await Deno.makeTempDir();
 * await Deno.mkdir(`${runs}/step-64`);
 * await Deno.writeTextFile(`${runs}/step-64/done.txt`, "x");
 * const exported: string[] = [];
 * const tick = () =>
 *   watchOnce({
 *     runsDir: runs,
 *     settings: parseWatchSettings({ complete: ["done.txt"], quietSeconds: 0 }),
 *     runner: (job) => {
 *       exported.push(job.vars.name!);
 *       return Promise.resolve({ output: `${runs}/out-${job.vars.step}`, manifestSha256: "00" });
 *     },
 *   });
 * assert.deepEqual((await tick()).exported, ["step-64"]);
 * assert.deepEqual((await tick()).exported, []);
 * assert.deepEqual(exported, ["step-64"]);
 * await Deno.remove(runs, { recursive: true });
 * ```
 * @module
 */
import { join, resolve } from "node:path";
import { CkptError } from "../../errors.ts";
import { checkComplete } from "./complete.ts";
import {
  errorText,
  type EventBody,
  type TickSummary,
  type WatchEvent,
  type WatchOptions,
} from "./events.ts";
import { exportOne } from "./_export.ts";
import { FileLock, isLocked } from "./lock.ts";
import {
  type CheckpointFolder,
  compareCheckpoints,
  scanCheckpoints,
  stepOf,
  WATCH_DIR,
} from "./scan.ts";
import { type CheckpointRecord, loadState, updateState } from "./state.ts";

export type {
  ExportJob,
  ExportResult,
  ExportRunner,
  ExportVerifier,
  TickSummary,
  WatchEvent,
  WatchOptions,
} from "./events.ts";

/** Lock file of a checkpoint (its name with `/` encoded). */
export function checkpointLockPath(runsDir: string, name: string): string {
  return join(runsDir, WATCH_DIR, "locks", `${encodeURIComponent(name)}.lock`);
}

/** Whether `cp` is complete by the settings' rules; logs `skipped-incomplete` when it is not. */
async function isComplete(
  cp: CheckpointFolder,
  options: WatchOptions,
  emit: (e: EventBody) => void,
): Promise<boolean> {
  const c = await checkComplete(cp.path, {
    complete: options.settings.complete,
    quietSeconds: options.settings.quietSeconds,
    ...(options.now ? { now: options.now } : {}),
  });
  if (c.complete) return true;
  emit({
    event: "skipped-incomplete",
    checkpoint: cp.name,
    reason: c.reason,
    ...(c.detail ? { detail: c.detail } : {}),
  });
  return false;
}

/** The `tick-end` event of a tick. */
function tickEnd(summary: TickSummary): EventBody {
  return {
    event: "tick-end",
    ms: Math.round(summary.ms * 10) / 10,
    exported: summary.exported.length,
    failed: summary.failed.length,
    incomplete: summary.incomplete.length,
    locked: summary.locked.length,
    aborted: summary.aborted,
  };
}

/** One tick: exports every complete, not yet exported checkpoint once, oldest first. */
export async function watchOnce(options: WatchOptions): Promise<TickSummary> {
  const started = performance.now();
  const runsDir = resolve(options.runsDir);
  const { settings } = options;
  const signal = options.signal ?? new AbortController().signal;
  const emit = (e: EventBody): void =>
    options.onEvent?.({ ts: new Date().toISOString(), ...e } as WatchEvent);
  const summary: TickSummary = {
    exported: [],
    failed: [],
    incomplete: [],
    locked: [],
    settled: 0,
    aborted: false,
    ms: 0,
  };
  emit({ event: "tick-start", runsDir });

  let state = await loadState(runsDir);
  const outputs = new Set(
    Object.values(state.checkpoints).flatMap((r) => r.output ? [resolve(r.output)] : []),
  );
  const candidates = await scanCheckpoints(runsDir, settings.pattern, {
    exclude: outputs,
    known: new Set(Object.keys(state.checkpoints)),
  });

  for (const cp of candidates) {
    if (signal.aborted) {
      summary.aborted = true;
      break;
    }
    const known = state.checkpoints[cp.name];
    if (known?.status === "done" || known?.status === "failed") {
      summary.settled++;
      continue;
    }
    emit({
      event: "found",
      checkpoint: cp.name,
      ...(cp.step === undefined ? {} : { step: cp.step }),
    });
    if (!(await isComplete(cp, options, emit))) {
      summary.incomplete.push(cp.name);
      continue;
    }
    const lock = await FileLock.tryAcquire(checkpointLockPath(runsDir, cp.name), cp.name);
    if (!lock) {
      summary.locked.push(cp.name);
      emit({ event: "skipped-locked", checkpoint: cp.name });
      continue;
    }
    try {
      const outcome = await exportOne(cp, runsDir, options, signal, emit);
      state = outcome.state;
      if (outcome.result === "done") summary.exported.push(cp.name);
      else if (outcome.result === "failed") summary.failed.push(cp.name);
      else if (outcome.result === "aborted") {
        summary.aborted = true;
        break;
      }
    } finally {
      await lock.release();
    }
  }
  summary.ms = performance.now() - started;
  emit(tickEnd(summary));
  return summary;
}

/** Options of {@linkcode watchScheduled}. */
export interface ScheduledOptions extends WatchOptions {
  /** Cron expression (5 fields, UTC), for example `"*\/5 * * * *"`. */
  schedule: string;
  /** Run one tick right away before waiting for the schedule (default true). */
  immediate?: boolean;
}

/**
 * Ticks on `schedule` with `Deno.cron` until `signal` aborts; a tick that is due while the
 * previous one still runs is skipped (`tick-busy`). Resolves once aborted and the running tick has
 * ended (its export aborted cleanly). `WATCH_SCHEDULE` for an invalid cron expression. Needs
 * `--unstable-cron` (or `"unstable": ["cron"]` in deno.json).
 */
export async function watchScheduled(options: ScheduledOptions): Promise<void> {
  const signal = options.signal ?? new AbortController().signal;
  const emit = (e: EventBody): void =>
    options.onEvent?.({ ts: new Date().toISOString(), ...e } as WatchEvent);
  let running: Promise<unknown> | undefined;
  const tick = (): Promise<void> => {
    if (signal.aborted) return Promise.resolve();
    if (running) {
      emit({ event: "tick-busy" });
      return Promise.resolve();
    }
    running = watchOnce({ ...options, signal }).catch((err) => {
      const { code, message } = errorText(err);
      emit({ event: "tick-error", code, message });
    }).finally(() => running = undefined);
    return running.then(() => {});
  };
  if (typeof Deno.cron !== "function") {
    throw new CkptError(
      "WATCH_SCHEDULE",
      "Cannot schedule: Deno.cron is not available (run deno with --unstable-cron)",
    );
  }
  const name = `ckpt watch ${
    resolve(options.runsDir).replace(/[^A-Za-z0-9 _-]/g, "_").slice(-200)
  }`;
  let cron: Promise<void>;
  try {
    cron = Deno.cron(name, options.schedule, { signal }, tick);
  } catch (cause) {
    throw new CkptError(
      "WATCH_SCHEDULE",
      `Cannot schedule "${options.schedule}": ${(cause as Error).message}`,
      { cause },
    );
  }
  if (options.immediate ?? true) await tick();
  await cron;
  while (running) await running;
}

/**
 * Gives checkpoints marked `failed` a new round of `maxTries` tries (all of them, or those named):
 * their records go back to `error` with the try count reset, so the next tick exports them again.
 * Returns the names reset.
 */
export async function retryFailed(runsDir: string, names?: readonly string[]): Promise<string[]> {
  return await updateState(resolve(runsDir), (s) => {
    const reset: string[] = [];
    for (const [name, rec] of Object.entries(s.checkpoints)) {
      if (rec.status !== "failed" || (names !== undefined && !names.includes(name))) continue;
      s.checkpoints[name] = { ...rec, status: "error", tries: 0 };
      reset.push(name);
    }
    return reset;
  });
}

/** One line of `ckpt watch --status`. */
export interface StatusEntry {
  /** Checkpoint name. */
  checkpoint: string;
  /** Status; `running` records whose lock is free read `interrupted`. */
  status: CheckpointRecord["status"] | "interrupted";
  /** Tries so far. */
  tries: number;
  /** Output folder, if exported. */
  output?: string;
  /** Manifest hash, if exported. */
  manifestSha256?: string;
  /** Last error, if any. */
  error?: { code: string; message: string };
  /** True when retention deleted the output. */
  pruned?: boolean;
}

/** Summary of a runs folder's state file, for `ckpt watch --status`. */
export interface StatusSummary {
  /** Runs folder. */
  runsDir: string;
  /** Last state write. */
  updatedAt: string;
  /** Count per status. */
  counts: Record<string, number>;
  /** One entry per checkpoint, oldest first. */
  checkpoints: StatusEntry[];
}

/** Reads the state of `runsDir` and summarizes it; checks the locks of `running` records. */
export async function watchStatus(runsDir: string): Promise<StatusSummary> {
  const dir = resolve(runsDir);
  const state = await loadState(dir);
  const entries: StatusEntry[] = [];
  const counts: Record<string, number> = {};
  const ordered = Object.entries(state.checkpoints).sort(([a, ra], [b, rb]) =>
    compareCheckpoints(
      { name: a, path: "", step: ra.step ?? stepOf(a) },
      { name: b, path: "", step: rb.step ?? stepOf(b) },
    )
  );
  for (const [name, r] of ordered) {
    const status = r.status === "running" && !(await isLocked(checkpointLockPath(dir, name)))
      ? "interrupted"
      : r.status;
    counts[status] = (counts[status] ?? 0) + 1;
    entries.push({
      checkpoint: name,
      status,
      tries: r.tries,
      ...(r.output ? { output: r.output } : {}),
      ...(r.manifestSha256 ? { manifestSha256: r.manifestSha256 } : {}),
      ...(r.error && r.status !== "done" ? { error: r.error } : {}),
      ...(r.pruned ? { pruned: true } : {}),
    });
  }
  return { runsDir: dir, updatedAt: state.updatedAt, counts, checkpoints: entries };
}
