/**
 * Private: the deterministic safetensors writer (the reference's order and padding): the header is
 * planned before any data moves, tensor data streams in bounded blocks, and the file is renamed
 * into place only when complete. Public API in `safetensors.ts`.
 * @module
 */
import { CkptError } from "../errors.ts";
import { osError } from "../errors/os.ts";
import { DTYPES, isDType } from "./dtype.ts";
import { MAX_HEADER_SIZE, planFile, type PlannedFile } from "./_safetensors_header.ts";
import { MAX_HEADER_ENTRIES } from "./_safetensors_entries.ts";
import type { StateDict, TensorRef } from "./state_dict.ts";
import { phaseClock } from "./phase_clock.ts";
import { createFileSink, type FileSink, RESERVE_MAX_BYTES } from "./_file_sink.ts";

/** Default metadata of written files, as `save_pretrained` writes it. */
export const DEFAULT_SAFETENSORS_METADATA: Readonly<Record<string, string>> = { format: "pt" };

/** Bytes moved per read/write while streaming (rows are grouped up to this size). */
export const STREAM_BLOCK_BYTES: number = 8 * 2 ** 20;

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
  /**
   * Start an `fdatasync` of the file in the background after every this many bytes (default 0:
   * never), so that its data reaches the disk while the next blocks are computed and a later
   * fsync is quick. An error of such a sync fails the write.
   */
  syncEvery?: number;
}

/** Result of {@linkcode writeSafetensors}. */
export interface WriteSafetensorsResult {
  /** Size of the written file in bytes. */
  bytes: number;
}

export function checkMetadata(metadata: Record<string, string>): void {
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") {
      throw new CkptError(
        "SAFETENSORS_METADATA",
        `Cannot write safetensors metadata: value of "${k}" is ${typeof v}, not a string`,
      );
    }
  }
}

export function planFor(
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
  const count = entries.length + Object.keys(metadata).length;
  if (count > MAX_HEADER_ENTRIES) {
    throw new CkptError(
      "SAFETENSORS_TOO_MANY_ENTRIES",
      `Cannot write safetensors: the header would hold ${count} entries (tensors and __metadata__ ` +
        `values), over the ${MAX_HEADER_ENTRIES} ckpt reads back (shard the weights)`,
      { details: { limit: MAX_HEADER_ENTRIES, entries: count } },
    );
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

/**
 * Fills `target` (exactly the segment's size) with a segment's bytes, checking each part's byte
 * count.
 */
async function fillSegment(seg: Segment, target: Uint8Array, path: string): Promise<Uint8Array> {
  // Bytes a ref returns are copied into the target: the next read (which overlaps this
  // segment's write) may reuse the memory a ref returned last time.
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

/**
 * Segments filled ahead of the one being written. One: reading (or merging) the next overlaps the
 * write of this one. More would overlap two reads of one tensor, which its ref need not allow.
 */
const FILL_AHEAD = 1;

/**
 * Writes `segments` to `sink` in order while the next {@linkcode FILL_AHEAD} are being filled: into
 * the sink's own memory where it gives some (no copy), else into our own rotating buffers. A
 * segment too large to reserve is filled once everything before it is written. After a failure it
 * waits for the fills in flight before it throws (the caller then abandons the sink).
 */
async function streamSegments(
  sink: FileSink,
  segments: Iterator<Segment>,
  block: number,
  path: string,
  options: { signal: AbortSignal | undefined; progress: ((n: number) => void) | undefined },
): Promise<void> {
  const buffers: Uint8Array[] = [];
  /** Our buffer for the `i`-th segment filled, of `n` bytes: not in use by the fills in flight. */
  const ownBuffer = (i: number, n: number): Uint8Array => {
    if (n > block) return new Uint8Array(n);
    return (buffers[i % (FILL_AHEAD + 1)] ??= new Uint8Array(block)).subarray(0, n);
  };
  const queue: Promise<Uint8Array>[] = [];
  let started = 0;
  let large: Segment | undefined;
  const refill = (): void => {
    while (!large && queue.length < FILL_AHEAD) {
      const next = segments.next();
      if (next.done) return;
      const seg = next.value;
      if (seg.bytes > RESERVE_MAX_BYTES) {
        large = seg; // filled once the queue is empty: no reservation may be outstanding
        return;
      }
      const i = started++;
      const p = sink.reserve(seg.bytes).then((view) =>
        fillSegment(seg, view ?? ownBuffer(i, seg.bytes), path)
      );
      p.catch(() => {}); // awaited below, or after a failure
      queue.push(p);
    }
  };
  const write = async (bytes: Uint8Array): Promise<void> => {
    await sink.write(bytes);
    options.progress?.(bytes.byteLength);
  };
  try {
    refill();
    for (;;) {
      if (queue.length > 0) {
        const waited = phaseClock.start();
        const bytes = await queue.shift()!;
        phaseClock.stop("wait-data", waited);
        options.signal?.throwIfAborted();
        refill(); // the next segments fill while this one is written
        await write(bytes);
      } else if (large) {
        const bytes = await fillSegment(large, new Uint8Array(large.bytes), path);
        large = undefined;
        options.signal?.throwIfAborted();
        await write(bytes); // written before anything else is reserved
        refill();
      } else return;
    }
  } catch (err) {
    await Promise.allSettled(queue);
    throw err;
  }
}

export function randomSuffix(): string {
  return crypto.getRandomValues(new Uint32Array(2)).reduce((s, x) => s + x.toString(36), "");
}

/**
 * Streams a planned file's data from `sd` into `path` (temp file + rename). The next segment is
 * read while the one before is written: into the sink's own memory where it has some to give (no
 * copy), else into one of two block buffers that alternate.
 */
export async function writePlanned(
  path: string,
  sd: StateDict,
  plan: PlannedFile,
  signal: AbortSignal | undefined,
  progress: ((n: number) => void) | undefined,
  onBytes: ((path: string, bytes: Uint8Array) => void | Promise<void>) | undefined,
  syncEvery = 0,
): Promise<void> {
  signal?.throwIfAborted();
  const tmp = `${path}.tmp-${randomSuffix()}`;
  let sink: FileSink;
  try {
    sink = await createFileSink(tmp, {
      expectedBytes: plan.fileBytes,
      syncEvery,
      onBytes: onBytes && ((bytes) => onBytes(path, bytes)),
    });
  } catch (cause) {
    throw osError(cause, "create", tmp, { code: "FILE_WRITE" });
  }
  let closed = false;
  try {
    await sink.write(plan.headerBytes);
    progress?.(plan.headerBytes.length);
    const block = Math.min(STREAM_BLOCK_BYTES, Math.max(plan.dataBytes, 1));
    await streamSegments(sink, segmentsOf(sd, plan, block), block, path, {
      signal,
      progress,
    });
    closed = true;
    await sink.finish();
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
    if (!closed) await sink.abandon();
    await Deno.remove(tmp).catch(() => {});
    if (err instanceof CkptError || (err instanceof DOMException && err.name === "AbortError")) {
      throw err;
    }
    if (signal?.aborted && err === signal.reason) throw err;
    throw osError(err, "write", path, { code: "FILE_WRITE" });
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
    options.syncEvery,
  );
  return { bytes: plan.fileBytes };
}
