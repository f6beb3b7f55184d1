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
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { CkptError } from "../../errors.ts";
import type { PipelineEvent } from "../stage.ts";
import { MANIFEST_NAME } from "../manifest.ts";
import { checkComplete } from "./complete.ts";
import type { WatchSettings } from "./config.ts";
import { FileLock, isLocked } from "./lock.ts";
import {
  type CheckpointFolder,
  compareCheckpoints,
  scanCheckpoints,
  stepOf,
  WATCH_DIR,
} from "./scan.ts";
import { type CheckpointRecord, loadState, updateState, type WatchState } from "./state.ts";

/** What the runner gets for one checkpoint. */
export interface ExportJob {
  /** The checkpoint folder. */
  readonly checkpoint: CheckpointFolder;
  /**
   * Pipeline variables: `step` (the number in the folder's name, `step-64000` -> `64000`, or the
   * whole name when it has none: `FINAL`), `name` (the folder's name), `run` (its parent folder),
   * `checkpoint` (its absolute path), `counter` (the number in its name, or `""`).
   */
  readonly vars: Readonly<Record<string, string>>;
  /** True when a dead earlier try may have left this checkpoint's output in place: replace it. */
  readonly overwrite: boolean;
  /** Aborted on SIGTERM; the runner must stop and clean up. */
  readonly signal: AbortSignal;
  /** Pipeline events of the export (stage timings are logged from them). */
  readonly onEvent: (event: PipelineEvent) => void;
}

/** What a successful export returns. */
export interface ExportResult {
  /** Absolute path of the finished output folder. */
  output: string;
  /** sha256 of its manifest, if the runner wrote one. */
  manifestSha256: string | undefined;
}

/** Runs the pipeline for one checkpoint (throws on failure). */
export type ExportRunner = (job: ExportJob) => Promise<ExportResult>;

/** Verifies a finished output folder (throws, preferably a CkptError, when it does not verify). */
export type ExportVerifier = (output: string, signal: AbortSignal) => Promise<void>;

/** One machine-readable log event (the CLI prints each as one JSON line). */
export type WatchEvent =
  & { ts: string }
  & (
    | { event: "tick-start"; runsDir: string }
    | { event: "found"; checkpoint: string; step?: number }
    | { event: "skipped-incomplete"; checkpoint: string; reason: string; detail?: string }
    | { event: "skipped-locked"; checkpoint: string }
    | { event: "started"; checkpoint: string; try: number; overwrite: boolean }
    | { event: "stage"; checkpoint: string; stage: string; ms: number }
    | {
      event: "done";
      checkpoint: string;
      output: string;
      manifestSha256: string | null;
      ms: number;
    }
    | {
      event: "failed";
      checkpoint: string;
      code: string;
      message: string;
      try: number;
      final: boolean;
    }
    | { event: "aborted"; checkpoint: string }
    | { event: "pruned"; checkpoint: string; output: string }
    | { event: "prune-failed"; checkpoint: string; output: string; code: string; message: string }
    | { event: "retry-failed"; checkpoints: string[] }
    | { event: "tick-busy" }
    | { event: "tick-error"; code: string; message: string }
    | {
      event: "tick-end";
      ms: number;
      exported: number;
      failed: number;
      incomplete: number;
      locked: number;
      aborted: boolean;
    }
  );

/** Distributes `Omit` over the union of {@linkcode WatchEvent}. */
type EventBody = WatchEvent extends infer E ? E extends unknown ? Omit<E, "ts"> : never : never;

/** Options of {@linkcode watchOnce}. */
export interface WatchOptions {
  /** The runs folder (checkpoint folders are found under it; state is kept in it). */
  runsDir: string;
  /** Watch settings (see `config.ts`). */
  settings: WatchSettings;
  /** Runs the export of one checkpoint. */
  runner: ExportRunner;
  /** Verifies an output; used when `settings.verify` is true. */
  verify?: ExportVerifier;
  /** Aborts the tick (SIGTERM): the running export is stopped, no new one starts. */
  signal?: AbortSignal;
  /** Receives every log event. */
  onEvent?: (event: WatchEvent) => void;
  /** Clock in ms (tests). Default `Date.now`. */
  now?: () => number;
}

/** What one tick did. */
export interface TickSummary {
  /** Checkpoints exported this tick, in order. */
  exported: string[];
  /** Checkpoints whose try failed this tick. */
  failed: string[];
  /** Checkpoints still incomplete. */
  incomplete: string[];
  /** Checkpoints skipped because another watcher holds them. */
  locked: string[];
  /** Checkpoints already done or failed before this tick. */
  settled: number;
  /** True when the tick was aborted. */
  aborted: boolean;
  /** Duration in ms. */
  ms: number;
}

