/**
 * Finds checkpoint folders in a runs folder by glob pattern and orders them oldest first.
 *
 * @example Scanning a runs folder
 * ```ts
 * import { scanCheckpoints } from "./scan.ts";
 * import assert from "node:assert/strict";
 *
 * const runs = await Deno.makeTempDir();
 * for (const d of ["step-640", "step-64", "FINAL", "logs"]) await Deno.mkdir(`${runs}/${d}`);
 * const found = await scanCheckpoints(runs, ["step-*", "FINAL"]);
 * assert.deepEqual(found.map((c) => c.name), ["step-64", "step-640", "FINAL"]);
 * assert.equal(found[0]!.step, 64);
 * await Deno.remove(runs, { recursive: true });
 * ```
 * @module
 */
import { join, resolve } from "node:path";
import { MANIFEST_NAME } from "../manifest.ts";
import { type GlobMatcher, globMatcher } from "./config.ts";

/** Folder name of the watcher's own files (state, locks) inside the runs folder. */
export const WATCH_DIR = ".ckpt-watch";

/** One checkpoint folder found by {@linkcode scanCheckpoints}. */
export interface CheckpointFolder {
  /** Path relative to the runs folder with `/` separators (`step-64000`, `run-a/FINAL`): the state key. */
  readonly name: string;
  /** Absolute path. */
  readonly path: string;
  /** Last number in the folder's own name (`step-64000` -> 64000), if any. */
  readonly step: number | undefined;
}

/** Options of {@linkcode scanCheckpoints}. */
export interface ScanOptions {
  /** Absolute paths never returned (outputs the watcher recorded). */
  exclude?: ReadonlySet<string>;
  /** Names already known to be checkpoints (in the state file): returned without further checks. */
  known?: ReadonlySet<string>;
}

/** The last run of digits in `name` as a number, or undefined. */
export function stepOf(name: string): number | undefined {
  const m = name.match(/(\d+)(?!.*\d)/);
  if (!m) return undefined;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * Orders checkpoints oldest first: numbered folders by number, then folders without a number
 * (`FINAL`, written last by a training run), ties by name.
 */
export function compareCheckpoints(a: CheckpointFolder, b: CheckpointFolder): number {
  const sa = a.step ?? Infinity;
  const sb = b.step ?? Infinity;
  if (sa !== sb) return sa < sb ? -1 : 1;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * Lists the folders under `runsDir` that match any of `patterns` (globs relative to `runsDir`, one
 * segment per level), oldest first. Hidden entries (the watcher's files, staging folders), folders
 * holding a {@linkcode MANIFEST_NAME} (finished exports) and `options.exclude` are skipped.
 */
export async function scanCheckpoints(
  runsDir: string,
  patterns: readonly string[],
  options: ScanOptions = {},
): Promise<CheckpointFolder[]> {
  const root = resolve(runsDir);
  const found = new Map<string, CheckpointFolder>();
  for (const pattern of patterns) {
    const segments = pattern.split("/").filter((s) => s !== "" && s !== ".");
    if (segments.length === 0) continue;
    await walk(root, "", segments.map(globMatcher), found, options);
  }
  return [...found.values()].sort(compareCheckpoints);
}

async function walk(
  dir: string,
  rel: string,
  segments: GlobMatcher[],
  found: Map<string, CheckpointFolder>,
  options: ScanOptions,
): Promise<void> {
  const [head, ...rest] = segments;
  if (!head) return;
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) return;
    throw err;
  }
  for (const entry of entries) {
    if (entry.name.startsWith(".") || !head.test(entry.name)) continue;
    const path = join(dir, entry.name);
    let isDir = entry.isDirectory;
    if (entry.isSymlink) {
      isDir = (await Deno.stat(path).catch(() => undefined))?.isDirectory ?? false;
    }
    if (!isDir) continue;
    const name = rel === "" ? entry.name : `${rel}/${entry.name}`;
    if (rest.length > 0) {
      await walk(path, name, rest, found, options);
      continue;
    }
    if (found.has(name) || options.exclude?.has(path)) continue;
    if (!options.known?.has(name) && await exists(join(path, MANIFEST_NAME))) continue;
    found.set(name, { name, path, step: stepOf(entry.name) });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}
