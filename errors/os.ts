/**
 * The one place that turns an operating-system error (a Deno error carrying an errno name such
 * as `EROFS` in `err.code`) into a coded {@linkcode CkptError} naming the operation and the path:
 * a read-only or full file system, a missing permission or an immutable folder, a name too long,
 * a folder in the way. Errors that are already coded pass through unchanged, so callers can wrap
 * whole blocks.
 *
 * @example Mapping an error
 * ```ts
 * import { osError } from "./os.ts";
 * import assert from "node:assert/strict";
 *
 * const errno = "EROFS"; // what Deno puts in `code` for a read-only file system
 * const cause = Object.assign(new Error("Read-only file system (os error 30)"), { code: errno });
 * const err = osError(cause, "create the staging folder", "/exports/run-1");
 * assert.equal(err.code, "FS_READ_ONLY");
 * assert.equal(err.file, "/exports/run-1");
 * assert.match(err.message, /^Cannot create the staging folder "\/exports\/run-1": .*\(EROFS\)$/);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import type { ErrorCode } from "./codes.ts";

/** What an errno means, and the code it maps to. */
interface ErrnoClass {
  code: ErrorCode;
  what: string;
}

/** errno name -> class. Anything else is `FS_ERROR` (or the caller's fallback code). */
const ERRNO: Readonly<Record<string, ErrnoClass>> = {
  EROFS: { code: "FS_READ_ONLY", what: "the file system is read-only" },
  EPERM: { code: "FS_PERMISSION", what: "the operation is not permitted (an immutable file?)" },
  EACCES: { code: "FS_PERMISSION", what: "permission denied" },
  ENOSPC: { code: "FS_NO_SPACE", what: "no space left on the device" },
  EDQUOT: { code: "FS_NO_SPACE", what: "the disk quota is exceeded" },
  ENAMETOOLONG: { code: "FS_NAME_TOO_LONG", what: "a file name is too long" },
  ENOTEMPTY: { code: "FS_NOT_EMPTY", what: "a folder in the way is not empty" },
  EEXIST: { code: "FS_EXISTS", what: "something already exists there" },
};

/** The code of any OS error of no known class. */
const GENERIC: { code: ErrorCode } = { code: "FS_ERROR" };

/** The errno name of an operating-system error (`"EROFS"`), or undefined for anything else. */
export function errnoOf(err: unknown): string | undefined {
  if (!(err instanceof Error) || err instanceof CkptError) return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === "string" && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

/** True when `err` is an operating-system error (it has an errno name). */
export function isOsError(err: unknown): boolean {
  return errnoOf(err) !== undefined;
}

/**
 * The coded error for `err` raised while doing `action` (a verb phrase: "create the staging
 * folder", "write") on `path`. A {@linkcode CkptError} is returned as it is; an OS error of a
 * known class gets that class's code; any other OS error gets `fallback.code` (default
 * `FS_ERROR`). Anything that is not an OS error is wrapped with `fallback.code` too, keeping it as
 * the cause.
 */
export function osError(
  err: unknown,
  action: string,
  path: string,
  fallback: { code: ErrorCode } = GENERIC,
): CkptError {
  if (err instanceof CkptError) return err;
  const errno = errnoOf(err);
  const known = errno === undefined ? undefined : ERRNO[errno];
  const detail = err instanceof Error ? err.message.replace(/ \(os error \d+\).*$/s, "") : "";
  const what = known?.what ?? (detail || String(err));
  return new CkptError(
    known?.code ?? fallback.code,
    `Cannot ${action} "${path}": ${what}${errno === undefined ? "" : ` (${errno})`}`,
    { file: path, cause: err, details: { errno: errno ?? null, action } },
  );
}

/**
 * The coded error for an OS error caught far from where it was raised (the last net of an entry
 * point): the operation and path are read from Deno's message (`"...: open '/x/y'"`).
 */
export function osErrorFromMessage(
  err: unknown,
  fallback?: { action: string; path: string },
): CkptError {
  const where = osErrorPlace(err);
  return osError(
    err,
    where?.action ?? fallback?.action ?? "access",
    where?.path ?? fallback?.path ?? "(unknown path)",
  );
}

/** The operation and path Deno names in an OS error's message (`"...: open '/x/y'"`), if any. */
function osErrorPlace(err: unknown): { action: string; path: string } | undefined {
  const message = err instanceof Error ? err.message : "";
  const m = /\(os error \d+\): (\w+) '([^']*)'/.exec(message);
  return m ? { action: m[1]!, path: m[2]! } : undefined;
}

/**
 * Runs `fn`, turning an OS error it throws into the coded error of {@linkcode osError}; other
 * errors (coded ones, aborts) pass through unchanged.
 */
export async function withOsErrors<T>(
  action: string,
  path: string,
  fn: () => Promise<T>,
  fallback?: { code: ErrorCode },
): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (isOsError(err)) throw osError(err, action, path, fallback);
    throw err;
  }
}
