/**
 * Torch tensors as ckpt holds them: a {@linkcode TorchStorage} (a flat run of elements over a
 * {@linkcode StorageSource}: a zip record, memory, a tensor being written) and
 * {@linkcode TorchTensor} views of it (shape, stride, offset), lazy {@linkcode TensorRef}s read in
 * row blocks.
 *
 * @example A tensor over bytes in memory
 * ```ts
 * import { tensorOfBytes } from "./tensor.ts";
 * import assert from "node:assert/strict";
 *
 * const t = tensorOfBytes("F32", [2], new Uint8Array(new Float32Array([1, 2]).buffer));
 * assert.deepEqual([...new Float32Array((await t.read()).slice().buffer)], [1, 2]);
 * ```
 * @module
 */
import { CkptError } from "../../errors.ts";
import { type DType, DTYPES } from "../dtype.ts";
import { checkRowRange, numel, rowCount, rowNumel, type TensorRef } from "../state_dict.ts";

/**
 * Where a storage's bytes come from: a byte range of a zip record in an open file, memory, or a
 * tensor being written. `read` returns bytes `[start, end)` of the storage.
 */
export interface StorageSource {
  /** Bytes available. */
  readonly byteLength: number;
  /** Reads bytes `[start, end)` (little-endian element bytes). */
  read(start: number, end: number): Promise<Uint8Array>;
  /** Preferred block alignment in bytes for streaming reads (a row's bytes); 1 when any split is fine. */
  readonly blockAlign?: number;
  /**
   * Optional: reads bytes `[start, end)` into `into` (at least `end - start` bytes) and returns the
   * filled part, so that streaming writers can reuse buffers.
   */
  readInto?(start: number, end: number, into: Uint8Array): Promise<Uint8Array>;
  /**
   * Optional: true when reads may run at once and each returns bytes that stay valid (positional
   * reads of a file, memory), so a writer may read several storages ahead.
   */
  readonly independentReads?: boolean;
}

/**
 * A torch storage: a flat run of `numel` elements of `dtype` under a key. Tensors that share a
 * storage object are views of it (tied weights) and are written as one storage record.
 */
export class TorchStorage {
  /** Element type. */
  readonly dtype: DType;
  /** Number of elements. */
  readonly numel: number;
  /** Device location as pickled (`"cpu"`, `"cuda:0"`). */
  readonly location: string;
  /** Key of the storage record in the file it came from (`"0"`), or undefined for new storages. */
  readonly key: string | undefined;
  /** The bytes. */
  readonly source: StorageSource;
  /** Creates a storage. `source.byteLength` must cover `numel` elements. */
  constructor(
    dtype: DType,
    numel: number,
    source: StorageSource,
    options: { location?: string; key?: string } = {},
  ) {
    this.dtype = dtype;
    this.numel = numel;
    this.source = source;
    this.location = options.location ?? "cpu";
    this.key = options.key;
  }
  /** Bytes of the storage (`numel × itemsize`). */
  get byteLength(): number {
    return this.numel * DTYPES[this.dtype].size;
  }
}

/** Options of {@linkcode TorchTensor}. */
export interface TorchTensorOptions {
  /** Element offset of the view into the storage. Default 0. */
  storageOffset?: number;
  /** Strides in elements. Default: contiguous row-major. */
  stride?: readonly number[];
  /** `requires_grad`. Default false. */
  requiresGrad?: boolean;
  /** True for an `nn.Parameter`. Default false. */
  parameter?: boolean;
  /** Human-readable origin. */
  source?: string;
}

/** Row-major strides of a shape. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    out[i] = s;
    s *= shape[i]!;
  }
  return out;
}

const GATHER_WINDOW = 16 * 1024 * 1024;

/**
 * A tensor: a view (`storageOffset`, `shape`, `stride`) of a {@linkcode TorchStorage}. It is a
 * {@linkcode TensorRef}: `read(rowStart, rowEnd)` returns those rows as contiguous bytes, reading only
 * the storage bytes they cover (non-contiguous views are gathered window by window).
 * Construction checks that the view fits in the storage (`TORCH_STORAGE_SIZE`) and that strides are
 * not negative (`TORCH_STRIDE`).
 */
