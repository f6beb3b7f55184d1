/**
 * Where a run writes, and how it lands: the staging folder, the clean-up after dead runs, the
 * final rename. This is the module to read first; its neighbours hold the output lock and parent
 * folders (`_output_lock.ts`) and the check of the staging contents (`_staging_contents.ts`).
 *
 * Names (all beside the output, in its parent folder; `<key>` is 16 hex digits of the sha256 of
 * the output's name, {@linkcode outputKey}, so any legal output name, up to 255 bytes, leaves
 * room for them):
 *
 * - `.ckpt-lock-<key>`: the output lock (`_output_lock.ts`), a `flock`ed file held for the whole
 *   run and removed when the run ends. A second run on the same output gets `OUTPUT_LOCKED`
 *   naming the holder, or waits for it.
 * - `.ckpt-staging-<key>-<rand>`: the staging folder ({@linkcode StagingFolder}); the run holds a
 *   `flock` on the folder itself for its whole life.
 * - `.ckpt-old-<key>-<rand>`: an output set aside by `--overwrite` between its two renames,
 *   locked the same way by the run replacing it.
 *
 * Liveness is decided by those locks alone, never by PIDs: the kernel drops a lock when its
 * holder dies, whatever PID namespace it ran in. {@linkcode removeStaleStaging} (called with the
 * output lock held) removes the staging folders whose lock it can take, and for an old output
 * whose lock it can take, puts it back when the output is missing (the replacement never landed)
 * or removes it.
 *
 * Landing: {@linkcode StagingFolder.seal} checks the folder holds exactly the files the stages
 * reported and fsyncs each, the runner writes the manifest (fsynced),
 * {@linkcode StagingFolder.syncFolders} fsyncs the folders, {@linkcode StagingFolder.commit}
 * renames the folder into place (an existing ckpt output, with `overwrite`: old aside, new in, old
 * removed) and fsyncs the parent.
 *
 * Every file-system call here passes `fsStep` (test-only fault injection, `_faults.ts`) and maps
 * OS errors to coded ones (`errors/os.ts`).
 * @module
 */
import { basename, dirname, join } from "node:path";
import { createHash } from "node:crypto";
import { CkptError } from "../errors.ts";
import { osError } from "../errors/os.ts";
import { fsStep } from "./_faults.ts";
import { checkContents, MANIFEST_NAME, type ReportedFile } from "./_staging_contents.ts";
import { phaseClock } from "../formats/phase_clock.ts";

export type { ReportedFile };

/** How long a discard waits for an abandoned stage to notice an abort before removing again. */
const STRAGGLER_MS = 2000;

/** True when `path` exists (a dangling link counts). A name too long is a coded error. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return false;
    }
    throw osError(err, "look up", path);
  }
}

/** The 16-hex-digit key of an output name in the lock, staging and old names. */
export function outputKey(name: string): string {
  return createHash("sha256").update(name).digest("hex").slice(0, 16);
}

function randomId(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 8);
}

/** Runs one file-system call: marks it for fault injection, maps an OS error. */
export async function fsCall<T>(op: string, action: string, path: string, fn: () => Promise<T>) {
  fsStep(op, path);
  try {
    return await fn();
  } catch (err) {
    throw osError(err, action, path);
  }
}

/** Files {@linkcode StagingFolder.seal} fsyncs at once (one journal commit can serve several). */
const SYNC_AT_ONCE = 16;

/** fsyncs a file or a folder, opened for reading (`op` and `action` name the step for errors). */
function syncPath(op: string, action: string, path: string): Promise<void> {
  return fsCall(op, action, path, async () => {
    const file = await Deno.open(path, { read: true });
    const t0 = phaseClock.start();
    try {
      await file.sync();
    } finally {
      phaseClock.stop("fsync", t0);
      file.close();
    }
  });
}

/** fsyncs one file. */
function syncFile(abs: string): Promise<void> {
  return syncPath("fsync", "sync", abs);
}

/** A folder held by an open, `flock`ed descriptor (staging, or an output set aside). */
async function lockFolder(path: string): Promise<Deno.FsFile | null> {
  let dir: Deno.FsFile;
  try {
    fsStep("open-dir", path);
    dir = await Deno.open(path, { read: true });
  } catch {
    return null; // gone, or not a folder: nothing to hold
  }
  try {
    fsStep("flock", path);
    if (await dir.tryLock(true)) return dir;
  } catch {
    // no lock support: treat as held, never remove what may be live
  }
  dir.close();
  return null;
}

