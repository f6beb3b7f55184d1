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

/**
 * A file readable at positions: what the zip reader needs (`RandomAccessFile` from
 * `formats/_io.ts` is one).
 */
export interface PositionalFile {
  /** Path, for error messages. */
  readonly path: string;
  /** Size in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `offset`. */
  readAt(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array>;
}

/** One stored entry. Offsets are relative to the archive start. */
export interface ZipEntry {
  /** Full name (with the archive prefix folder). */
  readonly name: string;
  /** Offset of the local header. */
  readonly headerOffset: number;
  /** Offset of the first data byte (from the local header). */
  readonly dataOffset: number;
  /** Data size in bytes. */
  readonly size: number;
  /** CRC-32 from the central directory (0 when the writer did not compute it). */
  readonly crc32: number;
  /** General-purpose flags. */
  readonly flags: number;
  /** Compression method (0 = stored; anything else is refused on read with `ZIP_COMPRESSED`). */
  readonly method: number;
  /** Bytes the entry occupies in the archive (equals `size` for stored entries). */
  readonly storedSize: number;
}

/** Options of {@linkcode ZipReader.open}. */
export interface ZipOpenOptions {
  /** Start of the archive in the file. Default 0. */
  base?: number;
  /** Archive length. Default: to the end of the file. */
  length?: number;
  /** Most entries accepted. Default 1,000,000. */
  maxEntries?: number;
}

const SIG_LFH = 0x04034b50;
const SIG_CD = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_Z64_EOCD = 0x06064b50;
const SIG_Z64_LOC = 0x07064b50;

function u64(dv: DataView, at: number): number {
  const v = dv.getBigUint64(at, true);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.POSITIVE_INFINITY : Number(v);
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
    const maxEntries = options.maxEntries ?? 1_000_000;
    const path = file.path;
    const fail = (code: ErrorCode, msg: string, offset?: number): CkptError =>
      new CkptError(code, `Cannot read zip archive: ${msg}`, {
        file: path,
        ...(offset === undefined ? {} : { offset: base + offset }),
      });
    if (base < 0 || length < 0 || base + length > file.size) {
      throw fail(
        "ZIP_BAD_OFFSET",
        `slice [${base}, ${base + length}) is outside the ${file.size}-byte file`,
      );
    }
    if (length < 22) throw fail("ZIP_EOCD", `${length} bytes is too short for a zip`);
    const tailLen = Math.min(length, 22 + 0xffff + 20 + 56);
    const tailStart = length - tailLen;
    const tail = await file.readAt(base + tailStart, tailLen);
    const tdv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
    let eocd = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tdv.getUint32(i, true) === SIG_EOCD && i + 22 + tdv.getUint16(i + 20, true) === tailLen) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw fail("ZIP_EOCD", "no end-of-central-directory record");
    let count = tdv.getUint16(eocd + 10, true);
    let cdSize = tdv.getUint32(eocd + 12, true);
    let cdOffset = tdv.getUint32(eocd + 16, true);
    let cdLimit = tailStart + eocd; // the central directory must end before this
    if (eocd >= 20 && tdv.getUint32(eocd - 20, true) === SIG_Z64_LOC) {
      const z64At = u64(tdv, eocd - 20 + 8);
      if (z64At + 56 > tailStart + eocd - 20) {
        throw fail(
          "ZIP_BAD_OFFSET",
          `zip64 end record at ${z64At} is outside the archive`,
          tailStart + eocd - 20,
        );
      }
      const z = await file.readAt(base + z64At, 56);
      const zdv = new DataView(z.buffer, z.byteOffset, 56);
      if (zdv.getUint32(0, true) !== SIG_Z64_EOCD) {
        throw fail("ZIP_MALFORMED", "bad zip64 end record signature", z64At);
      }
      count = u64(zdv, 32);
      cdSize = u64(zdv, 40);
      cdOffset = u64(zdv, 48);
      cdLimit = z64At;
    }
    if (!(cdOffset + cdSize <= cdLimit)) {
      throw fail(
        "ZIP_BAD_OFFSET",
        `central directory [${cdOffset}, ${
          cdOffset + cdSize
        }) is outside the archive (limit ${cdLimit})`,
      );
    }
    if (count > maxEntries || count * 46 > cdSize) {
      throw fail(
        "ZIP_LIMIT",
        `${count} entries do not fit a ${cdSize}-byte central directory (or exceed ${maxEntries})`,
      );
    }
    const cd = await file.readAt(base + cdOffset, cdSize);
    const dv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
    const utf8 = new TextDecoder("utf-8", { fatal: true });
    const entries: ZipEntry[] = [];
    const names = new Set<string>();
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cdSize || dv.getUint32(p, true) !== SIG_CD) {
        throw fail("ZIP_MALFORMED", `central directory entry ${i} is malformed`, cdOffset + p);
      }
      const flags = dv.getUint16(p + 8, true);
      const method = dv.getUint16(p + 10, true);
      const crc32 = dv.getUint32(p + 16, true);
      let csize = dv.getUint32(p + 20, true);
      let usize = dv.getUint32(p + 24, true);
      const nlen = dv.getUint16(p + 28, true);
      const elen = dv.getUint16(p + 30, true);
      const clen = dv.getUint16(p + 32, true);
      let lofs = dv.getUint32(p + 42, true);
      if (p + 46 + nlen + elen + clen > cdSize) {
        throw fail(
          "ZIP_MALFORMED",
          `central directory entry ${i} runs past the directory`,
          cdOffset + p,
        );
      }
      const nameBytes = cd.subarray(p + 46, p + 46 + nlen);
      let name: string;
      try {
        name = (flags & 0x800) ? utf8.decode(nameBytes) : String.fromCharCode(...nameBytes);
      } catch {
        throw fail("ZIP_NAME", `entry ${i} has a name that is not UTF-8`, cdOffset + p);
      }
      // zip64 extra: the fields that overflowed, in order usize, csize, offset.
      let e = p + 46 + nlen;
      const eEnd = e + elen;
      while (e + 4 <= eEnd) {
        const id = dv.getUint16(e, true);
        const len = dv.getUint16(e + 2, true);
        if (e + 4 + len > eEnd) {
          throw fail("ZIP_MALFORMED", `entry "${name}" has a truncated extra field`);
        }
        if (id === 1) {
          let q = e + 4;
          const take = (): number => {
            if (q + 8 > e + 4 + len) {
              throw fail("ZIP_MALFORMED", `entry "${name}" has a short zip64 field`);
            }
            const v = u64(dv, q);
            q += 8;
            return v;
          };
          if (usize === 0xffffffff) usize = take();
          if (csize === 0xffffffff) csize = take();
          if (lofs === 0xffffffff) lofs = take();
        }
        e += 4 + len;
      }
      p += 46 + nlen + elen + clen;
      if (
        name.length === 0 || name.startsWith("/") || name.includes("\\") || name.includes("\0") ||
        name.split("/").some((s) => s === "..") || /^[A-Za-z]:/.test(name)
      ) {
        throw fail("ZIP_NAME", `entry name ${JSON.stringify(name)} is not a safe relative path`);
      }
      if (names.has(name)) throw fail("ZIP_DUPLICATE", `entry "${name}" appears twice`);
      names.add(name);
      if (flags & 1) throw fail("ZIP_MALFORMED", `entry "${name}" is encrypted`);
      if (method === 0 && csize !== usize) {
        throw fail("ZIP_MALFORMED", `stored entry "${name}" has csize ${csize} != size ${usize}`);
      }
      if (!(lofs + 30 <= cdOffset)) {
        throw fail(
          "ZIP_BAD_OFFSET",
          `entry "${name}" has its local header at ${lofs}, outside the data area`,
        );
      }
      entries.push({
        name,
        headerOffset: lofs,
        dataOffset: -1,
        size: usize,
        storedSize: csize,
        method,
        crc32,
        flags,
      });
    }
    // Local headers give the data offsets (read a batch at a time; reads are positional).
    const resolved: ZipEntry[] = [];
    const resolve = async (en: ZipEntry): Promise<ZipEntry> => {
      const h = await file.readAt(base + en.headerOffset, 30);
      const hdv = new DataView(h.buffer, h.byteOffset, 30);
      if (hdv.getUint32(0, true) !== SIG_LFH) {
        throw fail(
          "ZIP_MALFORMED",
          `entry "${en.name}" has no local header at ${en.headerOffset}`,
          en.headerOffset,
        );
      }
      const dataOffset = en.headerOffset + 30 + hdv.getUint16(26, true) + hdv.getUint16(28, true);
      if (!(dataOffset + en.storedSize <= cdOffset)) {
        throw fail(
          "ZIP_BAD_OFFSET",
          `entry "${en.name}" data [${dataOffset}, ${
            dataOffset + en.storedSize
          }) runs past the data area (${cdOffset})`,
          en.headerOffset,
        );
      }
      return { ...en, dataOffset };
    };
    for (let k = 0; k < entries.length; k += 64) {
      resolved.push(...await Promise.all(entries.slice(k, k + 64).map(resolve)));
    }
    const sorted = [...resolved].sort((a, b) => a.headerOffset - b.headerOffset);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      const cur = sorted[i]!;
      if (prev.dataOffset + prev.storedSize > cur.headerOffset) {
        throw fail(
          "ZIP_OVERLAP",
          `entries "${prev.name}" and "${cur.name}" overlap`,
          cur.headerOffset,
        );
      }
    }
    return new ZipReader(file, base, length, resolved);
  }
}
