/**
 * Chunk placement for torch.distributed.checkpoint tensors: a full tensor is the union of chunk
 * rectangles (`offsets`, `sizes` per dimension, any dimension sharded, uneven and zero-size chunks
 * allowed). This module checks that the chunks cover the tensor exactly once and produces rows of
 * the full tensor (row = a slice along dim 0) from the chunks' own rows, so memory stays bounded by
 * the row block asked for.
 *
 * Pure byte arithmetic: the chunk bytes come from a {@linkcode ChunkRows} source (a record in a
 * `.distcp` file, or memory in tests).
 * @module
 */
import { CkptError } from "../errors.ts";
import type { DType } from "./dtype.ts";

/** A chunk's place in the full tensor: per-dimension start and extent (both `[]` for 0-d). */
export interface ChunkRect {
  /** Start index per dimension. */
  readonly offsets: readonly number[];
  /** Extent per dimension. */
  readonly sizes: readonly number[];
}

/** Reads rows `[rowStart, rowEnd)` of one chunk (its own dim 0) as contiguous bytes. */
export interface ChunkRows {
  /** Reads the rows into `into` (exactly the rows' byte length) when given, else a new buffer. */
  readRows(rowStart: number, rowEnd: number, into?: Uint8Array): Promise<Uint8Array>;
}

/** Where an error is reported: the tensor and, per chunk, the file holding it. */
export interface ChunkContext {
  /** Tensor (flat key) the chunks belong to. */
  readonly tensor: string;
  /** File of chunk `i` (for messages). */
  readonly fileOf?: (chunkIndex: number) => string | undefined;
  /** The metadata file that lists the chunks (named by errors about the set as a whole). */
  readonly metadataFile?: string;
}

function product(xs: readonly number[], from = 0, to = xs.length): number {
  let n = 1;
  for (let i = from; i < to; i++) n *= xs[i]!;
  return n;
}

function rectText(c: ChunkRect): string {
  return `offsets (${c.offsets.join(", ")}) sizes (${c.sizes.join(", ")})`;
}

function isEmpty(c: ChunkRect): boolean {
  return c.sizes.some((s) => s === 0);
}

function overlaps(a: ChunkRect, b: ChunkRect): boolean {
  for (let d = 0; d < a.offsets.length; d++) {
    const a0 = a.offsets[d]!, a1 = a0 + a.sizes[d]!;
    const b0 = b.offsets[d]!, b1 = b0 + b.sizes[d]!;
    if (a1 <= b0 || b1 <= a0) return false;
  }
  return true;
}

/**
 * Checks that `chunks` tile `shape` exactly: every chunk has the tensor's rank, non-negative integer
 * offsets and sizes inside the tensor (`DCP_CHUNK_BOUNDS`), no two non-empty chunks share an element
 * (`DCP_CHUNK_OVERLAP`), and together they cover every element (`DCP_CHUNK_HOLE`). Zero-size chunks
 * are allowed anywhere on the boundary (`offset <= size`).
 */
