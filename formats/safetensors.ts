/**
 * safetensors, streaming both ways: a strict reader that validates the header as the reference
 * implementation does and reads tensor bytes by row range from the open file, Hugging Face shard
 * folders (`model.safetensors.index.json`) cross-checked against their shard headers, and a
 * deterministic writer (the reference's order and padding) that plans the header before any data
 * moves, streams tensor data in bounded blocks and renames the file into place only when complete.
 *
 * @example Writing and reading back
 * ```ts
 * import { openSafetensors, writeSafetensors } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const sd = new StateDict();
 * sd.set("w", tensorFromBytes("F32", [2, 2], new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer)));
 * await writeSafetensors(path, sd);
 * await using back = await openSafetensors(path);
 * assert.deepEqual(back.metadata, { format: "pt" });
 * const row = await back.require("w").read(1, 2);
 * assert.deepEqual([...new Float32Array(row.slice().buffer)], [3, 4]);
 * await Deno.remove(path);
 * ```
 * @module
 */
import { dirname, isAbsolute, join, normalize, sep } from "node:path";
import { CkptError } from "../errors.ts";
import { RandomAccessFile } from "./_io.ts";
import { DTYPES, isDType } from "./dtype.ts";
import {
  checkHeaderLength,
  MAX_HEADER_SIZE,
  parseHeader,
  planFile,
  type PlannedFile,
  type SafetensorsHeader,
  type SafetensorsTensorInfo,
  startsLikeSafetensors,
} from "./_safetensors_header.ts";
import { planShards, shardFileName, shardIndexJson } from "./shards.ts";
import { checkRowRange, rowNumel, StateDict, type TensorRef } from "./state_dict.ts";

export { MAX_HEADER_SIZE, startsLikeSafetensors };
export type { SafetensorsHeader, SafetensorsTensorInfo };

/** Default metadata of written files, as `save_pretrained` writes it. */
export const DEFAULT_SAFETENSORS_METADATA: Readonly<Record<string, string>> = { format: "pt" };

/** Bytes moved per read/write while streaming (rows are grouped up to this size). */
export const STREAM_BLOCK_BYTES: number = 16 * 2 ** 20;

async function readHeaderFrom(file: RandomAccessFile): Promise<SafetensorsHeader> {
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
function fileTensor(
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

// ---------------------------------------------------------------------------------------------
// Writing

/** Options of {@linkcode writeSafetensors}. */
export interface WriteSafetensorsOptions {
  /** `__metadata__` to write (strings only; `{}` writes no `__metadata__` key, as the reference
   * does without metadata). Default `{"format": "pt"}`. */
  metadata?: Record<string, string>;
  /** Aborts between blocks; the temporary file is removed. */
  signal?: AbortSignal;
  /** Called after each block with bytes written so far and the file's total bytes. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /**
   * Called with every byte written, in file order, for each file written (`path` is the file's
   * final path, not its temporary name): the header, then each data block, right after it is
   * written. The writer reuses its buffers: copy the bytes before returning if they are kept. A
   * returned promise is awaited before the writer goes on (backpressure). Not called for the
   * index JSON.
   */
  onBytes?: (path: string, bytes: Uint8Array) => void | Promise<void>;
}

/** Result of {@linkcode writeSafetensors}. */
export interface WriteSafetensorsResult {
  /** Size of the written file in bytes. */
  bytes: number;
}

function checkMetadata(metadata: Record<string, string>): void {
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") {
      throw new CkptError(
        "SAFETENSORS_METADATA",
        `Cannot write safetensors metadata: value of "${k}" is ${typeof v}, not a string`,
      );
    }
  }
}

