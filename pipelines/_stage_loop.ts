/**
 * The runner's loop over a config's stages: every preflight first, then each stage in order,
 * timed, its errors turned into coded ones (`STAGE_FAILED`, `ABORTED`), an abort honoured even
 * while a stage is blocked in I/O.
 *
 * A preflight may hand the loop a slow check it started (`ctx.defer`, see
 * {@linkcode StageLoop.defer}): the stages run meanwhile, each raced against the checks, and
 * {@linkcode StageLoop.run} awaits every check after the last stage, so a run never finishes
 * before all passed. A failed check ends the run at once with its own error (the error event
 * names the stage whose preflight started it) and aborts {@linkcode StageLoop.signal}, which the
 * running stage watches. When a stage (or a preflight) fails first, its error wins: the checks
 * still pending are stopped through the same signal and their outcome is dropped.
 * @module
 */
import { CkptError } from "../errors.ts";
import { isOsError, osErrorFromMessage } from "../errors/os.ts";
import type { StateDict } from "../formats/state_dict.ts";
import type { PipelineConfig } from "./config.ts";
import type { ManifestStage } from "./manifest.ts";
import type { PipelineEvent, StageContext } from "./stage.ts";
import { fsStep } from "./_faults.ts";

/** The `ABORTED` error of a run whose `signal` fired. */
export function abortError(signal: AbortSignal): CkptError {
  const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason);
  return new CkptError("ABORTED", `Cannot finish the pipeline: aborted (${reason})`, {
    cause: signal.reason,
  });
}

/**
 * Lets the runtime poll its signal driver before a run's last abort check, just before its rename.
 * Deno notices a SIGINT or SIGTERM when its event loop idles, not between file-system calls that
 * complete at once, so a signal that arrived during the final fsyncs could otherwise race the
 * rename (seen once in the fault suite: exit 0 with a finished output). A short timer makes the
 * loop idle; 2 ms per run.
 */
export async function signalsPolled(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 2));
  await new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * Resolves with `work`, or rejects as soon as `signal` aborts, so a stage blocked in I/O that does
 * not watch the signal cannot hold an aborted run (its late writes land in a removed folder).
 */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    // The run ends as aborted; the work's own late failure must not escape as an unhandled
    // rejection (which ends a Deno process).
    work.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Milliseconds rounded to 0.1 for events and reports. */
