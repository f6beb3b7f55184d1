/**
 * Private: reading safetensors files (the validated header, tensors read by row range from the open
 * file). Public API in `safetensors.ts`.
 * @module
 */
import { RandomAccessFile } from "./_io.ts";
import { DTYPES } from "./dtype.ts";
import {
  checkHeaderLength,
  parseHeader,
  type SafetensorsHeader,
  type SafetensorsTensorInfo,
} from "./_safetensors_header.ts";
import { checkRowRange, rowNumel, StateDict, type TensorRef } from "./state_dict.ts";

export async function readHeaderFrom(file: RandomAccessFile): Promise<SafetensorsHeader> {
  const first8 = await file.readAt(0, Math.min(8, file.size));
  const n = checkHeaderLength(file.path, file.size, first8);
  return parseHeader(file.path, file.size, await file.readAt(8, n));
}

/**
 * Reads and validates the header of a safetensors file without reading any tensor data.
 * Throws a {@linkcode CkptError} whose code names the failed check (`SAFETENSORS_HEADER_TOO_SMALL`,
 * `SAFETENSORS_HEADER_TOO_LARGE`, `SAFETENSORS_HEADER_LENGTH`, `SAFETENSORS_HEADER_UTF8`,
 * `SAFETENSORS_HEADER_JSON`, `SAFETENSORS_DUPLICATE`, `SAFETENSORS_METADATA`, `SAFETENSORS_ENTRY`,
 * `SAFETENSORS_DTYPE`, `SAFETENSORS_SHAPE`, `SAFETENSORS_OFFSETS`, `SAFETENSORS_OVERFLOW`,
 * `SAFETENSORS_TENSOR_SIZE`, `SAFETENSORS_TRUNCATED`, `SAFETENSORS_TRAILING`, or `FILE_OPEN`).
 *
 * @example
 * ```ts
 * import { readSafetensorsHeader, writeSafetensors } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile();
 * await writeSafetensors(path, new StateDict([["b", tensorFromBytes("U8", [3], new Uint8Array(3))]]));
 * const header = await readSafetensorsHeader(path);
 * assert.deepEqual(header.tensors[0]?.dataOffsets, [0, 3]);
 * assert.equal(header.headerSize % 8, 0);
 * await Deno.remove(path);
 * ```
 */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const file = await RandomAccessFile.open(path);
  try {
    return await readHeaderFrom(file);
  } finally {
    await file.close();
  }
}

/** A {@linkcode TensorRef} over one tensor of an open safetensors file. */
export function fileTensor(
  file: RandomAccessFile,
  header: SafetensorsHeader,
  t: SafetensorsTensorInfo,
): TensorRef {
  const rowBytes = rowNumel(t.shape) * DTYPES[t.dtype].size;
  const base = header.dataStart + t.dataOffsets[0];
  const ref: TensorRef = {
    dtype: t.dtype,
    shape: t.shape,
    source: file.path,
    async read(rowStart?: number, rowEnd?: number): Promise<Uint8Array> {
      const [s, e] = checkRowRange(t.shape, rowStart, rowEnd, t.name);
      return await file.readAt(base + s * rowBytes, (e - s) * rowBytes);
    },
    async readInto(rowStart: number, rowEnd: number, into: Uint8Array): Promise<Uint8Array> {
      const [s, e] = checkRowRange(t.shape, rowStart, rowEnd, t.name);
      return await file.readAt(base + s * rowBytes, (e - s) * rowBytes, into);
    },
  };
  return ref;
}

/**
 * Opens a safetensors file: the header is read and validated (see
 * {@linkcode readSafetensorsHeader}), tensors stay on disk until read (by row range), in the file's
 * data order. The returned state dict owns the file: close it (or `await using`).
 * `metadata` is the file's `__metadata__` (empty when absent).
 *
 * @example
 * ```ts
 * import { openSafetensors, writeSafetensors } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile();
 * await writeSafetensors(path, new StateDict([["x", tensorFromBytes("I8", [2], new Uint8Array([7, 9]))]]));
 * await using sd = await openSafetensors(path);
 * assert.deepEqual([...(await sd.require("x").read())], [7, 9]);
 * await Deno.remove(path);
 * ```
 */
export async function openSafetensors(path: string): Promise<StateDict> {
  const file = await RandomAccessFile.open(path);
  let header: SafetensorsHeader;
  try {
    header = await readHeaderFrom(file);
  } catch (err) {
    await file.close();
    throw err;
  }
  const sd = new StateDict();
  sd.own(file);
  for (const t of header.tensors) sd.set(t.name, fileTensor(file, header, t));
  sd.metadata = { ...(header.metadata ?? {}) };
  return sd;
}