function planFor(
  sd: StateDict,
  names: Iterable<string>,
  metadata: Record<string, string>,
): PlannedFile {
  const entries = [];
  for (const name of names) {
    const t = sd.require(name);
    if (name === "__metadata__") {
      throw new CkptError(
        "SAFETENSORS_NAME",
        `Cannot write tensor "__metadata__": the name is reserved for safetensors metadata`,
        { tensor: name },
      );
    }
    if (!isDType(t.dtype)) {
      throw new CkptError(
        "SAFETENSORS_DTYPE",
        `Cannot write tensor "${name}": unknown dtype ${JSON.stringify(t.dtype)}`,
        { tensor: name },
      );
    }
    let bytes = DTYPES[t.dtype].size;
    for (const d of t.shape) {
      bytes *= d;
      if (!Number.isSafeInteger(d) || d < 0 || !Number.isSafeInteger(bytes)) {
        throw new CkptError(
          "SAFETENSORS_SHAPE",
          `Cannot write tensor "${name}": shape [${
            t.shape.join(", ")
          }] is not a list of non-negative integers with a safe byte size`,
          { tensor: name },
        );
      }
    }
    entries.push({ name, dtype: t.dtype, shape: t.shape });
  }
  const plan = planFile(entries, metadata);
  if (plan.headerBytes.length - 8 > MAX_HEADER_SIZE) {
    throw new CkptError(
      "SAFETENSORS_HEADER_TOO_LARGE",
      `Cannot write safetensors: the header would be ${
        plan.headerBytes.length - 8
      } bytes, over the ${MAX_HEADER_SIZE}-byte limit`,
    );
  }
  return plan;
}

/** One row range of one tensor, placed in a segment. */
interface Part {
  name: string;
  ref: TensorRef;
  rowStart: number;
  rowEnd: number;
  bytes: number;
}

/** A contiguous run of output bytes (whole rows of one or more tensors), written in one go. */
interface Segment {
  parts: Part[];
  bytes: number;
}

/**
 * Splits the planned data into segments of at most `block` bytes: small tensors are packed
 * together, big ones split on row boundaries (a single row larger than `block` is a segment alone).
 */
function* segmentsOf(sd: StateDict, plan: PlannedFile, block: number): Generator<Segment> {
  let seg: Segment = { parts: [], bytes: 0 };
  for (const t of plan.tensors) {
    const total = t.dataOffsets[1] - t.dataOffsets[0];
    if (total === 0) continue;
    const ref = sd.require(t.name);
    const rows = t.shape.length === 0 ? 1 : t.shape[0]!;
    const rowBytes = total / rows;
    let row = 0;
    while (row < rows) {
      let fit = Math.floor((block - seg.bytes) / rowBytes);
      if (fit <= 0 && seg.parts.length > 0) {
        yield seg;
        seg = { parts: [], bytes: 0 };
        continue;
      }
      fit = Math.max(1, Math.min(fit, rows - row));
      const bytes = fit * rowBytes;
      seg.parts.push({ name: t.name, ref, rowStart: row, rowEnd: row + fit, bytes });
      seg.bytes += bytes;
      row += fit;
    }
  }
  if (seg.parts.length > 0) yield seg;
}

/** `bytes` when it is the part's exact byte count, else `SAFETENSORS_WRITE_SIZE`. */
function checkPart(p: Part, bytes: unknown, path: string): Uint8Array {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength !== p.bytes) {
    throw new CkptError(
      "SAFETENSORS_WRITE_SIZE",
      `Cannot write tensor "${p.name}" to "${path}": rows [${p.rowStart}, ${p.rowEnd}) gave ${
        bytes instanceof Uint8Array ? bytes.byteLength : "no"
      } bytes, expected ${p.bytes}`,
      { file: path, tensor: p.name },
    );
  }
  return bytes;
}

