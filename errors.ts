/**
 * The one error class of ckpt. Every failure the library raises is a {@linkcode CkptError} with a
 * stable {@linkcode CkptError.code}; tests and scripts branch on the code, never on the wording.
 * Messages read "Cannot <action>: <what was found>" and name the file, tensor and offset they concern.
 *
 * @example Branching on the code
 * ```ts
 * import { CkptError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const err = new CkptError("SAFETENSORS_HEADER_TOO_SMALL", "Cannot read header: file is 7 bytes", {
 *   file: "a.safetensors",
 * });
 * assert.equal(err.code, "SAFETENSORS_HEADER_TOO_SMALL");
 * assert.equal(err.file, "a.safetensors");
 * ```
 * The codes and their meanings are {@linkcode ERROR_CODES} (reference: `docs/errors.md`); the
 * constructor takes an {@linkcode ErrorCode}, so the type checker rejects a code that is not there.
 * @module
 */
import type { ErrorCode } from "./errors/codes.ts";
export { ERROR_CODES, type ErrorCode } from "./errors/codes.ts";

/** Where an error happened: any of file, tensor, byte offset and JSON path. */
export interface ErrorContext {
  /** File the error concerns. */
  file?: string;
  /** Tensor (state-dict key) the error concerns. */
  tensor?: string;
  /** Byte offset in {@linkcode ErrorContext.file}. */
  offset?: number;
  /** Further machine-readable details. */
  details?: Record<string, unknown>;
  /** Underlying cause. */
  cause?: unknown;
}

/**
 * The error every ckpt module throws. `code` is stable across releases (see `docs/errors.md`);
 * the message is for humans.
 */
export class CkptError extends Error {
  /** Stable machine-readable code such as `SAFETENSORS_OFFSETS`. */
  readonly code: ErrorCode;
  /** File the error concerns, if any. */
  readonly file: string | undefined;
  /** Tensor the error concerns, if any. */
  readonly tensor: string | undefined;
  /** Byte offset the error concerns, if any. */
  readonly offset: number | undefined;
  /** Extra details for scripts. */
  readonly details: Record<string, unknown> | undefined;

  /** Creates an error with a stable code and a "Cannot ...: ..." message. */
  constructor(code: ErrorCode, message: string, context: ErrorContext = {}) {
    super(message, context.cause === undefined ? undefined : { cause: context.cause });
    this.name = "CkptError";
    this.code = code;
    this.file = context.file;
    this.tensor = context.tensor;
    this.offset = context.offset;
    this.details = context.details;
  }

  /** A plain object for JSON logs. */
  toJSON(): Record<string, unknown> {
    return {
      code: this.code,
      message: this.message,
      ...(this.file === undefined ? {} : { file: this.file }),
      ...(this.tensor === undefined ? {} : { tensor: this.tensor }),
      ...(this.offset === undefined ? {} : { offset: this.offset }),
      ...(this.details === undefined ? {} : { details: this.details }),
    };
  }
}

/** True when `err` is a {@linkcode CkptError}, optionally with the given code. */
export function isCkptError(err: unknown, code?: ErrorCode): err is CkptError {
  return err instanceof CkptError && (code === undefined || err.code === code);
}
