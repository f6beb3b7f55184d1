/**
 * An exclusive lock that survives crashes: an advisory `flock` on a lock file
 * (`Deno.FsFile.tryLock`). The kernel drops the lock when its holder exits for any reason
 * (SIGKILL, OOM, power loss of a container), so there is no stale-lock guessing and no PID in
 * play: holders in different PID namespaces (containers sharing a volume) exclude each other as
 * well. Locks conflict between processes and between two opens in one process. The file holds
 * the holder's pid, host and start time, for messages and `ckpt watch --status`.
 *
 * A lock file is either kept (`ckpt watch`'s) or removed by its holder on release while still
 * holding it (the runner's output locks, so no litter is left beside outputs); either way a taker
 * checks, after locking, that the path still names the file it locked, so a file removed under a
 * waiter never lets two holders in.
 *
 * On NFS, Linux maps `flock` to byte-range locks handled by the server (NFSv4, or NFSv3 with
 * lockd), so holders on different hosts exclude each other there too; on file systems without
 * lock support `tryLock` fails with an error rather than silently succeeding.
 *
 * @example Two holders exclude each other
 * ```ts
 * import { FileLock } from "./lock.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const a = await FileLock.tryAcquire(`${dir}/x.lock`);
 * assert.ok(a);
 * assert.equal(await FileLock.tryAcquire(`${dir}/x.lock`), null);
 * await a.release();
 * const b = await FileLock.tryAcquire(`${dir}/x.lock`);
 * assert.ok(b);
 * await b.release({ remove: true });
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { dirname } from "node:path";
import { CkptError, type ErrorCode } from "../errors.ts";
import { osError } from "../errors/os.ts";
import { fsStep } from "./_faults.ts";

/** Who holds a lock, as written into the lock file. */
export interface LockHolder {
  /** Process id (in the holder's own PID namespace). */
  pid: number;
  /** Host name. */
  host: string;
  /** When the lock was taken (ISO 8601). */
  since: string;
  /** What the holder is doing, if it said. */
  purpose?: string;
}

/** Options of {@linkcode FileLock.tryAcquire}. */
export interface TryLockOptions {
  /** Code of the error when the file system refuses locks. Default `WATCH_LOCK`. */
  code?: ErrorCode;
  /** Create the lock file's folder when missing. Default true. */
  mkdir?: boolean;
  /**
   * Take a shared lock: shared holders do not exclude each other, only an exclusive holder (the
   * parts of one split export share their output's lock; a one-machine run or `--finish` takes
   * it exclusively). A shared holder must not remove the file on release. Default false.
   */
  shared?: boolean;
}

/** Options of {@linkcode FileLock.acquire}. */
export interface LockOptions extends TryLockOptions {
  /** Give up after this many ms (`Infinity`: wait until the signal aborts). Default 30 s. */
  timeoutMs?: number;
  /** Poll interval in ms. Default 20. */
  pollMs?: number;
  /** Aborts the wait with the signal's reason. */
  signal?: AbortSignal;
  /** What the holder is doing (written into the lock file). */
  purpose?: string;
  /** Code of the error when the wait times out. Default `WATCH_LOCK_TIMEOUT`. */
  timeoutCode?: ErrorCode;
}

/** The codes of `ckpt watch`'s locks, the defaults. */
const WATCH_CODES: { code: ErrorCode; timeout: { code: ErrorCode } } = {
  code: "WATCH_LOCK",
  timeout: { code: "WATCH_LOCK_TIMEOUT" },
};

/** How a held lock is described in messages: "pid 12 on host since 2026-...". */
export function describeHolder(holder: LockHolder | undefined): string {
  return holder
    ? `pid ${holder.pid} on ${holder.host} since ${holder.since}${
      holder.purpose ? ` (${holder.purpose})` : ""
    }`
    : "a holder that has not written its name yet";
}

/** A held lock; release it (or let the process exit) to free it. */
export class FileLock {
  #file: Deno.FsFile | undefined;
  /** Lock file path. */
  readonly path: string;

  private constructor(path: string, file: Deno.FsFile) {
    this.path = path;
    this.#file = file;
  }

  /** True until {@linkcode FileLock.release} is called. */
  get held(): boolean {
    return this.#file !== undefined;
  }