/** Fills `buffer` with a segment's bytes (checking each part's byte count) and returns the view. */
async function fillSegment(seg: Segment, buffer: Uint8Array, path: string): Promise<Uint8Array> {
  // Bytes a ref returns are copied into our own buffer: the next read (which overlaps this
  // segment's write) may reuse the memory a ref returned last time.
  const target = seg.bytes <= buffer.length
    ? buffer.subarray(0, seg.bytes)
    : new Uint8Array(seg.bytes);
  let at = 0;
  for (const p of seg.parts) {
    const view = target.subarray(at, at + p.bytes);
    if (p.ref.readInto) {
      const got = checkPart(p, await p.ref.readInto(p.rowStart, p.rowEnd, view), path);
      if (got.buffer !== view.buffer || got.byteOffset !== view.byteOffset) view.set(got);
    } else view.set(checkPart(p, await p.ref.read(p.rowStart, p.rowEnd), path));
    at += p.bytes;
  }
  return target;
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

function randomSuffix(): string {
  return crypto.getRandomValues(new Uint32Array(2)).reduce((s, x) => s + x.toString(36), "");
}

/**
 * Streams a planned file's data from `sd` into `path` (temp file + rename). Two block buffers
 * alternate: the next segment is read into one while the other is being written.
 */
async function writePlanned(
  path: string,
  sd: StateDict,
  plan: PlannedFile,
  signal: AbortSignal | undefined,
  progress: ((n: number) => void) | undefined,
  onBytes: ((path: string, bytes: Uint8Array) => void | Promise<void>) | undefined,
): Promise<void> {
  signal?.throwIfAborted();
  const tmp = `${path}.tmp-${randomSuffix()}`;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
  } catch (cause) {
    throw new CkptError("FILE_WRITE", `Cannot create "${tmp}": ${(cause as Error).message}`, {
      file: path,
      cause,
    });
  }
  let closed = false;
  let pending: Promise<Uint8Array> | undefined;
  try {
    await writeAll(file, plan.headerBytes);
    if (onBytes) await onBytes(path, plan.headerBytes);
    progress?.(plan.headerBytes.length);
    const block = Math.min(STREAM_BLOCK_BYTES, Math.max(plan.dataBytes, 1));
    const buffers = [new Uint8Array(block), new Uint8Array(0)];
    const segments = segmentsOf(sd, plan, block);
    const start = (i: number): Promise<Uint8Array> | undefined => {
      const next = segments.next();
      if (next.done) return undefined;
      if (i === 1 && buffers[1]!.length === 0) buffers[1] = new Uint8Array(block);
      const p = fillSegment(next.value, buffers[i % 2]!, path);
      p.catch(() => {}); // awaited below; no unhandled rejection when we stop early
      return p;
    };
    let i = 0;
    pending = start(i);
    while (pending) {
      const bytes = await pending;
      signal?.throwIfAborted();
      pending = start(++i);
      await writeAll(file, bytes);
      if (onBytes) await onBytes(path, bytes);
      progress?.(bytes.byteLength);
    }
    file.close();
    closed = true;
    const { size } = await Deno.stat(tmp);
    if (size !== plan.fileBytes) {
      throw new CkptError(
        "SAFETENSORS_WRITE_SIZE",
        `Cannot write "${path}": wrote ${size} bytes, planned ${plan.fileBytes}`,
        { file: path },
      );
    }
    await Deno.rename(tmp, path);
  } catch (err) {
    await pending?.catch(() => {});
    if (!closed) {
      try {
        file.close();
      } catch { /* already closed */ }
    }
    await Deno.remove(tmp).catch(() => {});
    if (err instanceof CkptError || (err instanceof DOMException && err.name === "AbortError")) {
      throw err;
    }
    if (signal?.aborted && err === signal.reason) throw err;
    throw new CkptError("FILE_WRITE", `Cannot write "${path}": ${(err as Error).message}`, {
      file: path,
      cause: err,
    });
  }
}

/**
 * Writes `sd` as one safetensors file. The header is planned from names, dtypes and shapes first
 * and laid out as the reference writer does (dtype alignment descending, then name; compact JSON,
 * `__metadata__` first, padded with spaces to 8 bytes); then tensor data streams in blocks of about
 * {@linkcode STREAM_BLOCK_BYTES}, each block's byte count checked (`SAFETENSORS_WRITE_SIZE`).
 * The file is written as `<path>.tmp-<random>` and renamed to `path` only when complete; on
 * failure or abort the temporary file is removed.
 *
 * @example
 * ```ts
 * import { readSafetensorsHeader, writeSafetensors } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile();
 * const sd = new StateDict([
 *   ["a", tensorFromBytes("F16", [2], new Uint8Array(4))],
 *   ["b", tensorFromBytes("F32", [1], new Uint8Array(4))],
 * ]);
 * const { bytes } = await writeSafetensors(path, sd, { metadata: { format: "pt", note: "x" } });
 * const header = await readSafetensorsHeader(path);
 * assert.deepEqual(header.tensors.map((t) => t.name), ["b", "a"]); // F32 before F16
 * assert.equal(bytes, header.fileSize);
 * await Deno.remove(path);
 * ```
 */