export function checkChunkCoverage(
  shape: readonly number[],
  chunks: readonly ChunkRect[],
  ctx: ChunkContext,
): void {
  const file = (i: number) => ctx.fileOf?.(i);
  chunks.forEach((c, i) => {
    const ok = c.offsets.length === shape.length && c.sizes.length === shape.length &&
      c.offsets.every((o, d) =>
        Number.isSafeInteger(o) && Number.isSafeInteger(c.sizes[d]) && o >= 0 &&
        c.sizes[d]! >= 0 && o + c.sizes[d]! <= shape[d]!
      );
    if (!ok) {
      throw new CkptError(
        "DCP_CHUNK_BOUNDS",
        `Cannot place chunk ${i} of "${ctx.tensor}" (${rectText(c)}): it lies outside shape (${
          shape.join(", ")
        })`,
        { tensor: ctx.tensor, ...optFile(file(i)), details: { chunk: i } },
      );
    }
  });
  // Sweep along dim 0 (0-d tensors have a single element: at most one non-empty chunk).
  const order = chunks.map((c, i) => ({ c, i })).filter((e) => !isEmpty(e.c));
  const start = (c: ChunkRect) => (c.offsets.length === 0 ? 0 : c.offsets[0]!);
  const end = (c: ChunkRect) => (c.offsets.length === 0 ? 1 : c.offsets[0]! + c.sizes[0]!);
  order.sort((x, y) => start(x.c) - start(y.c) || x.i - y.i);
  let active: { c: ChunkRect; i: number }[] = [];
  let covered = 0;
  for (const e of order) {
    active = active.filter((a) => end(a.c) > start(e.c));
    for (const a of active) {
      if (overlaps(a.c, e.c)) {
        throw new CkptError(
          "DCP_CHUNK_OVERLAP",
          `Cannot assemble "${ctx.tensor}": chunk ${a.i} (${rectText(a.c)}) and chunk ${e.i} (${
            rectText(e.c)
          }) overlap`,
          { tensor: ctx.tensor, ...optFile(file(e.i)), details: { chunks: [a.i, e.i] } },
        );
      }
    }
    active.push(e);
    covered += product(e.c.sizes);
  }
  const total = product(shape);
  if (covered !== total) {
    throw new CkptError(
      "DCP_CHUNK_HOLE",
      `Cannot assemble "${ctx.tensor}": its ${chunks.length} chunks cover ${covered} of ${total} elements of shape (${
        shape.join(", ")
      })`,
      { tensor: ctx.tensor, ...optFile(ctx.metadataFile), details: { covered, total } },
    );
  }
}

function optFile(file: string | undefined): { file?: string } {
  return file === undefined ? {} : { file };
}

/** One chunk's contribution to a row block: its rows `[chunkRowStart, chunkRowEnd)`. */
export interface RowCopy {
  /** Index into the chunk list. */
  readonly chunk: number;
  /** First row of the chunk (its own dim 0) that lands in the block. */
  readonly chunkRowStart: number;
  /** End row (exclusive) of the chunk. */
  readonly chunkRowEnd: number;
  /** First row of the block it lands on (relative to the block start). */
  readonly blockRow: number;
  /** True when the chunk spans every dim after 0, so its rows are one contiguous run in the block. */
  readonly contiguous: boolean;
}

/**
 * The copies that fill rows `[rowStart, rowEnd)` of the full tensor: one per non-empty chunk that
 * intersects those rows, in chunk order. A 0-d tensor has one row.
 */
export function planRowCopies(
  shape: readonly number[],
  chunks: readonly ChunkRect[],
  rowStart: number,
  rowEnd: number,
): RowCopy[] {
  const copies: RowCopy[] = [];
  chunks.forEach((c, i) => {
    if (isEmpty(c)) return;
    const o0 = c.offsets.length === 0 ? 0 : c.offsets[0]!;
    const s0 = c.sizes.length === 0 ? 1 : c.sizes[0]!;
    const a = Math.max(rowStart, o0);
    const b = Math.min(rowEnd, o0 + s0);
    if (a >= b) return;
    let contiguous = true;
    for (let d = 1; d < shape.length; d++) if (c.sizes[d] !== shape[d]) contiguous = false;
    copies.push({
      chunk: i,
      chunkRowStart: a - o0,
      chunkRowEnd: b - o0,
      blockRow: a - rowStart,
      contiguous,
    });
  });
  return copies;
}

/**
 * Copies `rows` (the chunk's rows of `copy`, contiguous, row-major) into `block` (rows of the full
 * tensor starting at the block's first row), placing each run at the chunk's offsets in dims 1..n-1.
 * Runs are as long as the trailing dimensions the chunk spans fully allow.
 */
