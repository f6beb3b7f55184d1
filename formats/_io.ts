/**
 * Positional reads from an open file: the one primitive every reader uses so that nothing is read
 * whole. Reads go through `node:fs/promises` `FileHandle.read(buf, off, len, position)` (pread),
 * so concurrent reads of one handle never race on a shared cursor.
 * @module
 */
import { open as openFile } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { CkptError } from "../errors.ts";
import { phaseClock } from "./phase_clock.ts";

/** A file opened for positional reads. */
export class RandomAccessFile {
  #handle: FileHandle;
  #closed = false;
  /** Path the file was opened from (used in error messages). */
  readonly path: string;
  /** Size in bytes at open time. */
  readonly size: number;

  private constructor(path: string, handle: FileHandle, size: number) {
    this.path = path;
    this.#handle = handle;
    this.size = size;
  }

  /** Opens `path` read-only; `FILE_OPEN` when it cannot be opened. */
  static async open(path: string): Promise<RandomAccessFile> {
    let handle: FileHandle;
    try {
      handle = await openFile(path, "r");
    } catch (cause) {
      throw new CkptError("FILE_OPEN", `Cannot open "${path}": ${(cause as Error).message}`, {
        file: path,
        cause,
      });
    }
    const { size } = await handle.stat();
    if (!Number.isSafeInteger(size)) {
      await handle.close();
      throw new CkptError(
        "FILE_OPEN",
        `Cannot open "${path}": size ${size} is not a safe integer`,
        { file: path },
      );
    }
    return new RandomAccessFile(path, handle, size);
  }

  /**
   * Reads exactly `length` bytes at `offset` (into `into` when given, which must be at least
   * `length` bytes). `FILE_TRUNCATED` when the file ends first.
   */
  async readAt(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    if (this.#closed) {
      throw new CkptError("FILE_CLOSED", `Cannot read "${this.path}": it was closed`, {
        file: this.path,
      });
    }
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new CkptError(
        "FILE_TRUNCATED",
        `Cannot read ${length} bytes at offset ${offset} of "${this.path}": the file has ${this.size} bytes`,
        { file: this.path, offset },
      );
    }
    const buf = into ? into.subarray(0, length) : new Uint8Array(length);
    const t0 = phaseClock.start();
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.#handle.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        throw new CkptError(
          "FILE_TRUNCATED",
          `Cannot read "${this.path}": it ended at offset ${offset + done} (it shrank while open)`,
          { file: this.path, offset: offset + done },
        );
      }
      done += bytesRead;
    }
    phaseClock.stop("read", t0, length);
    return buf;
  }

  /** Closes the handle; safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#handle.close();
  }
}