export async function writeSafetensors(
  path: string,
  sd: StateDict,
  options: WriteSafetensorsOptions = {},
): Promise<WriteSafetensorsResult> {
  const metadata = options.metadata ?? { ...DEFAULT_SAFETENSORS_METADATA };
  checkMetadata(metadata);
  const plan = planFor(sd, sd.keys(), metadata);
  let done = 0;
  const onProgress = options.onProgress;
  await writePlanned(
    path,
    sd,
    plan,
    options.signal,
    onProgress && ((n) => onProgress(done += n, plan.fileBytes)),
    options.onBytes,
  );
  return { bytes: plan.fileBytes };
}

/** One file of a {@linkcode SafetensorsShardPlan}. */
export interface SafetensorsShardFile {
  /** File name inside the output folder. */
  file: string;
  /** Tensor names in state-dict order. */
  tensors: string[];
  /** Bytes of tensor data in the file. */
  dataBytes: number;
  /** Size of the file (header included). */
  fileBytes: number;
}

/** The result of {@linkcode planSafetensorsShards}. */
export interface SafetensorsShardPlan {
  /** Files in order. */
  files: SafetensorsShardFile[];
  /** Sum of tensor bytes over all files (`metadata.total_size`). */
  totalSize: number;
  /** The index object when there is more than one file. */
  index?: Record<string, unknown>;
  /** The index file's exact text when there is more than one file. */
  indexText?: string;
  /** Name of the index file (`<prefix>.safetensors.index.json`). */
  indexFile: string;
}

/** Options of {@linkcode planSafetensorsShards}. */
export interface PlanSafetensorsShardsOptions {
  /** File prefix. Default `"model"`. */
  prefix?: string;
  /** `__metadata__` of each shard. Default `{"format": "pt"}`. */
  metadata?: Record<string, string>;
  /** Extra keys of the index's `metadata` (e.g. `{ total_parameters: 123 }`). */
  indexMetadata?: Record<string, unknown>;
}

/**
 * Plans sharded output without writing anything (`--dry-run`): huggingface_hub's split rule over
 * the state dict's order ({@linkcode planShards}), file names as `save_pretrained` gives them
 * (`model.safetensors` alone, else `model-00001-of-0000N.safetensors`), each file's exact size,
 * and the index JSON.
 *
 * @example
 * ```ts
 * import { planSafetensorsShards } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const sd = new StateDict([
 *   ["a", tensorFromBytes("U8", [6], new Uint8Array(6))],
 *   ["b", tensorFromBytes("U8", [6], new Uint8Array(6))],
 * ]);
 * const plan = planSafetensorsShards(sd, 10);
 * assert.deepEqual(plan.files.map((f) => f.file), [
 *   "model-00001-of-00002.safetensors",
 *   "model-00002-of-00002.safetensors",
 * ]);
 * assert.deepEqual(plan.index?.weight_map, { a: "model-00001-of-00002.safetensors", b: "model-00002-of-00002.safetensors" });
 * ```
 */
export function planSafetensorsShards(
  sd: StateDict,
  maxShardSize: number,
  options: PlanSafetensorsShardsOptions = {},
): SafetensorsShardPlan {
  const prefix = options.prefix ?? "model";
  const metadata = options.metadata ?? { ...DEFAULT_SAFETENSORS_METADATA };
  checkMetadata(metadata);
  const entries = [];
  for (const [name, t] of sd) {
    let bytes = DTYPES[t.dtype].size;
    for (const d of t.shape) bytes *= d;
    entries.push({ name, bytes });
  }
  const shardPlan = planShards(entries, maxShardSize);
  const count = shardPlan.shards.length;
  const names = shardPlan.shards.map((_, i) => shardFileName(prefix, ".safetensors", i, count));
  const files = shardPlan.shards.map((s, i) => {
    const p = planFor(sd, s.names, metadata);
    return { file: names[i]!, tensors: s.names, dataBytes: p.dataBytes, fileBytes: p.fileBytes };
  });
  const result: SafetensorsShardPlan = {
    files,
    totalSize: shardPlan.totalSize,
    indexFile: `${prefix}.safetensors.index.json`,
  };
  if (count > 1) {
    const { index, text } = shardIndexJson(shardPlan, names, options.indexMetadata);
    result.index = index;
    result.indexText = text;
  }
  return result;
}

