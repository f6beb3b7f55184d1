/**
 * Private: what a writeOptim preflight loaded, kept for its run in the same run context, with what
 * it saw of the files (device, inode, size, modification and change times), so the run can tell by
 * `stat` alone whether it may use the values instead of loading them again. Public API in
 * `write_optim.ts`.
 * @module
 */
import type { PyDict } from "../../formats/torch/values.ts";
import type { LoadedValue } from "../../readers/optimizer.ts";
import type { StageContext } from "../stage.ts";
import type { FileWitness } from "./_file_witness.ts";

/** The inputs of a writeOptim stage, loaded (each open until closed). */
export interface OptimInputs {
  /** The optimizer input, its structure checked. */
  optim?: LoadedOptimizer;
  /** The scheduler input, a dict. */
  sched?: LoadedValue;
}

/** An optimizer input loaded and unwrapped, its structure checked (not against a model). */
export interface LoadedOptimizer {
  /** What was loaded (its `close` releases the input). */
  loaded: LoadedValue;
  /** The optimizer `state_dict()`. */
  state: PyDict;
  /** The class name the input gives, if any. */
  className: string | undefined;
  /** `"int"` or `"name"` keys, as loaded. */
  keyed: "int" | "name";
  /** Number of per-parameter entries. */
  entries: number;
}

/** Closes every input of `inputs` (each close is safe to repeat). */
export async function closeInputs(inputs: OptimInputs | undefined): Promise<void> {
  await inputs?.optim?.loaded.close();
  await inputs?.sched?.close();
}

/** A preflight's load, kept for the run. */
export interface KeptInputs {
  /** The load the preflight started (rejects with its coded error). */
  loaded: Promise<OptimInputs>;
  /** The files the load read, as they were before it read them. */
  seen: FileWitness;
  /** False when an optimizer source read the input (its files are not witnessed). */
  reusable: boolean;
  /** Waits for the load and closes what it opened; once (later calls wait for the first). Once
   * the run's signal is aborted it waits {@linkcode LATE_LOAD_WAIT_MS} at most: a load that takes
   * longer is closed when it ends. */
  close(): Promise<void>;
}

/** How long a run that failed or was aborted waits for a load still running, to close it. */
export const LATE_LOAD_WAIT_MS = 1000;

/**
 * `closed`; or, once `signal` is aborted, `closed` or {@linkcode LATE_LOAD_WAIT_MS} later,
 * whichever comes first: a failed or aborted run does not hang on a load that does (a source on a
 * stalled file system), and what that load opened is still closed when it ends.
 */
function waitAtMost(closed: Promise<void>, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const onAbort = () => (timer = setTimeout(resolve, LATE_LOAD_WAIT_MS));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    // a close that fails is dropped, as the runner drops it (the run's outcome is decided)
    closed.catch(() => {}).then(() => {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      resolve();
    });
  });
}

/** Loads kept per run context (one list per stage instance), by the resolved input paths. */
export type KeptLoads = WeakMap<StageContext, Map<string, KeptInputs[]>>;

/**
 * Keeps `entry` for the run of `ctx` under `key`, and hands its close to the runner
 * (`closeAtEnd`, the context's), so it is closed however the run ends. Returns the kept entry.
 */
export function keepInputs(
  kept: KeptLoads,
  ctx: StageContext,
  closeAtEnd: NonNullable<StageContext["closeAtEnd"]>,
  key: string,
  entry: Omit<KeptInputs, "close">,
): KeptInputs {
  let closing: Promise<void> | undefined;
  const full: KeptInputs = {
    ...entry,
    close: () =>
      closing ??= waitAtMost(
        entry.loaded.then(closeInputs, () => {
          // a failed load closed what it had opened
        }),
        ctx.signal,
      ),
  };
  let byKey = kept.get(ctx);
  if (!byKey) kept.set(ctx, byKey = new Map());
  const list = byKey.get(key) ?? [];
  list.push(full);
  byKey.set(key, list);
  closeAtEnd(full.close);
  return full;
}

/** Takes the first load kept for `ctx` under `key` (the caller closes it), if any. */
export function takeInputs(
  kept: KeptLoads,
  ctx: StageContext,
  key: string,
): KeptInputs | undefined {
  const list = kept.get(ctx)?.get(key);
  return list?.shift();
}