  /**
   * Takes the lock at `path` if nobody holds it, else returns `null`. Creates the file (and its
   * folder, unless `mkdir: false`) when missing. A file-system error (read-only, no permission,
   * full) is a coded error from `errors/os.ts`.
   */
  static async tryAcquire(
    path: string,
    purpose?: string,
    options: TryLockOptions = {},
  ): Promise<FileLock | null> {
    if (options.mkdir ?? true) {
      await Deno.mkdir(dirname(path), { recursive: true }).catch((err) => {
        throw osError(err, "create the lock file's folder", dirname(path));
      });
    }
    for (let attempt = 0; attempt < 5; attempt++) {
      fsStep("open-lock", path);
      const file = await Deno.open(path, { read: true, write: true, create: true }).catch(
        (err) => {
          throw osError(err, "create the lock file", path);
        },
      );
      let locked = false;
      try {
        fsStep("flock", path);
        locked = await file.tryLock(!(options.shared ?? false));
      } catch (cause) {
        file.close();
        throw new CkptError(
          options.code ?? WATCH_CODES.code,
          `Cannot lock "${path}": ${(cause as Error).message}`,
          { file: path, cause },
        );
      }
      if (!locked) {
        file.close();
        return null;
      }
      // The path must still name the file we locked (its holder may have removed it).
      const [a, b] = [await file.stat(), await Deno.stat(path).catch(() => undefined)];
      if (b === undefined || a.ino !== b.ino || a.dev !== b.dev) {
        file.close();
        continue;
      }
      const holder: LockHolder = {
        pid: Deno.pid,
        host: Deno.hostname(),
        since: new Date().toISOString(),
        ...(purpose === undefined ? {} : { purpose }),
      };
      try {
        fsStep("write-lock", path);
        await file.truncate(0);
        await file.write(new TextEncoder().encode(JSON.stringify(holder) + "\n"));
      } catch (err) {
        await Deno.remove(path).catch(() => {}); // still held: nobody else can be using it
        file.close();
        throw osError(err, "write the lock file", path);
      }
      return new FileLock(path, file);
    }
    return null;
  }

  /**
   * Waits for the lock at `path`, polling every `pollMs` (default 20) up to `timeoutMs` (default
   * 30 s); `WATCH_LOCK_TIMEOUT` (or `timeoutCode`) naming the holder when it stays taken, or the
   * signal's reason when aborted.
   */
  static async acquire(path: string, options: LockOptions = {}): Promise<FileLock> {
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    for (;;) {
      options.signal?.throwIfAborted();
      const lock = await FileLock.tryAcquire(path, options.purpose, options);
      if (lock) return lock;
      if (Date.now() > deadline) {
        const holder = await readLockHolder(path);
        throw new CkptError(
          options.timeoutCode ?? WATCH_CODES.timeout.code,
          `Cannot lock "${path}": still held${holder ? ` by ${describeHolder(holder)}` : ""}`,
          { file: path, details: holder ? { ...holder } : {} },
        );
      }
      await new Promise((r) => setTimeout(r, options.pollMs ?? 20));
    }
  }

  /**
   * Releases the lock; safe to call twice. With `remove`, the lock file is deleted first, while
   * still held (and only if the path still names it), so nothing is left behind (never pass it for
   * a shared lock: other holders may still hold the file).
   */
  async release(options: { remove?: boolean } = {}): Promise<void> {
    const file = this.#file;
    if (!file) return;
    this.#file = undefined;
    try {
      if (options.remove) {
        const [a, b] = [await file.stat(), await Deno.stat(this.path).catch(() => undefined)];
        if (b !== undefined && a.ino === b.ino && a.dev === b.dev) {
          fsStep("remove-lock", this.path);
          await Deno.remove(this.path).catch(() => {});
        }
      }
      await file.unlock();
    } finally {
      file.close();
    }
  }

  /**
   * {@linkcode FileLock.release} with `remove`, synchronously: for a process that is exiting
   * (`unload`) with the lock still held.
   */
  releaseSync(options: { remove?: boolean } = {}): void {
    const file = this.#file;
    if (!file) return;
    this.#file = undefined;
    try {
      if (!options.remove) return;
      const [a, b] = [
        file.statSync(),
        (() => {
          try {
            return Deno.statSync(this.path);
          } catch {
            return undefined;
          }
        })(),
      ];
      if (b !== undefined && a.ino === b.ino && a.dev === b.dev) Deno.removeSync(this.path);
    } catch {
      /* exiting: best effort */
    } finally {
      file.close();
    }
  }

  /** Releases the lock at the end of an `await using` block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

/** The holder recorded in the lock file at `path`, if it parses (the lock may be free). */
export async function readLockHolder(path: string): Promise<LockHolder | undefined> {
  try {
    const value = JSON.parse(await Deno.readTextFile(path));
    return typeof value?.pid === "number" ? value as LockHolder : undefined;
  } catch {
    return undefined;
  }
}

/** True when somebody holds the lock at `path` right now (takes and drops it to find out). */
export async function isLocked(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
  } catch {
    return false;
  }
  const lock = await FileLock.tryAcquire(path, "probe", { mkdir: false });
  if (!lock) return true;
  await lock.release();
  return false;
}