/** Options of {@linkcode writeSafetensorsSharded}. */
export interface WriteSafetensorsShardedOptions extends PlanSafetensorsShardsOptions {
  /** Largest shard in bytes (see `parseSize` for "5GB"); a bigger tensor gets a shard alone. */
  maxShardSize: number;
  /** Aborts between blocks; the file being written is removed. */
  signal?: AbortSignal;
  /** Called after each block with bytes written so far over all files and the total. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /**
   * Called with every byte written, in file order, for each file written (`path` is the file's
   * final path, not its temporary name): the header, then each data block, right after it is
   * written. The writer reuses its buffers: copy the bytes before returning if they are kept. A
   * returned promise is awaited before the writer goes on (backpressure). Not called for the
   * index JSON.
   */
  onBytes?: (path: string, bytes: Uint8Array) => void | Promise<void>;
  /**
   * After a successful write, delete files of an earlier save that this one did not produce, as
   * `save_pretrained` does: `<prefix>-NNNNN-of-NNNNN.safetensors` names not in the new set, and a
   * stale `<prefix>.safetensors.index.json` when the new save is a single file. Default `true`.
   */
  removeStale?: boolean;
}

/** Result of {@linkcode writeSafetensorsSharded}. */
export interface WriteSafetensorsShardedResult {
  /** Paths written (shards, then the index when there is one). */
  files: string[];
  /** The index object, when more than one shard was written. */
  index?: Record<string, unknown>;
}

/**
 * Writes `sd` into folder `dir` as `save_pretrained` does: one `model.safetensors` when everything
 * fits in `maxShardSize`, else `model-0000i-of-0000N.safetensors` shards plus
 * `model.safetensors.index.json` (`{"metadata": {"total_size": ...}, "weight_map": {...}}`, sorted
 * keys, two-space indent, final newline). Each file appears under its name only when complete; the
 * index is written last; then files of an earlier save this one replaces are removed (see
 * {@linkcode WriteSafetensorsShardedOptions.removeStale}). The folder must exist.
 *
 * @example
 * ```ts
 * import { openHfShards, writeSafetensorsSharded } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const sd = new StateDict([
 *   ["a", tensorFromBytes("U8", [6], new Uint8Array(6).fill(1))],
 *   ["b", tensorFromBytes("U8", [6], new Uint8Array(6).fill(2))],
 * ]);
 * const { files } = await writeSafetensorsSharded(dir, sd, { maxShardSize: 10 });
 * assert.equal(files.length, 3);
 * await using back = await openHfShards(dir);
 * assert.deepEqual([...(await back.require("b").read())], [2, 2, 2, 2, 2, 2]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function writeSafetensorsSharded(
  dir: string,
  sd: StateDict,
  options: WriteSafetensorsShardedOptions,
): Promise<WriteSafetensorsShardedResult> {
  const plan = planSafetensorsShards(sd, options.maxShardSize, options);
  const prefix = options.prefix ?? "model";
  const metadata = options.metadata ?? { ...DEFAULT_SAFETENSORS_METADATA };
  const total = plan.files.reduce((n, f) => n + f.fileBytes, 0);
  let done = 0;
  const onProgress = options.onProgress;
  const written: string[] = [];
  for (const f of plan.files) {
    const path = join(dir, f.file);
    const p = planFor(sd, f.tensors, metadata);
    await writePlanned(
      path,
      sd,
      p,
      options.signal,
      onProgress && ((n) => onProgress(done += n, total)),
      options.onBytes,
    );
    written.push(path);
  }
  const result: WriteSafetensorsShardedResult = { files: written };
  if (plan.index && plan.indexText !== undefined) {
    const path = join(dir, plan.indexFile);
    const tmp = `${path}.tmp-${randomSuffix()}`;
    try {
      await Deno.writeTextFile(tmp, plan.indexText, { createNew: true });
      await Deno.rename(tmp, path);
    } catch (cause) {
      await Deno.remove(tmp).catch(() => {});
      throw new CkptError("FILE_WRITE", `Cannot write "${path}": ${(cause as Error).message}`, {
        file: path,
        cause,
      });
    }
    written.push(path);
    result.index = plan.index;
  }
  if (options.removeStale ?? true) {
    const keep = new Set(plan.files.map((f) => f.file));
    const escaped = prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const shardName = new RegExp(`^${escaped}-\\d{5}-of-\\d{5}\\.safetensors$`);
    const stale: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      if (!e.isFile || keep.has(e.name)) continue;
      if (shardName.test(e.name) || (!plan.index && e.name === plan.indexFile)) stale.push(e.name);
    }
    for (const name of stale) await Deno.remove(join(dir, name));
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Hugging Face shard folders

/** Name of the index file of a safetensors shard folder. */
export const SAFETENSORS_INDEX_NAME = "model.safetensors.index.json";

