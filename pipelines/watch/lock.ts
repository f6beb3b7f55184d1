/**
 * An exclusive lock that survives crashes: an advisory `flock` on a lock file
 * (`Deno.FsFile.tryLock`). The kernel drops the lock when its holder exits for any reason
 * (SIGKILL, OOM, power loss of a container), so there is no stale-lock guessing. Locks conflict
 * between processes and between two opens in one process. The file stays in place (deleting a
 * lock file while others wait on it would let two holders in); it holds the holder's pid, host
 * and start time for `ckpt watch --status`.
 *
 * On NFS, Linux maps `flock` to byte-range locks handled by the server (NFSv4, or NFSv3 with
 * lockd), so watchers on different hosts exclude each other there too; on file systems without
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
 * await b.release();
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { dirname } from "node:path";
import { CkptError } from "../../errors.ts";

/** Who holds a lock, as written into the lock file. */
export interface LockHolder {
  /** Process id. */
  pid: number;
  /** Host name. */
  host: string;
  /** When the lock was taken (ISO 8601). */
  since: string;
  /** What the holder is doing, if it said. */
  purpose?: string;
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
   * Takes the lock at `path` if nobody holds it, else returns `null`. Creates the file and its
   * folder when missing.
   */
  static async tryAcquire(path: string, purpose?: string): Promise<FileLock | null> {
    await Deno.mkdir(dirname(path), { recursive: true });
    for (let attempt = 0; attempt < 5; attempt++) {
      const file = await Deno.open(path, { read: true, write: true, create: true });
      let locked = false;
      try {
        locked = await file.tryLock(true);
      } catch (cause) {
        file.close();
        throw new CkptError("WATCH_LOCK", `Cannot lock "${path}": ${(cause as Error).message}`, {
          file: path,
          cause,
        });
      }
      if (!locked) {
        file.close();
        return null;
      }
      // The path must still name the file we locked (someone may have removed the folder).
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
      await file.truncate(0);
      await file.write(new TextEncoder().encode(JSON.stringify(holder) + "\n"));
      return new FileLock(path, file);
    }
    return null;
  }

  /**
   * Waits for the lock at `path`, polling every `pollMs` (default 20) up to `timeoutMs` (default
   * 30 s); `WATCH_LOCK_TIMEOUT` when it stays taken, or the signal's reason when aborted.
   */
  static async acquire(
    path: string,
    options: { timeoutMs?: number; pollMs?: number; signal?: AbortSignal; purpose?: string } = {},
  ): Promise<FileLock> {
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    for (;;) {
      options.signal?.throwIfAborted();
      const lock = await FileLock.tryAcquire(path, options.purpose);
      if (lock) return lock;
      if (Date.now() > deadline) {
        const holder = await readLockHolder(path);
        throw new CkptError(
          "WATCH_LOCK_TIMEOUT",
          `Cannot lock "${path}": still held${
            holder ? ` by pid ${holder.pid} on ${holder.host} since ${holder.since}` : ""
          }`,
          { file: path, details: holder ? { ...holder } : {} },
        );
      }
      await new Promise((r) => setTimeout(r, options.pollMs ?? 20));
    }
  }

  /** Releases the lock; safe to call twice. */
  async release(): Promise<void> {
    const file = this.#file;
    if (!file) return;
    this.#file = undefined;
    try {
      await file.unlock();
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
  const lock = await FileLock.tryAcquire(path, "probe");
  if (!lock) return true;
  await lock.release();
  return false;
}
