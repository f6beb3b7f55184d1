/**
 * The parsing behind `ZipReader.open`: the end-of-central-directory record (and its zip64
 * variant), the central directory entries (names checked, zip64 extra fields applied), the data
 * offsets from the local headers, and the check that no two entries share bytes.
 * @module
 */
import type { CkptError, ErrorCode } from "../../errors.ts";

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

/** Makes the coded error of a malformed archive (`offset` relative to the archive start). */
export type Fail = (code: ErrorCode, msg: string, offset?: number) => CkptError;

/** Where the central directory is, and how many entries it claims. */
export interface CentralDirectory {
  /** Entries claimed. */
  count: number;
  /** Size in bytes. */
  size: number;
  /** Offset from the archive start. */
  offset: number;
  /** The directory must end before this offset (where the end records start). */
  limit: number;
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

/** Reads the end-of-central-directory record (searched backwards) and the zip64 one, if any. */
export async function findCentralDirectory(
  file: PositionalFile,
  base: number,
  length: number,
  fail: Fail,
): Promise<CentralDirectory> {
  // The end record (22 bytes), its comment (at most 0xffff) and the zip64 locator before it (20).
  const tailLen = Math.min(length, 20 + 22 + 0xffff);
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
  const dir: CentralDirectory = {
    count: tdv.getUint16(eocd + 10, true),
    size: tdv.getUint32(eocd + 12, true),
    offset: tdv.getUint32(eocd + 16, true),
    limit: tailStart + eocd,
  };
  if (eocd < 20 || tdv.getUint32(eocd - 20, true) !== SIG_Z64_LOC) return dir;
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
  return { count: u64(zdv, 32), size: u64(zdv, 40), offset: u64(zdv, 48), limit: z64At };
}

/** The directory lies before its end records and can hold its entries (`maxEntries` at most). */
export function checkDirectoryBounds(dir: CentralDirectory, maxEntries: number, fail: Fail): void {
  if (!(dir.offset + dir.size <= dir.limit)) {
    throw fail(
      "ZIP_BAD_OFFSET",
      `central directory [${dir.offset}, ${
        dir.offset + dir.size
      }) is outside the archive (limit ${dir.limit})`,
    );
  }
  if (dir.count > maxEntries || dir.count * 46 > dir.size) {
    throw fail(
      "ZIP_LIMIT",
      `${dir.count} entries do not fit a ${dir.size}-byte central directory (or exceed ${maxEntries})`,
    );
  }
}

/** Sizes and offset an entry's zip64 extra field overrides (those that overflowed, in order). */
function applyZip64Extra(
  dv: DataView,
  start: number,
  end: number,
  sizes: { usize: number; csize: number; lofs: number },
  name: string,
  fail: Fail,
): void {
  let e = start;
  while (e + 4 <= end) {
    const id = dv.getUint16(e, true);
    const len = dv.getUint16(e + 2, true);
    if (e + 4 + len > end) {
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
      if (sizes.usize === 0xffffffff) sizes.usize = take();
      if (sizes.csize === 0xffffffff) sizes.csize = take();
      if (sizes.lofs === 0xffffffff) sizes.lofs = take();
    }
    e += 4 + len;
  }
}

/** `ZIP_NAME` for names that are not safe relative paths. */
function checkName(name: string, fail: Fail): void {
  if (
    name.length === 0 || name.startsWith("/") || name.includes("\\") || name.includes("\0") ||
    name.split("/").some((s) => s === "..") || /^[A-Za-z]:/.test(name)
  ) {
    throw fail("ZIP_NAME", `entry name ${JSON.stringify(name)} is not a safe relative path`);
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Parses entry `i` at `p` of the central directory; returns it and where the next one starts. */
function parseEntry(
  cd: Uint8Array,
  dv: DataView,
  p: number,
  i: number,
  dir: CentralDirectory,
  fail: Fail,
): { entry: ZipEntry; next: number } {
  if (p + 46 > dir.size || dv.getUint32(p, true) !== SIG_CD) {
    throw fail("ZIP_MALFORMED", `central directory entry ${i} is malformed`, dir.offset + p);
  }
  const flags = dv.getUint16(p + 8, true);
  const method = dv.getUint16(p + 10, true);
  const crc32 = dv.getUint32(p + 16, true);
  const sizes = {
    csize: dv.getUint32(p + 20, true),
    usize: dv.getUint32(p + 24, true),
    lofs: dv.getUint32(p + 42, true),
  };
  const nlen = dv.getUint16(p + 28, true);
  const elen = dv.getUint16(p + 30, true);
  const clen = dv.getUint16(p + 32, true);
  if (p + 46 + nlen + elen + clen > dir.size) {
    throw fail(
      "ZIP_MALFORMED",
      `central directory entry ${i} runs past the directory`,
      dir.offset + p,
    );
  }
  const nameBytes = cd.subarray(p + 46, p + 46 + nlen);
  let name: string;
  try {
    name = (flags & 0x800) ? utf8.decode(nameBytes) : String.fromCharCode(...nameBytes);
  } catch {
    throw fail("ZIP_NAME", `entry ${i} has a name that is not UTF-8`, dir.offset + p);
  }
  applyZip64Extra(dv, p + 46 + nlen, p + 46 + nlen + elen, sizes, name, fail);
  const entry: ZipEntry = {
    name,
    headerOffset: sizes.lofs,
    dataOffset: -1,
    size: sizes.usize,
    storedSize: sizes.csize,
    method,
    crc32,
    flags,
  };
  return { entry, next: p + 46 + nlen + elen + clen };
}

/** Checks an entry from the directory: no encryption, stored sizes agree, header inside. */
function checkEntry(en: ZipEntry, dir: CentralDirectory, fail: Fail): void {
  if (en.flags & 1) throw fail("ZIP_MALFORMED", `entry "${en.name}" is encrypted`);
  if (en.method === 0 && en.storedSize !== en.size) {
    throw fail(
      "ZIP_MALFORMED",
      `stored entry "${en.name}" has csize ${en.storedSize} != size ${en.size}`,
    );
  }
  if (!(en.headerOffset + 30 <= dir.offset)) {
    throw fail(
      "ZIP_BAD_OFFSET",
      `entry "${en.name}" has its local header at ${en.headerOffset}, outside the data area`,
    );
  }
}

/** Every entry of the central directory `cd`, checked; data offsets still unknown (-1). */
export function parseCentralDirectory(
  cd: Uint8Array,
  dir: CentralDirectory,
  fail: Fail,
): ZipEntry[] {
  const dv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const entries: ZipEntry[] = [];
  const names = new Set<string>();
  let p = 0;
  for (let i = 0; i < dir.count; i++) {
    const { entry, next } = parseEntry(cd, dv, p, i, dir, fail);
    p = next;
    checkName(entry.name, fail);
    if (names.has(entry.name)) throw fail("ZIP_DUPLICATE", `entry "${entry.name}" appears twice`);
    names.add(entry.name);
    checkEntry(entry, dir, fail);
    entries.push(entry);
  }
  return entries;
}

/** The entries with their data offsets from the local headers (read 64 at a time). */
export async function resolveDataOffsets(
  file: PositionalFile,
  base: number,
  entries: ZipEntry[],
  dataEnd: number,
  fail: Fail,
): Promise<ZipEntry[]> {
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
    if (!(dataOffset + en.storedSize <= dataEnd)) {
      throw fail(
        "ZIP_BAD_OFFSET",
        `entry "${en.name}" data [${dataOffset}, ${
          dataOffset + en.storedSize
        }) runs past the data area (${dataEnd})`,
        en.headerOffset,
      );
    }
    return { ...en, dataOffset };
  };
  const resolved: ZipEntry[] = [];
  for (let k = 0; k < entries.length; k += 64) {
    resolved.push(...await Promise.all(entries.slice(k, k + 64).map(resolve)));
  }
  return resolved;
}

/** `ZIP_OVERLAP` when two entries share bytes. */
export function checkNoOverlap(entries: readonly ZipEntry[], fail: Fail): void {
  const sorted = [...entries].sort((a, b) => a.headerOffset - b.headerOffset);
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
}