/** Largest index file read (the index of a 400B-parameter model is a few MB). */
const MAX_INDEX_BYTES = 256 * 2 ** 20;

/** A parsed shard index. */
export interface HfShardIndex {
  /** Path of the index file. */
  path: string;
  /** The `metadata` object (may be empty). */
  metadata: Record<string, unknown>;
  /** `tensor name -> shard file name`, in the file's order. */
  weightMap: Record<string, string>;
}

/**
 * Reads a shard index JSON (`model.safetensors.index.json`, or `pytorch_model.bin.index.json`):
 * `{"metadata": {...}, "weight_map": {name: file}}`. Shard names must be plain relative paths
 * inside the index's folder. `HF_INDEX` for anything else.
 */
export async function readHfShardIndex(path: string): Promise<HfShardIndex> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (cause) {
    throw new CkptError("FILE_OPEN", `Cannot open "${path}": ${(cause as Error).message}`, {
      file: path,
      cause,
    });
  }
  if (stat.size > MAX_INDEX_BYTES) {
    throw new CkptError(
      "HF_INDEX",
      `Cannot read shard index "${path}": ${stat.size} bytes is larger than ${MAX_INDEX_BYTES}`,
      { file: path },
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (cause) {
    throw new CkptError(
      "HF_INDEX",
      `Cannot read shard index "${path}": ${(cause as Error).message}`,
      {
        file: path,
        cause,
      },
    );
  }
  const obj = json as Record<string, unknown> | null;
  const wm = obj?.weight_map;
  if (
    obj === null || typeof obj !== "object" || Array.isArray(obj) || !wm ||
    typeof wm !== "object" || Array.isArray(wm)
  ) {
    throw new CkptError(
      "HF_INDEX",
      `Cannot read shard index "${path}": expected {"metadata": {...}, "weight_map": {...}}`,
      { file: path },
    );
  }
  const weightMap: Record<string, string> = {};
  for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
    if (
      typeof file !== "string" || file === "" || isAbsolute(file) ||
      normalize(file).split(sep).includes("..")
    ) {
      throw new CkptError(
        "HF_INDEX",
        `Cannot read shard index "${path}": tensor "${name}" maps to ${
          JSON.stringify(file)
        }, not a file in the index's folder`,
        { file: path, tensor: name },
      );
    }
    weightMap[name] = file;
  }
  const md = obj.metadata;
  const metadata = md && typeof md === "object" && !Array.isArray(md)
    ? md as Record<string, unknown>
    : {};
  return { path, metadata, weightMap };
}

