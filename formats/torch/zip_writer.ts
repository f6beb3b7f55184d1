/**
 * A streaming zip writer that lays records out exactly as torch 2.6's `PyTorchStreamWriter` does:
 * stored entries, local headers with zero CRC and sizes, the `FB` padding field that puts every
 * record's data on a 64-byte boundary, data descriptors after non-empty records, real CRC-32s, a
 * central directory without padding, and the zip64 end records always (zip64 extras from 4 GiB).
 * Record bytes are streamed in as they are produced.
 *
 * @example Writing two records
 * ```ts
 * import { TorchZipWriter } from "./zip_writer.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".pt" });
 * const w = await TorchZipWriter.create(path, "archive");
 * await w.add("data.pkl", new Uint8Array([0x80, 2, 0x4e, 0x2e]));
 * await w.add("version", new TextEncoder().encode("3\n"));
 * const bytes = await w.finish();
 * assert.equal(bytes, (await Deno.stat(path)).size);
 * await Deno.remove(path);
 * ```
 * @module
 */
import * as zlib from "node:zlib";
import { CkptError } from "../../errors.ts";
import { torchSerializationId } from "./_serialization_id.ts";
import { createFileSink, type FileSink } from "../_file_sink.ts";

const crc32Native =
  (zlib as unknown as { crc32: (data: Uint8Array, value?: number) => number }).crc32;

/** CRC-32 (zlib) of `data`, continuing from `value`. */
export function crc32(data: Uint8Array, value = 0): number {
  return crc32Native(data, value) >>> 0;
}

const ALIGN = 64;
const BIG = 0xffffffff;

interface Written {
  name: Uint8Array;
  offset: number;
  size: number;
  crc: number;
  flags: number;
}

/** Bytes before the data of a record at `cursor` (torch's `getPadding`). */
export function torchPadding(cursor: number, nameLength: number, size: number): number {
  let start = cursor + 30 + nameLength + 4;
  if (size >= BIG || cursor >= BIG) {
    start += 4;
    if (size >= BIG) start += 16;
    if (cursor >= BIG) start += 8;
  }
  return (ALIGN - (start % ALIGN)) % ALIGN;
}

/** Writes a torch-layout zip record by record; call {@linkcode TorchZipWriter.finish} at the end. */
export class TorchZipWriter {
  #file: FileSink;
  #prefix: string;
  #pos = 0;
  #records: Written[] = [];
  #buf = new Uint8Array(1 << 20);
  #bufLen = 0;
  #enc = new TextEncoder();
  #names: string[] = [];
  #crcs: number[] = [];
  /** Views {@linkcode TorchZipWriter.reserve} gave out and not yet written, oldest first. */
  #reserved: Uint8Array[] = [];
  /** Path being written. */
  readonly path: string;

  private constructor(path: string, file: FileSink, prefix: string) {
    this.path = path;
    this.#file = file;
    this.#prefix = prefix;
  }

  /**
   * Creates (truncates) `path` and writes records under the folder `prefix`. `onBytes`, when
   * given, is called with every byte written, in file order, as it is written (the bytes may
   * change once it returns, or once a promise it returns settles: copy what you keep). With
   * `syncEvery`, an `fdatasync` of the file starts in the background after every that many bytes
   * (its error fails {@linkcode TorchZipWriter.finish}). With `expectedBytes` (about the file's
   * size), a new `path` (which must not exist) is created and a large file is written with direct
   * I/O (`_file_sink.ts`); without it, `path` is truncated if it exists.
   */
  static async create(
    path: string,
    prefix: string,
    onBytes?: (bytes: Uint8Array) => void | Promise<void>,
    syncEvery = 0,
    expectedBytes?: number,
  ): Promise<TorchZipWriter> {
    const file = await createFileSink(path, {
      expectedBytes: expectedBytes ?? 0,
      syncEvery,
      replace: expectedBytes === undefined,
      onBytes,
    });
    return new TorchZipWriter(path, file, prefix);
  }

  /** Bytes written so far. */
  get position(): number {
    return this.#pos + this.#bufLen;
  }

  async #flush(): Promise<void> {
    if (this.#bufLen === 0) return;
    await this.#file.write(this.#buf.subarray(0, this.#bufLen));
    this.#pos += this.#bufLen;
    this.#bufLen = 0;
  }