export class TorchTensor implements TensorRef {
  /** Element type. */
  readonly dtype: DType;
  /** Shape; `[]` for 0-d. */
  readonly shape: readonly number[];
  /** Strides in elements. */
  readonly stride: readonly number[];
  /** Element offset into the storage. */
  readonly storageOffset: number;
  /** The storage it views. */
  readonly storage: TorchStorage;
  /** `requires_grad`. */
  readonly requiresGrad: boolean;
  /** True for `nn.Parameter`. */
  readonly parameter: boolean;
  /** Origin, for errors. */
  readonly source: string;

  /** Creates a view of `storage`. */
  constructor(storage: TorchStorage, shape: readonly number[], options: TorchTensorOptions = {}) {
    this.storage = storage;
    this.dtype = storage.dtype;
    this.shape = [...shape];
    this.stride = options.stride ? [...options.stride] : contiguousStrides(shape);
    this.storageOffset = options.storageOffset ?? 0;
    this.requiresGrad = options.requiresGrad ?? false;
    this.parameter = options.parameter ?? false;
    this.source = options.source ?? "memory";
    const ctx = { file: this.source };
    if (this.stride.length !== this.shape.length) {
      throw new CkptError(
        "TORCH_STRIDE",
        `Cannot view storage: shape [${
          shape.join(", ")
        }] has ${shape.length} dims, stride has ${this.stride.length}`,
        ctx,
      );
    }
    for (const v of [...this.shape, ...this.stride, this.storageOffset]) {
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new CkptError(
          "TORCH_STRIDE",
          `Cannot view storage: shape [${shape.join(", ")}], stride [${
            this.stride.join(", ")
          }], offset ${this.storageOffset} has a negative or non-integer value`,
          ctx,
        );
      }
    }
    const n = numel(this.shape);
    if (n > 0) {
      let last = this.storageOffset;
      for (let i = 0; i < this.shape.length; i++) last += (this.shape[i]! - 1) * this.stride[i]!;
      if (!Number.isSafeInteger(last) || last >= storage.numel) {
        throw new CkptError(
          "TORCH_STORAGE_SIZE",
          `Cannot view storage: shape [${shape.join(", ")}] with stride [${
            this.stride.join(", ")
          }] and offset ${this.storageOffset} needs ${
            last + 1
          } elements, the storage has ${storage.numel}`,
          ctx,
        );
      }
    }
  }

  /** True when the view is the row-major contiguous layout (any storage offset). */
  get isContiguous(): boolean {
    const want = contiguousStrides(this.shape);
    for (let i = 0; i < this.shape.length; i++) {
      if (this.shape[i]! !== 1 && this.stride[i]! !== want[i]!) return false;
    }
    return true;
  }

  /** Reads rows `[rowStart, rowEnd)` as contiguous little-endian bytes. */
  async read(rowStart?: number, rowEnd?: number): Promise<Uint8Array> {
    const [s, e] = checkRowRange(this.shape, rowStart, rowEnd, this.source);
    const item = DTYPES[this.dtype].size;
    const perRow = rowNumel(this.shape);
    const count = (e - s) * perRow;
    if (count === 0) return new Uint8Array(0);
    const first = this.shape.length === 0
      ? this.storageOffset
      : this.storageOffset + s * this.stride[0]!;
    if (this.isContiguous) {
      return await this.storage.source.read(first * item, (first + count) * item);
    }
    return await this.#gather(s, e, count, item);
  }

  async #gather(s: number, e: number, count: number, item: number): Promise<Uint8Array> {
    const shape = this.shape.length === 0 ? [1] : [e - s, ...this.shape.slice(1)];
    const stride = this.shape.length === 0 ? [1] : [...this.stride];
    const base = this.shape.length === 0
      ? this.storageOffset
      : this.storageOffset + s * this.stride[0]!;
    let hi = base;
    for (let i = 0; i < shape.length; i++) hi += (shape[i]! - 1) * stride[i]!;
    const out = new Uint8Array(count * item);
    const windowElems = Math.max(1, Math.floor(GATHER_WINDOW / item));
    for (let w0 = base; w0 <= hi; w0 += windowElems) {
      const w1 = Math.min(hi + 1, w0 + windowElems);
      const bytes = await this.storage.source.read(w0 * item, w1 * item);
      // Walk every output element in order with a multi-index; copy those inside the window.
      const idx = new Array<number>(shape.length).fill(0);
      let off = base;
      for (let k = 0; k < count; k++) {
        if (off >= w0 && off < w1) {
          const src = (off - w0) * item;
          out.set(bytes.subarray(src, src + item), k * item);
        }
        for (let d = shape.length - 1; d >= 0; d--) {
          idx[d]!++;
          off += stride[d]!;
          if (idx[d]! < shape[d]!) break;
          off -= stride[d]! * shape[d]!;
          idx[d] = 0;
        }
      }
    }
    return out;
  }
}