/** Lock file of a checkpoint (its name with `/` encoded). */
export function checkpointLockPath(runsDir: string, name: string): string {
  return join(runsDir, WATCH_DIR, "locks", `${encodeURIComponent(name)}.lock`);
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
    const c = await checkComplete(cp.path, {
      complete: settings.complete,
      quietSeconds: settings.quietSeconds,
      ...(options.now ? { now: options.now } : {}),
    });
    if (!c.complete) {
      summary.incomplete.push(cp.name);
      emit({
        event: "skipped-incomplete",
        checkpoint: cp.name,
        reason: c.reason,
        ...(c.detail ? { detail: c.detail } : {}),
      });
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
  emit({
    event: "tick-end",
    ms: Math.round(summary.ms * 10) / 10,
    exported: summary.exported.length,
    failed: summary.failed.length,
    incomplete: summary.incomplete.length,
    locked: summary.locked.length,
    aborted: summary.aborted,
  });
  return summary;
}

type Outcome = { result: "done" | "failed" | "aborted" | "settled"; state: WatchState };

async function exportOne(
  cp: CheckpointFolder,
  runsDir: string,
  options: WatchOptions,
  signal: AbortSignal,
  emit: (e: EventBody) => void,
): Promise<Outcome> {
  const { settings } = options;
  const owner = { pid: Deno.pid, host: Deno.hostname() };
  // Claim under the state lock: another watcher may have finished it since our scan.
  let tries = 0;
  let overwrite = false;
  let settled = false;
  let state = await updateState(runsDir, (s) => {
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
  if (settled) return { result: "settled", state };

  emit({ event: "started", checkpoint: cp.name, try: tries, overwrite });
  const t0 = performance.now();
  const folder = cp.name.split("/").pop()!;
  const vars: Record<string, string> = {
    step: cp.step === undefined ? folder : String(cp.step),
    name: folder,
    run: dirname(cp.path),
    checkpoint: cp.path,
    counter: cp.step === undefined ? "" : String(cp.step),
  };
  try {
    signal.throwIfAborted();
    const result = await options.runner({
      checkpoint: cp,
      vars,
      overwrite,
      signal,
      onEvent: (e) => {
        if (e.type === "stage-end") {
          emit({ event: "stage", checkpoint: cp.name, stage: e.stage, ms: Math.round(e.ms) });
        }
      },
    });
    if (settings.verify && options.verify) {
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
    const ms = Math.round(performance.now() - t0);
    state = await updateState(runsDir, (s) => {
      const rec: CheckpointRecord = {
        status: "done",
        tries,
        ...(cp.step === undefined ? {} : { step: cp.step }),
        startedAt: s.checkpoints[cp.name]?.startedAt ?? new Date().toISOString(),
        finishedAt: new Date().toISOString(),
        ms,
        owner,
        output: result.output,
        ...(result.manifestSha256 === undefined ? {} : { manifestSha256: result.manifestSha256 }),
      };
      s.checkpoints[cp.name] = rec;
      return s;
    });
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
    if (signal.aborted) {
      state = await updateState(runsDir, (s) => {
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
    const { code, message } = errorText(err);
    const final = tries >= settings.maxTries;
    state = await updateState(runsDir, (s) => {
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
}

function errorText(err: unknown): { code: string; message: string } {
  if (err instanceof CkptError) return { code: err.code, message: err.message };
  if (err instanceof Error) {
    return { code: "EXPORT_FAILED", message: `${err.name}: ${err.message}` };
  }
  return { code: "EXPORT_FAILED", message: String(err) };
}

/**
 * Retention: keeps the `keep` newest done exports; deletes the outputs of older ones, but only
 * those older than `current` (a newer export was just verified), only folders that hold a
 * {@linkcode MANIFEST_NAME}, and never a folder that is or contains an input or the runs folder.
 */
async function prune(
  current: CheckpointFolder,
  runsDir: string,
  keep: number,
  emit: (e: EventBody) => void,
): Promise<WatchState> {
  const victims: { name: string; output: string }[] = [];
  const inputs: string[] = [];
  const state = await updateState(runsDir, (s) => {
    inputs.push(...Object.keys(s.checkpoints).map((name) => resolve(runsDir, name)));
    const live = Object.entries(s.checkpoints)
      .filter(([, r]) => r.status === "done" && r.output && !r.pruned)
      .map(([name, r]) => ({ name, r, cp: { name, path: "", step: r.step ?? stepOf(name) } }))
      .sort((a, b) => compareCheckpoints(a.cp, b.cp));
    const old = live.slice(0, Math.max(0, live.length - keep));
    const cur = { name: current.name, path: "", step: current.step };
    for (const v of old) {
      if (compareCheckpoints(v.cp, cur) >= 0) continue;
      v.r.pruned = true;
      v.r.prunedAt = new Date().toISOString();
      victims.push({ name: v.name, output: v.r.output! });
    }
    return s;
  });
  for (const v of victims) {
    try {
      await removeExport(v.output, runsDir, inputs);
      emit({ event: "pruned", checkpoint: v.name, output: v.output });
    } catch (err) {
      const { code, message } = errorText(err);
      emit({ event: "prune-failed", checkpoint: v.name, output: v.output, code, message });
    }
  }
  return state;
}

async function removeExport(output: string, runsDir: string, inputs: string[]): Promise<void> {
  const out = resolve(output);
  const contains = (parent: string, child: string): boolean => {
    const rel = relative(parent, child);
    return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
  };
  const guarded = [resolve(runsDir), ...inputs].find((p) => contains(out, p));
  if (guarded !== undefined) {
    throw new CkptError("WATCH_PRUNE", `Cannot delete "${out}": it contains input "${guarded}"`, {
      file: out,
    });
  }
  try {
    await Deno.lstat(join(out, MANIFEST_NAME));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      // Already gone (deleted by hand) is fine; a folder without a manifest is not ours to delete.
      if (await Deno.lstat(out).then(() => true, () => false)) {
        throw new CkptError("WATCH_PRUNE", `Cannot delete "${out}": it holds no ${MANIFEST_NAME}`, {
          file: out,
        });
      }
      return;
    }
    throw err;
  }
  await Deno.remove(out, { recursive: true });
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
