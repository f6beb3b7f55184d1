/**
 * Private: runs one job in a `node:worker_threads` worker with a deadline, a heap limit and an
 * abort signal, and resolves to the one message the worker posts. The main thread stays free, so
 * signals are handled while the job runs; an abort or a deadline terminates the worker at once.
 * Used for the untrusted parts of a tokenizer folder: rendering the chat template (`render.ts`)
 * and loading `tokenizer.json` (`validate.ts`).
 * @module
 */
import { Worker } from "node:worker_threads";

/** How a bounded job ended when it did not answer. */
export type WorkerFailure =
  | { kind: "timeout" }
  | { kind: "memory" }
  | { kind: "aborted" }
  | { kind: "crashed"; message: string; cause?: unknown };

/** Options of {@linkcode runBounded}. */
export interface BoundedOptions {
  /** Deadline in ms. */
  timeLimitMs: number;
  /** Heap limit in MiB (V8's old generation), or undefined for none. */
  heapLimitMb?: number | undefined;
  /** Terminates the worker. */
  signal?: AbortSignal | undefined;
}

/**
 * Runs the worker module `url` with `data` as its `workerData`; resolves to its first message, or
 * rejects with `fail(failure)` (an error the caller codes).
 */
export function runBounded<T>(
  url: URL,
  data: unknown,
  options: BoundedOptions,
  fail: (failure: WorkerFailure) => Error,
): Promise<T> {
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(fail({ kind: "aborted" }));
  return new Promise<T>((resolve, reject) => {
    const worker = new Worker(url, {
      workerData: data,
      ...(options.heapLimitMb === undefined ? {} : {
        resourceLimits: { maxOldGenerationSizeMb: options.heapLimitMb },
      }),
    });
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      void worker.terminate();
      fn();
    };
    const timer = setTimeout(
      () => finish(() => reject(fail({ kind: "timeout" }))),
      options.timeLimitMs,
    );
    const onAbort = () => finish(() => reject(fail({ kind: "aborted" })));
    signal?.addEventListener("abort", onAbort, { once: true });
    worker.on("message", (m: T) => finish(() => resolve(m)));
    worker.on("error", (err: Error & { code?: string }) =>
      finish(() =>
        reject(fail(
          isOutOfMemory(err)
            ? { kind: "memory" }
            : { kind: "crashed", message: err.message, cause: err },
        ))
      ));
    worker.on(
      "exit",
      (code: number) =>
        finish(() => reject(fail({ kind: "crashed", message: `the worker exited (${code})` }))),
    );
  });
}

/** Node's error for a worker that reached its heap limit (`ERR_WORKER_OUT_OF_MEMORY`). */
function isOutOfMemory(err: Error & { code?: string }): boolean {
  return /^ERR_WORKER_OUT_OF_MEMORY$/.test(err.code ?? "");
}