/**
 * Cleans up after dead runs for output `name` in `parent` (call it with the output lock held):
 * staging folders whose lock can be taken are removed; an old output set aside by an interrupted
 * `--overwrite` is put back when the output is missing (the replacement never landed), else
 * removed. Folders still locked belong to live runs and are left alone.
 */
export async function removeStaleStaging(parent: string, name: string): Promise<void> {
  const key = outputKey(name);
  const staging = `.ckpt-staging-${key}-`;
  const old = `.ckpt-old-${key}-`;
  const entries: string[] = [];
  fsStep("readdir", parent);
  try {
    for await (const e of Deno.readDir(parent)) {
      if (e.name.startsWith(staging) || e.name.startsWith(old)) entries.push(e.name);
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    throw osError(err, "list", parent);
  }
  const output = join(parent, name);
  for (const entry of entries.sort()) {
    const path = join(parent, entry);
    const held = await lockFolder(path);
    if (!held) continue;
    try {
      if (entry.startsWith(old) && !(await exists(output))) {
        await fsCall("rename", "put back the old output", path, () => Deno.rename(path, output));
        await syncFolder(parent);
      } else {
        await fsCall(
          "remove",
          "remove a dead run's folder",
          path,
          () => Deno.remove(path, { recursive: true }),
        );
      }
    } finally {
      held.close();
    }
  }
}

/** fsyncs a folder (its entries' names and sizes reach the disk). */
async function syncFolder(path: string): Promise<void> {
  await syncPath("fsync-dir", "sync the folder", path);
}

/** The folder a run writes into, beside its output. */
export class StagingFolder {
  /** Absolute path of the staging folder (in a dry run: where it would be; not created). */
  readonly path: string;
  readonly #output: string;
  readonly #dryRun: boolean;
  /** The open, locked staging folder: the run's liveness, released when the run ends. */
  #lock: Deno.FsFile | undefined;
  #settled = false;

  private constructor(output: string, dryRun: boolean, path?: string) {
    this.#output = output;
    this.#dryRun = dryRun;
    const key = outputKey(basename(output));
    this.path = path ?? join(dirname(output), `.ckpt-staging-${key}-${randomId()}`);
  }

  /**
   * Takes an existing folder as the staging folder of `output` (the shared folder of a split
   * export, which the finish renames into place), locked like one it created. `OUTPUT_LOCKED`
   * when another process holds its lock.
   */
  static async adopt(output: string, path: string): Promise<StagingFolder> {
    const staging = new StagingFolder(output, false, path);
    staging.#lock = (await lockFolder(path)) ?? undefined;
    if (!staging.#lock) {
      throw new CkptError(
        "OUTPUT_LOCKED",
        `Cannot lock the folder "${path}": another process holds it, or the file system refused`,
        { file: path },
      );
    }
    return staging;
  }

  /** Creates and locks the staging folder of `output`; in a dry run only the path is chosen. */
  static async create(output: string, options: { dryRun: boolean }): Promise<StagingFolder> {
    const staging = new StagingFolder(output, options.dryRun);
    if (options.dryRun) return staging;
    await fsCall(
      "mkdir",
      "create the staging folder",
      staging.path,
      () => Deno.mkdir(staging.path),
    );
    staging.#lock = (await lockFolder(staging.path)) ?? undefined;
    if (!staging.#lock) {
      await Deno.remove(staging.path, { recursive: true }).catch(() => {});
      throw new CkptError(
        "OUTPUT_LOCKED",
        `Cannot lock the staging folder "${staging.path}": the file system refused the lock`,
        { file: staging.path },
      );
    }
    return staging;
  }

  /**
   * Checks the folder holds exactly what the stages reported (`STAGING_UNREPORTED` for anything
   * else, of any type; `STAGING_MISMATCH` for a reported file missing or of another size; see
   * `_staging_contents.ts`; top-level names in `ignore` are left out of the check), then fsyncs
   * every file, several at once. Resolves to the reported paths, sorted.
   */
  async seal(files: readonly ReportedFile[], ignore?: ReadonlySet<string>): Promise<string[]> {
    const paths = await checkContents(this.path, files, ignore);
    for (let i = 0; i < paths.length; i += SYNC_AT_ONCE) {
      const synced = await Promise.allSettled(
        paths.slice(i, i + SYNC_AT_ONCE).map((rel) => syncFile(join(this.path, rel))),
      );
      const failed = synced.find((r) => r.status === "rejected");
      if (failed) throw failed.reason; // the first in path order
    }
    return paths;
  }

  /** fsyncs every folder of the staging tree, deepest first, the staging folder last. */
  async syncFolders(paths: readonly string[]): Promise<void> {
    const folders = new Set<string>();
    for (const p of paths) for (let d = dirname(p); d !== "."; d = dirname(d)) folders.add(d);
    const deepestFirst = [...folders].sort((a, b) => b.split("/").length - a.split("/").length);
    for (const d of deepestFirst) await syncFolder(join(this.path, d));
    await syncFolder(this.path);
  }

  /**
   * Renames the finished folder to the output and fsyncs the parent. An existing output is
   * replaced only with `overwrite` (old renamed aside and locked, new renamed in, old deleted),
   * and only when it holds a ckpt manifest unless `force`; else `OUTPUT_EXISTS` /
   * `OUTPUT_NOT_CKPT`.
   */
  async commit(options: { overwrite: boolean; force: boolean }): Promise<void> {
    const output = this.#output;
    const parent = dirname(output);
    if (!(await exists(output))) {
      try {
        fsStep("rename", this.path);
        await Deno.rename(this.path, output);
        this.#settled = true;
      } catch (err) {
        // Another program may have created it between the check and the rename.
        if (!(await exists(output))) throw osError(err, "rename the staging folder to", output);
      }
      if (this.#settled) {
        await syncFolder(parent);
        this.#release();
        return;
      }
    }
    if (!options.overwrite) {
      throw new CkptError(
        "OUTPUT_EXISTS",
        `Cannot write output "${output}": it appeared while the pipeline ran`,
        { file: output },
      );
    }
    await checkReplaceable(output, options.force);
    const old = join(parent, `.ckpt-old-${outputKey(basename(output))}-${randomId()}`);
    const held = await lockFolder(output);
    try {
      await fsCall("rename", "set the old output aside as", old, () => Deno.rename(output, old));
      try {
        await fsCall(
          "rename",
          "rename the staging folder to",
          output,
          () => Deno.rename(this.path, output),
        );
      } catch (err) {
        await Deno.rename(old, output).catch(() => {});
        throw err;
      }
      this.#settled = true;
      await syncFolder(parent);
      this.#release();
      fsStep("remove", old);
      await Deno.remove(old, { recursive: true }).catch(() => {});
    } finally {
      held?.close();
    }
  }

  /**
   * Removes the folder synchronously unless it was committed or discarded: for a process that
   * exits (`unload`, e.g. the CLI's grace timer after a signal) while a stage still runs.
   */
  discardSync(): void {
    if (this.#settled || this.#dryRun) return;
    this.#settled = true;
    try {
      Deno.removeSync(this.path, { recursive: true });
    } catch { /* exiting: best effort */ }
    this.#release();
  }

  /** Lets the folder go without removing it (a failed finish keeps the parts' work). */
  release(): void {
    this.#settled = true;
    this.#release();
  }

  #release(): void {
    try {
      this.#lock?.close();
    } catch { /* already closed */ }
    this.#lock = undefined;
  }

  /**
   * Removes the folder unless it was committed. `inFlight` is the stage that may still write after
   * an abort: it gets a moment, then the folder is removed again.
   */
  async discard(inFlight: Promise<void>): Promise<void> {
    if (this.#settled || this.#dryRun) return;
    this.#settled = true;
    try {
      await Deno.remove(this.path, { recursive: true }).catch(() => {});
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([inFlight, new Promise((r) => (timer = setTimeout(r, STRAGGLER_MS)))]);
      clearTimeout(timer);
      // Whether the stage ended or the wait did, remove again what it may have written meanwhile
      // (a folder that is not there is nothing to remove).
      await Deno.remove(this.path, { recursive: true }).catch(() => {});
    } finally {
      this.#release();
    }
  }
}

/**
 * `OUTPUT_NOT_CKPT` unless `output` holds a ckpt manifest (or `force`): `--overwrite` replaces
 * only what ckpt wrote.
 */
export async function checkReplaceable(output: string, force: boolean): Promise<void> {
  if (force) return;
  fsStep("stat", output);
  const manifest = await Deno.lstat(join(output, MANIFEST_NAME)).catch(() => undefined);
  if (manifest?.isFile) return;
  throw new CkptError(
    "OUTPUT_NOT_CKPT",
    `Cannot overwrite "${output}": it has no ${MANIFEST_NAME}, so ckpt did not write it (its ` +
      `files would be lost); remove it yourself, or pass --force with --overwrite`,
    { file: output },
  );
}