/**
 * Opens a Hugging Face safetensors shard folder (or its index file) as one lazy state dict. The
 * index is cross-checked against every shard header: each `weight_map` entry must exist in the
 * shard it names (`HF_INDEX_MISSING`), no tensor may be in two shards (`HF_INDEX_DUPLICATE`), and
 * every shard tensor must be listed (`HF_INDEX_UNLISTED`). Tensors come in shard order (shard files
 * sorted by name), then data order. A folder with `model.safetensors` and no index opens that file.
 * `metadata` is the first shard's `__metadata__`. The state dict owns every shard file.
 *
 * @example
 * ```ts
 * import { openHfShards, writeSafetensorsSharded } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const sd = new StateDict([
 *   ["x", tensorFromBytes("U8", [4], new Uint8Array(4))],
 *   ["y", tensorFromBytes("U8", [4], new Uint8Array(4))],
 * ]);
 * await writeSafetensorsSharded(dir, sd, { maxShardSize: 4 });
 * await using back = await openHfShards(`${dir}/model.safetensors.index.json`);
 * assert.deepEqual([...back.keys()], ["x", "y"]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function openHfShards(indexPathOrFolder: string): Promise<StateDict> {
  let indexPath = indexPathOrFolder;
  let isDir = false;
  try {
    isDir = (await Deno.stat(indexPathOrFolder)).isDirectory;
  } catch (cause) {
    throw new CkptError(
      "FILE_OPEN",
      `Cannot open "${indexPathOrFolder}": ${(cause as Error).message}`,
      { file: indexPathOrFolder, cause },
    );
  }
  if (isDir) {
    indexPath = join(indexPathOrFolder, SAFETENSORS_INDEX_NAME);
    const hasIndex = await Deno.stat(indexPath).then(() => true, () => false);
    if (!hasIndex) {
      const single = join(indexPathOrFolder, "model.safetensors");
      if (await Deno.stat(single).then((s) => s.isFile, () => false)) {
        return openSafetensors(single);
      }
      throw new CkptError(
        "HF_INDEX",
        `Cannot open shard folder "${indexPathOrFolder}": it has neither ${SAFETENSORS_INDEX_NAME} nor model.safetensors`,
        { file: indexPathOrFolder },
      );
    }
  }
  const index = await readHfShardIndex(indexPath);
  const folder = dirname(indexPath);
  const byShard = new Map<string, Set<string>>();
  for (const [name, file] of Object.entries(index.weightMap)) {
    let set = byShard.get(file);
    if (!set) byShard.set(file, set = new Set());
    set.add(name);
  }
  const shardNames = [...byShard.keys()].sort();
  const sd = new StateDict();
  try {
    const headers: { shard: string; file: RandomAccessFile; header: SafetensorsHeader }[] = [];
    const owner = new Map<string, string>();
    for (const shard of shardNames) {
      const path = join(folder, shard);
      const file = await RandomAccessFile.open(path);
      sd.own(file);
      const header = await readHeaderFrom(file);
      headers.push({ shard, file, header });
      for (const t of header.tensors) {
        const prev = owner.get(t.name);
        if (prev !== undefined) {
          throw new CkptError(
            "HF_INDEX_DUPLICATE",
            `Cannot open shards of "${indexPath}": tensor "${t.name}" is in both ${prev} and ${shard}`,
            { file: path, tensor: t.name },
          );
        }
        owner.set(t.name, shard);
      }
    }
    for (const { shard, file, header } of headers) {
      const listed = byShard.get(shard)!;
      for (const t of header.tensors) {
        if (!listed.has(t.name)) {
          const where = index.weightMap[t.name];
          throw new CkptError(
            "HF_INDEX_UNLISTED",
            `Cannot open shards of "${indexPath}": tensor "${t.name}" is in ${shard} but the index ${
              where === undefined ? "does not list it" : `puts it in ${where}`
            }`,
            { file: file.path, tensor: t.name },
          );
        }
        sd.set(t.name, fileTensor(file, header, t));
      }
      for (const name of listed) {
        if (owner.get(name) !== shard) {
          throw new CkptError(
            "HF_INDEX_MISSING",
            `Cannot open shards of "${indexPath}": the index puts tensor "${name}" in ${shard}, which does not hold it`,
            { file: file.path, tensor: name },
          );
        }
      }
    }
    sd.metadata = { ...(headers[0]?.header.metadata ?? {}) };
  } catch (err) {
    await sd.close();
    throw err;
  }
  return sd;
}