  async #put(data: Uint8Array): Promise<void> {
    if (data.length > this.#buf.length / 2) {
      await this.#flush();
      await this.#file.write(data);
      this.#pos += data.length;
      return;
    }
    if (this.#bufLen + data.length > this.#buf.length) await this.#flush();
    this.#buf.set(data, this.#bufLen);
    this.#bufLen += data.length;
  }

  /**
   * The file's own memory for the next `n` bytes of a record's data, or undefined when the file
   * has none to give (`FileSink.reserve`): a chunk produced there and yielded to
   * {@linkcode TorchZipWriter.add} is written without a copy. Only for the chunks of the record
   * being added, in order.
   */
  async reserve(n: number): Promise<Uint8Array | undefined> {
    const view = await this.#file.reserve(n);
    if (!view) return undefined;
    // add() wrote the buffer out before asking for chunks: reserved bytes follow it in the file
    if (this.#bufLen > 0) throw new Error("zip writer: reserve() outside a record's chunks");
    this.#reserved.push(view);
    return view;
  }

  /**
   * Adds record `name` (under the prefix) of `size` bytes from `data`: bytes, or chunks produced
   * on demand (the next chunk is requested while the current one is written; a chunk may be
   * memory {@linkcode TorchZipWriter.reserve} gave). `TORCH_WRITE` when the chunks do not add up
   * to `size`.
   */
  async add(
    name: string,
    data: Uint8Array | AsyncIterable<Uint8Array>,
    size: number = data instanceof Uint8Array ? data.length : -1,
  ): Promise<void> {
    if (size < 0) throw new CkptError("TORCH_WRITE", `Cannot write record "${name}": size unknown`);
    const full = this.#enc.encode(`${this.#prefix}/${name}`);
    const cursor = this.position;
    const pad = torchPadding(cursor, full.length, size);
    const flags = size === 0 ? 0x0800 : 0x0808;
    const z64: number[] = [];
    if (size >= BIG) z64.push(size, 0);
    if (cursor >= BIG) z64.push(cursor);
    const z64Len = z64.length > 0 ? 4 + 8 * z64.length : 0;
    const extraLen = z64Len + 4 + pad;
    const h = new Uint8Array(30 + full.length + extraLen);
    const dv = new DataView(h.buffer);
    dv.setUint32(0, 0x04034b50, true);
    dv.setUint16(6, flags, true);
    dv.setUint16(26, full.length, true);
    dv.setUint16(28, extraLen, true);
    h.set(full, 30);
    let e = 30 + full.length;
    if (z64Len > 0) {
      dv.setUint16(e, 1, true);
      dv.setUint16(e + 2, z64Len - 4, true);
      z64.forEach((v, i) => dv.setBigUint64(e + 4 + 8 * i, BigInt(v), true));
      e += z64Len;
    }
    h[e] = 0x46; // 'F'
    h[e + 1] = 0x42; // 'B'
    dv.setUint16(e + 2, pad, true);
    h.fill(0x5a, e + 4, e + 4 + pad); // 'Z'
    await this.#put(h);
    let crc = 0;
    let written = 0;
    if (data instanceof Uint8Array) {
      crc = crc32(data);
      written = data.length;
      await this.#put(data);
    } else {
      await this.#flush(); // chunks may be reserved: they follow what was put so far
      const it = data[Symbol.asyncIterator]();
      // the next chunk is asked for before this one is written: its failure (an abort, a read
      // error) is thrown when it is awaited, never left as an unhandled rejection meanwhile
      const ask = () => {
        const p = it.next();
        p.catch(() => {});
        return p;
      };
      let next = ask();
      for (;;) {
        const r = await next;
        if (r.done) break;
        next = ask();
        const chunk = r.value;
        crc = crc32(chunk, crc);
        written += chunk.length;
        if (written > size) break;
        const view = this.#reserved.shift(); // this chunk's reservation, if its source took one
        if (view) {
          // a source may have given other bytes than those it read into the view
          const inPlace = chunk.buffer === view.buffer && chunk.byteOffset === view.byteOffset &&
            chunk.length === view.length;
          if (!inPlace) view.set(chunk);
          await this.#file.write(view); // nothing is buffered while chunks are reserved
          this.#pos += view.length;
        } else await this.#put(chunk);
      }
    }
    if (written !== size) {
      throw new CkptError(
        "TORCH_WRITE",
        `Cannot write record "${name}": produced ${written} bytes, expected ${size}`,
        { file: this.path },
      );
    }
    if (size > 0) {
      const big = size >= BIG || cursor >= BIG;
      const d = new Uint8Array(big ? 24 : 16);
      const ddv = new DataView(d.buffer);
      ddv.setUint32(0, 0x08074b50, true);
      ddv.setUint32(4, crc, true);
      if (big) {
        ddv.setBigUint64(8, BigInt(size), true);
        ddv.setBigUint64(16, BigInt(size), true);
      } else {
        ddv.setUint32(8, size, true);
        ddv.setUint32(12, size, true);
      }
      await this.#put(d);
    }
    this.#records.push({ name: full, offset: cursor, size, crc, flags });
    this.#names.push(name);
    if (size > 0) this.#crcs.push(crc);
  }

  /** The 40-digit `.data/serialization_id` torch 2.6 computes for the records written so far. */
  serializationId(): string {
    return torchSerializationId(this.#names, this.#crcs);
  }

  /** Writes the central directory and end records, closes the file; returns the file size. */
  async finish(): Promise<number> {
    const cdStart = this.position;
    for (const r of this.#records) {
      const z64: number[] = [];
      if (r.size >= BIG) z64.push(r.size, r.size);
      if (r.offset >= BIG) z64.push(r.offset);
      const z64Len = z64.length > 0 ? 4 + 8 * z64.length : 0;
      const c = new Uint8Array(46 + r.name.length + z64Len);
      const dv = new DataView(c.buffer);
      dv.setUint32(0, 0x02014b50, true);
      dv.setUint16(8, r.flags, true);
      dv.setUint32(16, r.crc, true);
      dv.setUint32(20, r.size >= BIG ? BIG : r.size, true);
      dv.setUint32(24, r.size >= BIG ? BIG : r.size, true);
      dv.setUint16(28, r.name.length, true);
      dv.setUint16(30, z64Len, true);
      dv.setUint32(42, r.offset >= BIG ? BIG : r.offset, true);
      c.set(r.name, 46);
      if (z64Len > 0) {
        const e = 46 + r.name.length;
        dv.setUint16(e, 1, true);
        dv.setUint16(e + 2, z64Len - 4, true);
        z64.forEach((v, i) => dv.setBigUint64(e + 4 + 8 * i, BigInt(v), true));
      }
      await this.#put(c);
    }
    const cdSize = this.position - cdStart;
    const n = this.#records.length;
    const z64At = this.position;
    const end = new Uint8Array(56 + 20 + 22);
    const dv = new DataView(end.buffer);
    dv.setUint32(0, 0x06064b50, true);
    dv.setBigUint64(4, 44n, true);
    dv.setUint16(12, 0x031e, true);
    dv.setUint16(14, 0x002d, true);
    dv.setBigUint64(24, BigInt(n), true);
    dv.setBigUint64(32, BigInt(n), true);
    dv.setBigUint64(40, BigInt(cdSize), true);
    dv.setBigUint64(48, BigInt(cdStart), true);
    dv.setUint32(56, 0x07064b50, true);
    dv.setBigUint64(64, BigInt(z64At), true);
    dv.setUint32(72, 1, true);
    dv.setUint32(76, 0x06054b50, true);
    dv.setUint16(84, Math.min(n, 0xffff), true);
    dv.setUint16(86, Math.min(n, 0xffff), true);
    dv.setUint32(88, Math.min(cdSize, BIG), true);
    dv.setUint32(92, Math.min(cdStart, BIG), true);
    await this.#put(end);
    await this.#flush();
    await this.#file.finish();
    return this.#pos;
  }

  /** Closes the file without finishing it, once the writes in flight end (the caller removes it). */
  abort(): Promise<void> {
    return this.#file.abandon();
  }
}

/** Writes a small zip of in-memory records in torch's layout; returns the file size. */
export async function writeTorchZip(
  path: string,
  prefix: string,
  records: readonly { name: string; bytes: Uint8Array }[],
): Promise<number> {
  const w = await TorchZipWriter.create(path, prefix);
  try {
    for (const r of records) await w.add(r.name, r.bytes);
    return await w.finish();
  } catch (e) {
    await w.abort();
    throw e;
  }
}
