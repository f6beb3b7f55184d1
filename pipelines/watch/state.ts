/**
 * The watcher's state file, `<runs>/.ckpt-watch/state.json`: one record per checkpoint it has
 * tried (status, tries, output, manifest hash, last error). Written atomically (temp file, fsync,
 * rename), and read-modify-written only under the state lock `<runs>/.ckpt-watch/state.lock`, so
 * concurrent watchers never lose each other's updates and a crash leaves either the old or the new
 * file, never half of one.
 *
 * @example Updating the state
 * ```ts
 * import { loadState, updateState } from "./state.ts";
 * import assert from "node:assert/strict";
 *
 * const runs = await Deno.makeTempDir();
 * await updateState(runs, (s) => {
 *   s.checkpoints["step-64"] = { status: "done", tries: 1, output: "/x", manifestSha256: "ab" };
 * });
 * assert.equal((await loadState(runs)).checkpoints["step-64"]?.status, "done");
 * await Deno.remove(runs, { recursive: true });
 * ```
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../../errors.ts";
import { FileLock } from "./lock.ts";
import { WATCH_DIR } from "./scan.ts";

/** Version of the state file layout. */
export const STATE_VERSION = 1;

/**
 * Status of one checkpoint: `running` (an export started; if its lock is free the watcher died),
 * `error` (the last try failed; retried on the next tick), `aborted` (SIGTERM stopped it; retried,
 * not counted as a try), `done` (exported and verified), `failed` (gave up after `maxTries`).
 */
export type CheckpointStatus = "running" | "error" | "aborted" | "done" | "failed";

/** One checkpoint's record. */
export interface CheckpointRecord {
  /** Where it stands. */
  status: CheckpointStatus;
  /** Tries so far (aborted tries are not counted). */
  tries: number;
  /** Step number parsed from the folder name. */
  step?: number;
  /** When the last try started (ISO 8601). */
  startedAt?: string;
  /** When the last try ended (ISO 8601). */
  finishedAt?: string;
  /** Duration of the last successful export in ms. */
  ms?: number;
  /** Who ran the last try. */
  owner?: { pid: number; host: string };
  /** Output folder of the export. */
  output?: string;
  /** sha256 of the export's manifest. */
  manifestSha256?: string;
  /** Last error (kept after a later success is cleared). */
  error?: { code: string; message: string };
  /** True once retention deleted the export's output. */
  pruned?: boolean;
  /** When the output was deleted by retention (ISO 8601). */
  prunedAt?: string;
}

/** The whole state file. */
export interface WatchState {
  /** Layout version ({@linkcode STATE_VERSION}). */
  version: number;
  /** Last write (ISO 8601). */
  updatedAt: string;
  /** Records by checkpoint name (path relative to the runs folder). */
  checkpoints: Record<string, CheckpointRecord>;
}

/** Path of the state file of `runsDir`. */
export function statePath(runsDir: string): string {
  return join(runsDir, WATCH_DIR, "state.json");
}

/** Path of the lock guarding the state file of `runsDir`. */
export function stateLockPath(runsDir: string): string {
  return join(runsDir, WATCH_DIR, "state.lock");
}

/** An empty state. */
export function emptyState(): WatchState {
  return { version: STATE_VERSION, updatedAt: new Date(0).toISOString(), checkpoints: {} };
}

/**
 * Reads the state of `runsDir` (empty when there is none yet). `WATCH_STATE` when the file exists
 * but is not a state file this version understands.
 */
export async function loadState(runsDir: string): Promise<WatchState> {
  const path = statePath(runsDir);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return emptyState();
    throw err;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new CkptError("WATCH_STATE", `Cannot read state "${path}": not JSON`, {
      file: path,
      cause,
    });
  }
  const v = value as Partial<WatchState> | null;
  if (
    typeof v !== "object" || v === null || v.version !== STATE_VERSION ||
    typeof v.checkpoints !== "object" || v.checkpoints === null
  ) {
    throw new CkptError(
      "WATCH_STATE",
      `Cannot read state "${path}": expected version ${STATE_VERSION} with "checkpoints"`,
      { file: path },
    );
  }
  return v as WatchState;
}

/** Writes `state` to the state file atomically (temp file in the same folder, fsync, rename). */
export async function saveState(runsDir: string, state: WatchState): Promise<void> {
  const path = statePath(runsDir);
  await Deno.mkdir(join(runsDir, WATCH_DIR), { recursive: true });
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  state.updatedAt = new Date().toISOString();
  const file = await Deno.open(tmp, { write: true, createNew: true });
  try {
    const bytes = new TextEncoder().encode(JSON.stringify(state, null, 2) + "\n");
    let done = 0;
    while (done < bytes.length) done += await file.write(bytes.subarray(done));
    await file.sync();
  } finally {
    file.close();
  }
  try {
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
}

/**
 * Read-modify-write under the state lock: loads the state, calls `fn` (which mutates it and may
 * return a value), saves it, and returns `fn`'s value. Waits up to `timeoutMs` (default 30 s) for
 * the lock.
 */
export async function updateState<T>(
  runsDir: string,
  fn: (state: WatchState) => T | Promise<T>,
  options: { timeoutMs?: number } = {},
): Promise<T> {
  const lock = await FileLock.acquire(stateLockPath(runsDir), {
    purpose: "state",
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  });
  try {
    const state = await loadState(runsDir);
    const result = await fn(state);
    await saveState(runsDir, state);
    return result;
  } finally {
    await lock.release();
  }
}
