/**
 * A zip container reader for torch.save archives: end of central directory, zip64 records,
 * central directory, local headers (the data offset always comes from the local header, as torch
 * pads there), stored entries only. Entries are read by byte range from the open file; nothing
 * reads the whole archive. The archive may be a slice `[base, base + length)` of a larger file
 * (a DCP `.distcp` item).
 *
 * Error codes: `ZIP_EOCD` (no end record), `ZIP_BAD_OFFSET` (a directory or entry points outside
 * the archive), `ZIP_MALFORMED` (bad signatures, sizes, encryption), `ZIP_COMPRESSED` (an entry is
 * not stored), `ZIP_NAME` (absolute names, `..`, backslashes, NUL), `ZIP_DUPLICATE`, `ZIP_OVERLAP`
 * (two entries share bytes), `ZIP_LIMIT` (directory too large).
 *
 * @example Listing a zip written in memory
 * ```ts
 * import { ZipReader } from "./zip.ts";
 * import { writeTorchZip } from "./zip_writer.ts";
 * import { RandomAccessFile } from "../_io.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".zip" });
 * await writeTorchZip(path, "archive", [{ name: "data.pkl", bytes: new Uint8Array([0x80, 2, 0x4e, 0x2e]) }]);
 * const file = await RandomAccessFile.open(path);
 * const zip = await ZipReader.open(file);
 * assert.deepEqual(zip.entries.map((e) => e.name), ["archive/data.pkl"]);
 * assert.deepEqual([...await zip.read(zip.get("archive/data.pkl")!)], [0x80, 2, 0x4e, 0x2e]);
 * await file.close();
 * await Deno.remove(path);
 * ```
 * @module
 */
import { CkptError, type ErrorCode } from "../../errors.ts";
import {
  checkDirectoryBounds,
  checkNoOverlap,
  findCentralDirectory,
  parseCentralDirectory,
  type PositionalFile,
  resolveDataOffsets,
  type ZipEntry,
} from "./_zip_directory.ts";

export type { PositionalFile, ZipEntry };

/** Options of {@linkcode ZipReader.open}. */
export interface ZipOpenOptions {
  /** Start of the archive in the file. Default 0. */
  base?: number;
  /** Archive length. Default: to the end of the file. */
  length?: number;
  /** Most entries accepted. Default 1,000,000. */
  maxEntries?: number;
}

/** A parsed zip archive over an open file; entries in central-directory order. */
export class ZipReader {
  /** The file the archive lives in. */
  readonly file: PositionalFile;
  /** Start of the archive in the file. */
  readonly base: number;
  /** Archive length. */
  readonly length: number;
  /** Entries in central-directory order. */
  readonly entries: readonly ZipEntry[];
  #byName: Map<string, ZipEntry>;

  private constructor(file: PositionalFile, base: number, length: number, entries: ZipEntry[]) {
    this.file = file;
    this.base = base;
    this.length = length;
    this.entries = entries;
    this.#byName = new Map(entries.map((e) => [e.name, e]));
  }

  /** The entry called `name` (full name), if any. */
  get(name: string): ZipEntry | undefined {
    return this.#byName.get(name);
  }

  /** Reads bytes `[start, end)` of an entry's data (default: all of it), into `into` when given. */
  read(
    entry: ZipEntry,
    start = 0,
    end: number = entry.size,
    into?: Uint8Array,
  ): Promise<Uint8Array> {
    if (entry.method !== 0) {
      throw new CkptError(
        "ZIP_COMPRESSED",
        `Cannot read zip entry "${entry.name}": it is compressed (method ${entry.method}); torch stores records uncompressed`,
        { file: this.file.path },
      );
    }
    if (start < 0 || end > entry.size || end < start) {
      throw new CkptError(
        "ZIP_BAD_OFFSET",
        `Cannot read bytes [${start}, ${end}) of zip entry "${entry.name}": it has ${entry.size}`,
        { file: this.file.path },
      );
    }
    return this.file.readAt(this.base + entry.dataOffset + start, end - start, into);
  }

  /** Parses the archive's directories and local headers. */
  static async open(file: PositionalFile, options: ZipOpenOptions = {}): Promise<ZipReader> {
    const base = options.base ?? 0;
    const length = options.length ?? file.size - base;
    const fail = (code: ErrorCode, msg: string, offset?: number): CkptError =>
      new CkptError(code, `Cannot read zip archive: ${msg}`, {
        file: file.path,
        ...(offset === undefined ? {} : { offset: base + offset }),
      });
    if (base < 0 || length < 0 || base + length > file.size) {
      throw fail(
        "ZIP_BAD_OFFSET",
        `slice [${base}, ${base + length}) is outside the ${file.size}-byte file`,
      );
    }
    if (length < 22) throw fail("ZIP_EOCD", `${length} bytes is too short for a zip`);
    const dir = await findCentralDirectory(file, base, length, fail);
    checkDirectoryBounds(dir, options.maxEntries ?? 1_000_000, fail);
    const cd = await file.readAt(base + dir.offset, dir.size);
    const entries = parseCentralDirectory(cd, dir, fail);
    const resolved = await resolveDataOffsets(file, base, entries, dir.offset, fail);
    checkNoOverlap(resolved, fail);
    return new ZipReader(file, base, length, resolved);
  }
}