export function scatterRows(
  shape: readonly number[],
  elemSize: number,
  chunk: ChunkRect,
  copy: RowCopy,
  rows: Uint8Array,
  block: Uint8Array,
): void {
  const n = shape.length;
  const rowElems = product(shape, 1);
  const nRows = copy.chunkRowEnd - copy.chunkRowStart;
  if (copy.contiguous || n <= 1) {
    block.set(rows.subarray(0, nRows * rowElems * elemSize), copy.blockRow * rowElems * elemSize);
    return;
  }
  // j: first dim of the contiguous run (every dim after j is spanned fully by the chunk).
  let j = n - 1;
  while (j > 1 && chunk.sizes[j] === shape[j]) j--;
  const runElems = product(chunk.sizes, j);
  const runBytes = runElems * elemSize;
  // Row-major strides in elements, of the full tensor and of the chunk.
  const fullStride = new Array<number>(n).fill(1);
  const chunkStride = new Array<number>(n).fill(1);
  for (let d = n - 2; d >= 0; d--) {
    fullStride[d] = fullStride[d + 1]! * shape[d + 1]!;
    chunkStride[d] = chunkStride[d + 1]! * chunk.sizes[d + 1]!;
  }
  const chunkRowElems = chunkStride[0]!;
  let dstBase = 0;
  for (let d = 1; d < n; d++) dstBase += chunk.offsets[d]! * fullStride[d]!;
  const outer = chunk.sizes.slice(1, j); // dims 1..j-1 iterated one index at a time
  const outerCount = product(outer);
  const idx = new Array<number>(outer.length).fill(0);
  for (let r = 0; r < nRows; r++) {
    const srcRow = r * chunkRowElems;
    const dstRow = (copy.blockRow + r) * rowElems + dstBase;
    idx.fill(0);
    for (let k = 0; k < outerCount; k++) {
      let src = srcRow, dst = dstRow;
      for (let t = 0; t < idx.length; t++) {
        src += idx[t]! * chunkStride[t + 1]!;
        dst += idx[t]! * fullStride[t + 1]!;
      }
      block.set(rows.subarray(src * elemSize, src * elemSize + runBytes), dst * elemSize);
      for (let t = idx.length - 1; t >= 0; t--) {
        if (++idx[t]! < outer[t]!) break;
        idx[t] = 0;
      }
    }
  }
}

/**
 * Rows `[rowStart, rowEnd)` of the full tensor assembled from its chunks. Chunks that span every
 * dimension after 0 are read straight into the result; others are read row range by row range and
 * scattered. Reads of different chunks run concurrently. Coverage must have been checked with
 * {@linkcode checkChunkCoverage} (a hole would leave zeros, or stale bytes of `into` when given).
 */
export async function assembleRows(
  shape: readonly number[],
  elemSize: number,
  chunks: readonly ChunkRect[],
  sources: readonly ChunkRows[],
  rowStart: number,
  rowEnd: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const rowBytes = product(shape, 1) * elemSize;
  const n = (rowEnd - rowStart) * rowBytes;
  // Coverage is exact (every element once), so a reused buffer needs no clearing.
  const block = into ? into.subarray(0, n) : new Uint8Array(n);
  const copies = planRowCopies(shape, chunks, rowStart, rowEnd);
  await Promise.all(copies.map(async (copy) => {
    const src = sources[copy.chunk]!;
    const chunk = chunks[copy.chunk]!;
    const nRows = copy.chunkRowEnd - copy.chunkRowStart;
    if (copy.contiguous || shape.length <= 1) {
      const at = copy.blockRow * rowBytes;
      await src.readRows(
        copy.chunkRowStart,
        copy.chunkRowEnd,
        block.subarray(at, at + nRows * rowBytes),
      );
      return;
    }
    const rows = await src.readRows(copy.chunkRowStart, copy.chunkRowEnd);
    scatterRows(shape, elemSize, chunk, copy, rows, block);
  }));
  return block;
}

/** A chunk record resolved to its tensor bytes: an absolute byte range, or a reader for odd layouts. */
export interface ResolvedChunk {
  /** Element type found in the record. */
  readonly dtype: DType;
  /** Shape found in the record. */
  readonly shape: readonly number[];
  /** Reads rows of the chunk. */
  readonly rows: ChunkRows;
}