export function round1(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/** The error a failed stage ends the run with (an OS error coded, naming the folder). */
function stageError(
  err: unknown,
  step: { use: string; index: number },
  signal: AbortSignal,
  outDir: string,
): unknown {
  const { use, index } = step;
  if (signal.aborted && !(err instanceof CkptError && err.code !== "ABORTED")) {
    return abortError(signal);
  }
  if (err instanceof CkptError) return err;
  if (isOsError(err)) {
    return osErrorFromMessage(err, {
      action: `run stage ${use} (stages[${index}]) writing into`,
      path: outDir,
    });
  }
  return new CkptError(
    "STAGE_FAILED",
    `Cannot run stage ${use} (stages[${index}]): ${
      err instanceof Error ? err.message : String(err)
    }`,
    { cause: err, details: { stage: use, index } },
  );
}

/** Runs a config's preflights and stages against one context; remembers where it is. */
export class StageLoop {
  /** Index of the stage (or preflight) running or last run; -1 before the first. */
  current = -1;
  /** The stage running (settled, never rejecting), for the cleanup after an abort. */
  inFlight: Promise<void> = Promise.resolve();
  /** Timings and reports of the stages that finished. */
  readonly finished: ManifestStage[] = [];
  /** The state dict the stages left in the context (closed by the runner at the end). */
  stateDict: StateDict | undefined;
  /**
   * The signal to give the stages (`ctx.signal`): the run's signal, also aborted when the loop
   * fails (a failed deferred check stops the running stage; a failed stage stops the checks).
   */
  readonly signal: AbortSignal;
  readonly #cfg: PipelineConfig;
  readonly #signal: AbortSignal;
  readonly #emit: (event: PipelineEvent) => void;
  readonly #stop = new AbortController();
  /** The deferred checks, each settled to its outcome (rejecting on failure). */
  readonly #checks: Promise<void>[] = [];
  /** The first deferred check that failed: its error and the stage whose preflight started it. */
  #failedCheck: { err: unknown; step: { use: string; index: number } } | undefined;
  /** Rejects with the first failed check's error (never resolves). */
  readonly #checkFailed: Promise<never>;
  #rejectCheckFailed: (err: unknown) => void = () => {};
  /** What the preflights kept open for their runs (`ctx.closeAtEnd`), closed by `close()`. */
  readonly #closers: (() => Promise<void>)[] = [];
  /** Set by `close()`: what is handed over later is closed at once. */
  #closed = false;

  /** A loop over `cfg`'s stages. */
  constructor(cfg: PipelineConfig, signal: AbortSignal, emit: (event: PipelineEvent) => void) {
    this.#cfg = cfg;
    this.#signal = signal;
    this.#emit = emit;
    this.signal = AbortSignal.any([signal, this.#stop.signal]);
    this.#checkFailed = new Promise<never>((_, reject) => (this.#rejectCheckFailed = reject));
    this.#checkFailed.catch(() => {});
  }

  /**
   * Takes a check a preflight started and need not wait for (`ctx.defer`): the stages run while
   * it does; its failure ends the run with its error, promptly, whatever stage is running; the
   * run never finishes before it passed. The check should watch {@linkcode StageLoop.signal}
   * (`ctx.signal`), which stops it when the run fails otherwise.
   */
  defer = (check: Promise<void>): void => {
    const step = this.#cfg.stages[this.current] ?? { use: "", index: this.current };
    const outcome = check.then(() => {}, (err) => {
      // An abort of the run, or a failure elsewhere that stopped the check, is not its failure.
      if (!this.#signal.aborted && !this.#stop.signal.aborted && !this.#failedCheck) {
        this.#failedCheck = { err, step: { use: step.use, index: step.index } };
        this.#stop.abort(err);
        this.#rejectCheckFailed(err);
      }
      throw err;
    });
    outcome.catch(() => {});
    this.#checks.push(outcome);
  };

  /**
   * Takes something a preflight opened for its stage's run (`ctx.closeAtEnd`);
   * {@linkcode StageLoop.close} closes it however the run ends.
   */
  closeAtEnd = (close: () => Promise<void>): void => {
    // a preflight the run stopped waiting for (an abort) may still hand something over: closed
    // at once, since the runner has closed the rest already
    if (this.#closed) void close().catch(() => {});
    else this.#closers.push(close);
  };

  /**
   * Closes what the preflights kept open (`ctx.closeAtEnd`), in order, each once; a failure to
   * close is dropped (the run's outcome is decided). The runners await it before they return.
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (const close of this.#closers.splice(0)) await close().catch(() => {});
  }

  /** `work`, or the first deferred check's failure if that comes first. */
  #raced<T>(work: Promise<T>): Promise<T> {
    if (!this.#failedCheck) return Promise.race([work, this.#checkFailed]);
    work.catch(() => {});
    return this.#checkFailed;
  }

  /** The error the loop ends with when `err` ended it (a failed check's own error first). */
  #fail(err: unknown, step: { use: string; index: number }, outDir: string): unknown {
    const failed = this.#failedCheck;
    const e = failed && !this.#signal.aborted
      ? stageError(failed.err, failed.step, this.#signal, outDir)
      : stageError(err, step, this.#signal, outDir);
    this.#stop.abort(e);
    return e;
  }

  /**
   * Every stage's preflight, in order, before any stage runs. A preflight may set `modelDir`,
   * `modelConfig` and `adapterDir` for the preflights after it (gatherShards finds the model's
   * folder, mergeLora the adapter's); they are restored afterwards, so each stage's run finds
   * the context as the stages before it left it.
   */
  async preflight(ctx: StageContext): Promise<void> {
    const { modelDir, modelConfig, adapterDir } = ctx;
    try {
      for (const step of this.#cfg.stages) {
        if (!step.stage.preflight) continue;
        this.current = step.index;
        try {
          await untilAborted(this.#raced(step.stage.preflight(ctx, step.options)), this.#signal);
        } catch (err) {
          const e = this.#signal.aborted
            ? abortError(this.#signal)
            : this.#failedCheck
            ? this.#fail(err, step, ctx.outDir)
            : err;
          this.#stop.abort(e);
          throw e;
        }
      }
    } finally {
      ctx.modelDir = modelDir;
      ctx.modelConfig = modelConfig;
      ctx.adapterDir = adapterDir;
    }
  }

  /**
   * Every stage in order; `reportOf` gives a stage's report once it ended, `afterStage` runs after
   * each (the output hashing). Resolves once every deferred check passed too.
   */
  async run(
    ctx: StageContext,
    reportOf: (index: number) => Record<string, unknown>,
    afterStage: () => Promise<void>,
  ): Promise<void> {
    for (const step of this.#cfg.stages) {
      if (this.#signal.aborted) throw abortError(this.#signal);
      if (this.#failedCheck) throw this.#fail(undefined, step, ctx.outDir);
      this.current = step.index;
      fsStep("stage", step.use);
      this.#emit({ type: "stage-start", stage: step.use, index: step.index });
      const ts = performance.now();
      try {
        const work = step.stage.run(ctx, step.options);
        this.inFlight = work.then(() => {}, () => {});
        await untilAborted(this.#raced(work), this.#signal);
      } catch (err) {
        throw this.#fail(err, step, ctx.outDir);
      } finally {
        this.stateDict = ctx.stateDict;
      }
      const ms = performance.now() - ts;
      this.finished.push({
        name: step.use,
        index: step.index,
        ms: round1(ms),
        report: reportOf(step.index),
      });
      this.#emit({ type: "stage-end", stage: step.use, index: step.index, ms: round1(ms) });
      await afterStage();
    }
    try {
      await untilAborted(this.#raced(Promise.all(this.#checks)), this.#signal);
    } catch (err) {
      throw this.#fail(err, { use: "", index: -1 }, ctx.outDir);
    }
  }

  /** The name of the stage an error happened in, when it happened in one. */
  failedStage(): string | undefined {
    if (this.#failedCheck && !this.#signal.aborted) return this.#failedCheck.step.use;
    if (this.current < 0 || this.finished.length >= this.#cfg.stages.length) return undefined;
    return this.#cfg.stages[this.current]?.use ?? "";
  }
}
