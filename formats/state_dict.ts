/**
 * The lazy state dict every stage passes along: an ordered map `name -> TensorRef`. Nothing is read
 * until a consumer calls {@linkcode TensorRef.read}; a row range reads only those bytes.
 *
 * Rows are slices along dimension 0 (a 0-d tensor has one row); bytes are little-endian, row-major,
 * contiguous, in the tensor's own dtype.
 *
 * @example A state dict over in-memory bytes
 * ```ts
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const sd = new StateDict();
 * sd.set("w", tensorFromBytes("F32", [2, 2], new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer)));
 * const row1 = await sd.get("w")!.read(1, 2);
 * assert.deepEqual([...new Float32Array(row1.buffer, row1.byteOffset, 2)], [3, 4]);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { type DType, DTYPES } from "./dtype.ts";

/** A tensor that has not been read yet. */
export interface TensorRef {
  /** Element type of the bytes {@linkcode TensorRef.read} returns. */
  readonly dtype: DType;
  /** Shape; `[]` for a 0-d tensor. */
  readonly shape: readonly number[];
  /** Human-readable origin (file path, or a note such as "merged from ..."), for errors and reports. */
  readonly source?: string;
  /**
   * Reads rows `[rowStart, rowEnd)` along dim 0 as contiguous little-endian bytes.
   * Defaults to the whole tensor. Rejects ranges outside `[0, rowCount(shape)]`.
   */
  read(rowStart?: number, rowEnd?: number): Promise<Uint8Array>;
  /**
   * Optional: reads rows `[rowStart, rowEnd)` straight into `into` (at least that many bytes) and
   * resolves to the filled prefix of `into`. Sources that can read without an intermediate buffer
   * (positional file reads, chunk assembly) implement it; writers use it to skip one copy.
   */
  readInto?(rowStart: number, rowEnd: number, into: Uint8Array): Promise<Uint8Array>;
  /**
   * Optional: this tensor as the float dtype `dtype`, computed from its unrounded values with one
   * round-to-nearest-even. Computed tensors implement it (a LoRA-merged weight rounds `W + s·B·A`
   * straight into `dtype`) so that a later cast (`castRef` in `formats/cast.ts`,
   * writeModel's `dtype`) rounds once, to the final dtype, instead of rounding to this ref's dtype
   * and then again. Called only for float `dtype` different from this ref's.
   */
  cast?(dtype: DType): TensorRef;
}

/** Number of elements of a shape (1 for `[]`). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Rows along dim 0 (1 for a 0-d tensor). */
export function rowCount(shape: readonly number[]): number {
  return shape.length === 0 ? 1 : shape[0]!;
}

/** Elements per row (product of dims after the first; 1 for 0-d and 1-d tensors). */
export function rowNumel(shape: readonly number[]): number {
  return shape.length === 0 ? 1 : numel(shape.slice(1));
}

/** Bytes of a whole tensor. */
export function byteLength(dtype: DType, shape: readonly number[]): number {
  return numel(shape) * DTYPES[dtype].size;
}

/** Validates and fills in a row range, throwing `ROW_RANGE` when it is outside the tensor. */
export function checkRowRange(
  shape: readonly number[],
  rowStart: number | undefined,
  rowEnd: number | undefined,
  name = "tensor",
): [number, number] {
  const rows = rowCount(shape);
  const start = rowStart ?? 0;
  const end = rowEnd ?? rows;
  if (
    !Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end > rows
  ) {
    throw new CkptError(
      "ROW_RANGE",
      `Cannot read rows [${start}, ${end}) of "${name}": it has ${rows} rows`,
      { tensor: name },
    );
  }
  return [start, end];
}

/** A {@linkcode TensorRef} over bytes already in memory (small tensors, tests). */
export function tensorFromBytes(
  dtype: DType,
  shape: readonly number[],
  bytes: Uint8Array,
  source = "memory",
): TensorRef {
  const expected = byteLength(dtype, shape);
  if (bytes.byteLength !== expected) {
    throw new CkptError(
      "TENSOR_SIZE",
      `Cannot wrap bytes as ${dtype}[${
        shape.join(", ")
      }]: got ${bytes.byteLength} bytes, need ${expected}`,
    );
  }
  const rowBytes = rowNumel(shape) * DTYPES[dtype].size;
  return {
    dtype,
    shape: [...shape],
    source,
    read(rowStart?: number, rowEnd?: number): Promise<Uint8Array> {
      const [s, e] = checkRowRange(shape, rowStart, rowEnd);
      return Promise.resolve(bytes.subarray(s * rowBytes, e * rowBytes));
    },
  };
}

/** Something a state dict must release when closed (an open file). */
export interface Closer {
  /** Releases the resource. */
  close(): void | Promise<void>;
}

/**
 * Ordered `name -> TensorRef` map plus the resources (open files) behind it and free-form string
 * metadata (safetensors `__metadata__`). Insertion order is preserved; `close()` releases every
 * resource registered with {@linkcode StateDict.own}.
 */
export class StateDict implements AsyncDisposable {
  #tensors = new Map<string, TensorRef>();
  #closers: Closer[] = [];
  /** String metadata carried to writers that support it. */
  metadata: Record<string, string> = {};

  /** Creates a state dict, optionally from entries. */
  constructor(entries?: Iterable<[string, TensorRef]>) {
    if (entries) { for (const [k, v] of entries) this.#tensors.set(k, v); }
  }

  /** Number of tensors. */
  get size(): number {
    return this.#tensors.size;
  }
  /** The tensor called `name`, if any. */
  get(name: string): TensorRef | undefined {
    return this.#tensors.get(name);
  }
  /** The tensor called `name`, or a `TENSOR_MISSING` error. */
  require(name: string): TensorRef {
    const t = this.#tensors.get(name);
    if (!t) throw new CkptError("TENSOR_MISSING", `Cannot find tensor "${name}"`, { tensor: name });
    return t;
  }
  /** True when `name` is present. */
  has(name: string): boolean {
    return this.#tensors.has(name);
  }
  /** Adds or replaces `name` (a replacement keeps the original position). */
  set(name: string, ref: TensorRef): this {
    this.#tensors.set(name, ref);
    return this;
  }
  /** Removes `name`; true when it was present. */
  delete(name: string): boolean {
    return this.#tensors.delete(name);
  }
  /** Tensor names in order. */
  keys(): IterableIterator<string> {
    return this.#tensors.keys();
  }
  /** `[name, ref]` pairs in order. */
  entries(): IterableIterator<[string, TensorRef]> {
    return this.#tensors.entries();
  }
  /** Same as {@linkcode StateDict.entries}. */
  [Symbol.iterator](): IterableIterator<[string, TensorRef]> {
    return this.#tensors.entries();
  }
  /** Registers a resource to release on {@linkcode StateDict.close}. */
  own(closer: Closer): this {
    this.#closers.push(closer);
    return this;
  }
  /** Moves the resources of `other` into this dict (when one dict wraps another). */
  adopt(other: StateDict): this {
    this.#closers.push(...other.#closers);
    other.#closers = [];
    return this;
  }
  /** Releases every registered resource; safe to call twice. */
  async close(): Promise<void> {
    const closers = this.#closers;
    this.#closers = [];
    for (const c of closers.reverse()) await c.close();
  }
  /** `await using sd = ...` support. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
  /** Total bytes of all tensors. */
  totalBytes(): number {
    let n = 0;
    for (const t of this.#tensors.values()) n += byteLength(t.dtype, t.shape);
    return n;
  }
}