/** An in-memory {@linkcode StorageSource}. */
export function bytesSource(bytes: Uint8Array): StorageSource {
  return {
    byteLength: bytes.byteLength,
    independentReads: true,
    read(start: number, end: number): Promise<Uint8Array> {
      if (start < 0 || end > bytes.byteLength || end < start) {
        throw new CkptError(
          "TORCH_STORAGE_SIZE",
          `Cannot read storage bytes [${start}, ${end}): it has ${bytes.byteLength}`,
        );
      }
      return Promise.resolve(bytes.subarray(start, end));
    },
  };
}

/**
 * Wraps any {@linkcode TensorRef} as a contiguous {@linkcode TorchTensor} over a storage of its own
 * (reads go to `ref.read` row by row). A {@linkcode TorchTensor} is returned unchanged.
 */
export function torchTensor(
  ref: TensorRef,
  options: { requiresGrad?: boolean; parameter?: boolean } = {},
): TorchTensor {
  if (
    ref instanceof TorchTensor && options.requiresGrad === undefined &&
    options.parameter === undefined
  ) {
    return ref;
  }
  const item = DTYPES[ref.dtype].size;
  const rowBytes = rowNumel(ref.shape) * item;
  const rows = rowCount(ref.shape);
  const n = numel(ref.shape);
  const total = n * item;
  const source: StorageSource = {
    byteLength: total,
    blockAlign: Math.max(1, rowBytes),
    async read(start: number, end: number): Promise<Uint8Array> {
      if (start === end) return new Uint8Array(0);
      if (rowBytes === 0 || start < 0 || end > total || end < start) {
        throw new CkptError(
          "TORCH_STORAGE_SIZE",
          `Cannot read bytes [${start}, ${end}) of a ${total}-byte tensor`,
          { file: ref.source ?? "memory" },
        );
      }
      const r0 = Math.floor(start / rowBytes);
      const r1 = Math.min(rows, Math.ceil(end / rowBytes));
      const bytes = await ref.read(r0, r1);
      const skip = start - r0 * rowBytes;
      return bytes.subarray(skip, skip + (end - start));
    },
  };
  if (ref.readInto) {
    // whole rows go straight into the writer's buffer (a merged ref merges into it in place)
    const readInto = ref.readInto.bind(ref);
    source.readInto = async (start: number, end: number, into: Uint8Array) => {
      const whole = rowBytes > 0 && start % rowBytes === 0 && end % rowBytes === 0 &&
        start >= 0 && start <= end && end <= total && into.byteLength >= end - start;
      if (!whole) return await source.read(start, end);
      return await readInto(start / rowBytes, end / rowBytes, into);
    };
  }
  const storage = new TorchStorage(ref.dtype, n, source);
  return new TorchTensor(storage, ref.shape, {
    source: ref.source ?? "memory",
    requiresGrad: options.requiresGrad ?? (ref instanceof TorchTensor ? ref.requiresGrad : false),
    parameter: options.parameter ?? (ref instanceof TorchTensor ? ref.parameter : false),
  });
}

/** A contiguous tensor over in-memory little-endian bytes. */
export function tensorOfBytes(
  dtype: DType,
  shape: readonly number[],
  bytes: Uint8Array,
): TorchTensor {
  const n = numel(shape);
  if (bytes.byteLength !== n * DTYPES[dtype].size) {
    throw new CkptError(
      "TENSOR_SIZE",
      `Cannot wrap bytes as ${dtype}[${shape.join(", ")}]: got ${bytes.byteLength} bytes, need ${
        n * DTYPES[dtype].size
      }`,
    );
  }
  return new TorchTensor(new TorchStorage(dtype, n, bytesSource(bytes)), shape);
}
