/**
 * Reads a small input file (JSON, JSONC, a template) whole, turning the OS error into a coded
 * {@linkcode CkptError} that names the file and says why: it does not exist, permission denied, it
 * is a folder. The one place inputs of that kind are read; large files go through positional reads.
 *
 * @example A missing file is a coded error naming the file
 * ```ts
 * import { readTextInput } from "./read_text.ts";
 * import assert from "node:assert/strict";
 *
 * await assert.rejects(
 *   readTextInput("/no/such/eval.json", { code: "INPUT_MISSING", what: "metrics" }),
 *   (err: Error & { code?: string }) =>
 *     err.code === "INPUT_MISSING" &&
 *     err.message === 'Cannot read metrics "/no/such/eval.json": it does not exist',
 * );
 * ```
 * @module
 */
import { CkptError, type ErrorCode } from "../errors.ts";
import { errnoOf, osError } from "../errors/os.ts";

/** What {@linkcode readTextInput} reports when the file cannot be read. */
export interface ReadTextOptions {
  /** Error code thrown when the file cannot be read. */
  code: ErrorCode;
  /** What the file is, for the message ("metrics", "adapter config"). */
  what: string;
}

/** Why an OS call failed, in a few words ("it does not exist", "permission denied", ...). */
export function osReason(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "it does not exist";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "it is a folder";
  if (err instanceof Deno.errors.NotADirectory) return "a parent is not a folder";
  return err instanceof Error ? err.message : String(err);
}

/**
 * The coded error for a failed read of an input: a file that is there but may not be read (no
 * permission, EACCES/EPERM) is `FS_PERMISSION`, never "missing"; anything else (it does not
 * exist, it is a folder) is `code`. Both name the file and the OS reason.
 */
export function inputReadError(
  cause: unknown,
  code: ErrorCode,
  what: string,
  path: string,
): CkptError {
  if (cause instanceof CkptError) return cause;
  const errno = errnoOf(cause);
  if (cause instanceof Deno.errors.PermissionDenied || errno === "EACCES" || errno === "EPERM") {
    return osError(cause, `read ${what}`, path);
  }
  return new CkptError(code, `Cannot read ${what} "${path}": ${osReason(cause)}`, {
    file: path,
    cause,
  });
}

/**
 * Reads `path` as UTF-8 text; throws `options.code` naming the file and the OS reason, or
 * `FS_PERMISSION` when the file may not be read (see {@linkcode inputReadError}).
 */
export async function readTextInput(path: string, options: ReadTextOptions): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (cause) {
    throw inputReadError(cause, options.code, options.what, path);
  }
}
