/**
 * What every input kind's `detect` looks at: one {@linkcode InputProbe} per path, built once by
 * {@linkcode probeInput} (a `stat`, a folder listing or a file's first bytes read positionally), so
 * that detection is a set of pure checks and every caller (gatherShards, writeOptim, `ckpt inspect`,
 * `ckpt verify`) applies the same rules.
 *
 * @example Probing a folder
 * ```ts
 * import { probeInput } from "./probe.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL("../tests/fixtures/dcp/bf16_w4/model", import.meta.url).pathname;
 * const probe = await probeInput(dir);
 * assert.equal(probe.isDirectory, true);
 * assert.ok(probe.files.has(".metadata"));
 * ```
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../errors.ts";
import { RandomAccessFile } from "../formats/_io.ts";

/** How many leading bytes of a file a probe holds. */
export const PROBE_HEAD_BYTES = 64;

/** A path as detection sees it. */
export interface InputProbe {
  /** The path as given. */
  readonly path: string;
  /** True for a folder. */
  readonly isDirectory: boolean;
  /** File size in bytes (0 for a folder). */
  readonly size: number;
  /** Up to the first {@linkcode PROBE_HEAD_BYTES} bytes of a file (empty for a folder). */
  readonly head: Uint8Array;
  /** Entry names of a folder, sorted (empty for a file). */
  readonly names: readonly string[];
  /** The entries of a folder that are files (symbolic links followed), e.g. `model.safetensors`. */
  readonly files: ReadonlySet<string>;
  /**
   * Why the folder could not be listed or the file's first bytes could not be read, when that
   * happened (the probe then has no names or no head). Undefined when everything was read.
   */
  readonly unreadable?: unknown;
}

/**
 * Probes `path`. Rejects with the operating system's error when `path` cannot be `stat`ed (it does
 * not exist, permission denied); a folder that cannot be listed or a file that cannot be read gives
 * a probe with {@linkcode InputProbe.unreadable} set instead, so each caller decides what that means.
 */
export async function probeInput(path: string): Promise<InputProbe> {
  const stat = await Deno.stat(path);
  if (stat.isDirectory) {
    const names: string[] = [];
    const files = new Set<string>();
    try {
      for await (const e of Deno.readDir(path)) {
        names.push(e.name);
        if (e.isFile) files.add(e.name);
        else if (e.isSymlink) {
          const target = await Deno.stat(join(path, e.name)).catch(() => undefined);
          if (target?.isFile) files.add(e.name);
        }
      }
    } catch (cause) {
      return {
        path,
        isDirectory: true,
        size: 0,
        head: new Uint8Array(),
        names: [],
        files,
        unreadable: cause,
      };
    }
    names.sort();
    return { path, isDirectory: true, size: 0, head: new Uint8Array(), names, files };
  }
  const none = new Set<string>();
  try {
    const file = await RandomAccessFile.open(path);
    try {
      const head = await file.readAt(0, Math.min(PROBE_HEAD_BYTES, file.size));
      return { path, isDirectory: false, size: file.size, head, names: [], files: none };
    } finally {
      await file.close();
    }
  } catch (cause) {
    const os = cause instanceof CkptError && cause.cause !== undefined ? cause.cause : cause;
    return {
      path,
      isDirectory: false,
      size: stat.size,
      head: new Uint8Array(),
      names: [],
      files: none,
      unreadable: os,
    };
  }
}

/** True when `head` starts with a zip local file header (`PK\x03\x04`), as torch.save files do. */
export function startsLikeZip(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 &&
    head[3] === 0x04;
}
