/**
 * The run's exclusive hold on its output path ({@linkcode OutputLock}): `.ckpt-lock-<key>` beside
 * the output, a `flock`ed file (`lock.ts`) taken before anything is written and removed when the
 * run ends; and the output's parent folders, created before the lock (the lock file lives there)
 * and removed again, when empty, after a failed run.
 * @module
 */
import { basename, dirname, join } from "node:path";
import { CkptError } from "../errors.ts";
import { describeHolder, FileLock, readLockHolder } from "./lock.ts";
import { exists, fsCall, outputKey } from "./_staging.ts";

/** The lock file of `output`. */
export function outputLockPath(output: string): string {
  return join(dirname(output), `.ckpt-lock-${outputKey(basename(output))}`);
}

/**
 * Creates the output's missing parent folders; resolves to the topmost one it created (to be
 * removed again by {@linkcode removeCreatedParents} when the run fails), or undefined.
 */
export async function makeParents(output: string): Promise<string | undefined> {
  const parent = dirname(output);
  let top: string | undefined;
  for (let p = parent; !(await exists(p)); p = dirname(p)) top = p;
  if (top === undefined) return undefined;
  await fsCall(
    "mkdir",
    "create the output's folder",
    parent,
    () => Deno.mkdir(parent, { recursive: true }),
  );
  return top;
}

/** Removes the empty folders from the output's parent up to `top` (never anything in them). */
export async function removeCreatedParents(output: string, top: string | undefined): Promise<void> {
  if (top === undefined) return;
  for (let p = dirname(output); p.length >= top.length; p = dirname(p)) {
    try {
      await Deno.remove(p); // fails when not empty: another run may be writing there
    } catch {
      return;
    }
    if (p === top) return;
  }
}

/** {@linkcode removeCreatedParents}, synchronously (a process that is exiting). */
export function removeCreatedParentsSync(output: string, top: string | undefined): void {
  if (top === undefined) return;
  for (let p = dirname(output); p.length >= top.length; p = dirname(p)) {
    try {
      Deno.removeSync(p);
    } catch {
      return;
    }
    if (p === top) return;
  }
}

/**
 * The run's hold on its output path, taken before anything is written: exclusive for a
 * one-machine run and for `--finish`, shared by the parts of a split export (they write disjoint
 * files into one folder, so they must not exclude each other, but none of them may run while a
 * one-machine run or a finish holds the output).
 */
export class OutputLock {
  readonly #lock: FileLock;
  readonly #shared: boolean;

  private constructor(lock: FileLock, shared: boolean) {
    this.#lock = lock;
    this.#shared = shared;
  }

  /**
   * Takes the lock of `output`; `OUTPUT_LOCKED` naming the holder when another run has it, or with
   * `wait`, waits until it is free (the signal aborts the wait).
   */
  static async acquire(
    output: string,
    options: { wait: boolean; signal: AbortSignal; shared?: boolean; purpose?: string },
  ): Promise<OutputLock> {
    const path = outputLockPath(output);
    const purpose = options.purpose ?? `writing ${output}`;
    const shared = options.shared ?? false;
    const lockOptions = { code: "OUTPUT_LOCKED", mkdir: false, shared } as const;
    if (options.wait) {
      return new OutputLock(
        await FileLock.acquire(path, {
          ...lockOptions,
          purpose,
          timeoutMs: Infinity,
          pollMs: 100,
          signal: options.signal,
        }),
        shared,
      );
    }
    const lock = await FileLock.tryAcquire(path, purpose, lockOptions);
    if (lock) return new OutputLock(lock, shared);
    const holder = await readLockHolder(path);
    throw new CkptError(
      "OUTPUT_LOCKED",
      `Cannot write output "${output}": another run is writing it: ${describeHolder(holder)} ` +
        `(lock file "${path}"; pass --wait to wait for it)`,
      { file: output, details: { lock: path, ...(holder ?? {}) } },
    );
  }

  /**
   * Releases the lock; an exclusive holder removes the file first (a shared one leaves it: other
   * parts may hold it; the finish, exclusive, removes it).
   */
  async release(): Promise<void> {
    await this.#lock.release({ remove: !this.#shared });
  }

  /** {@linkcode OutputLock.release}, synchronously (a process exiting with the lock held). */
  releaseSync(): void {
    this.#lock.releaseSync({ remove: !this.#shared });
  }
}
