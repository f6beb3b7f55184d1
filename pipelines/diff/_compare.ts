/**
 * Element-wise comparison of two tensors, block by block: {@linkcode TensorComparer} takes row
 * blocks of A and B (any dtypes, same element count) and accumulates, in float64, what `ckpt diff`
 * reports per tensor: differing elements (the first one with its values), max |A−B| and where,
 * max distance in ulps of the wider dtype, ‖A‖², ‖B‖², ‖A−B‖² and A·B. Private to
 * `pipelines/diff/`.
 * @module
 */
import {
  decodeF32,
  type DType,
  DTYPES,
  f32ToF16,
  f32ToF8e4m3,
  f32ToF8e5m2,
  isFloatDType,
} from "../../formats/dtype.ts";

/**
 * The dtype whose ulps measure a difference between `a` and `b`: the one that holds every value of
 * the other (F8 < F16, BF16 < F32 < F64), F32 for BF16 against F16 (neither holds the other), and
 * `"int"` (ulp = 1) when both are integer dtypes; F64 when one is an integer dtype and the other
 * a float.
 */
export function ulpDType(a: DType, b: DType): DType | "int" {
  const fa = isFloatDType(a), fb = isFloatDType(b);
  if (!fa && !fb) return "int";
  if (!fa || !fb) return "F64";
  if (a === b) return a;
  if (holds(a, b)) return a;
  if (holds(b, a)) return b;
  return "F32";
}

const HOLDS: Record<string, readonly DType[]> = {
  F64: ["F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"],
  F32: ["BF16", "F16", "F8_E4M3", "F8_E5M2"],
  BF16: ["F8_E4M3", "F8_E5M2"],
  F16: ["F8_E4M3", "F8_E5M2"],
};

function holds(wide: DType, narrow: DType): boolean {
  return HOLDS[wide]?.includes(narrow) ?? false;
}

const f32 = new Float32Array(1);
const i32 = new Int32Array(f32.buffer);
const f64 = new Float64Array(1);
const i64 = new BigInt64Array(f64.buffer);

/** Position of a float32 value on the line of all float32 values (−0 and +0 both at 0). */
function orderF32(x: number): number {
  f32[0] = x;
  const i = i32[0]!;
  return i < 0 ? -(i & 0x7fffffff) : i;
}

/** Position of a 16- or 8-bit float's bits (sign in the top bit of `width`) on its value line. */
function orderBits(bits: number, width: number): number {
  const sign = 1 << (width - 1);
  return bits & sign ? -(bits & (sign - 1)) : bits;
}

function orderF64(x: number): bigint {
  f64[0] = x;
  const i = i64[0]!;
  return i < 0n ? -(i & 0x7fffffffffffffffn) : i;
}

/**
 * How many values of dtype `w` lie between `a` and `b` (both values of `w`, neither NaN): 0 for
 * equal values (and for −0 against +0), 1 for neighbours; across zero the two sides add up.
 */
export function ulpDistance(w: DType | "int", a: number, b: number): number {
  switch (w) {
    case "F32":
      return Math.abs(orderF32(a) - orderF32(b));
    case "BF16":
      return Math.abs(orderF32(a) - orderF32(b)) / 65536;
    case "F16":
      return Math.abs(orderBits(f32ToF16(a), 16) - orderBits(f32ToF16(b), 16));
    case "F8_E4M3":
      return Math.abs(orderBits(f32ToF8e4m3(a), 8) - orderBits(f32ToF8e4m3(b), 8));
    case "F8_E5M2":
      return Math.abs(orderBits(f32ToF8e5m2(a), 8) - orderBits(f32ToF8e5m2(b), 8));
    case "F64": {
      const d = orderF64(a) - orderF64(b);
      return Number(d < 0n ? -d : d);
    }
    default:
      return Math.abs(a - b);
  }
}

/** The values of `bytes` (little-endian `dtype`) as float64, exact for every dtype but huge I64. */
export function decodeF64(dtype: DType, bytes: Uint8Array): Float64Array {
  const size = DTYPES[dtype].size;
  const n = bytes.byteLength / size;
  const src = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const out = new Float64Array(n);
  switch (dtype) {
    case "F64":
      out.set(new Float64Array(src.buffer, src.byteOffset, n));
      break;
    case "BOOL":
    case "U8":
      out.set(src);
      break;
    case "I8":
      out.set(new Int8Array(src.buffer, src.byteOffset, n));
      break;
    case "I16":
      out.set(new Int16Array(src.buffer, src.byteOffset, n));
      break;
    case "I32":
      out.set(new Int32Array(src.buffer, src.byteOffset, n));
      break;
    case "I64": {
      const s = new BigInt64Array(src.buffer, src.byteOffset, n);
      for (let i = 0; i < n; i++) out[i] = Number(s[i]!);
      break;
    }
    default:
      out.set(decodeF32(dtype, src));
  }
  return out;
}

/** Elements compared per chunk. */
const CHUNK = 16384;
const SCRATCH_A32 = new Float32Array(CHUNK);
const SCRATCH_B32 = new Float32Array(CHUNK);
const SCRATCH_A64 = new Float64Array(CHUNK);
const SCRATCH_B64 = new Float64Array(CHUNK);

/**
 * One chunk's values: 16- and 8-bit floats and F32 into `f32` (exact), F64 and integer dtypes into
 * `f64` (exact but for I64 beyond 2^53).
 */
function decodeChunk(
  dtype: DType,
  bytes: Uint8Array,
  f32: Float32Array,
  f64: Float64Array,
): Float32Array | Float64Array {
  if (isFloatDType(dtype) && dtype !== "F64") return decodeF32(dtype, bytes, f32);
  const v = decodeF64(dtype, bytes);
  f64.set(v);
  return f64.subarray(0, v.length);
}

/** What {@linkcode TensorComparer} has gathered. */
export interface ComparedFigures {
  /** Elements compared. */
  numel: number;
  /** Elements whose values differ (NaN against NaN counts as equal, −0 against +0 too). */
  differing: number;
  /** Elements where exactly one side is NaN. */
  nanMismatch: number;
  /** Largest |A−B| over elements where neither side is NaN (0 when none differ). */
  maxAbs: number;
  /** Flat index of that element (−1 when none differ). */
  maxAbsIndex: number;
  /** Largest distance in ulps of {@linkcode ulpDType} (Infinity when a NaN meets a number). */
  maxUlp: number;
  /** The first differing element: flat index and both values (absent when none differ). */
  first?: { index: number; a: number; b: number };
  /** Sums over elements where neither side is NaN, in float64. */
  sumSqA: number;
  /** ‖B‖². */
  sumSqB: number;
  /** ‖A−B‖². */
  sumSqDiff: number;
  /** A·B. */
  dot: number;
}

/**
 * Accumulates {@linkcode ComparedFigures} over consecutive blocks of two tensors.
 *
 * @example Two blocks, one differing element
 * ```ts
 * import { TensorComparer } from "./_compare.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = (v: number[]) => new Uint8Array(new Float32Array(v).buffer);
 * const c = new TensorComparer("F32", "F32");
 * c.add(bytes([1, 2]), bytes([1, 2]));
 * c.add(bytes([3, 4]), bytes([3, 5]));
 * assert.equal(c.figures.differing, 1);
 * assert.equal(c.figures.maxAbsIndex, 3);
 * assert.equal(c.figures.maxAbs, 1);
 * ```
 */
export class TensorComparer {
  readonly #a: DType;
  readonly #b: DType;
  readonly #w: DType | "int";
  readonly #exactI64: boolean;
  /** The figures so far. */
  readonly figures: ComparedFigures = {
    numel: 0,
    differing: 0,
    nanMismatch: 0,
    maxAbs: 0,
    maxAbsIndex: -1,
    maxUlp: 0,
    sumSqA: 0,
    sumSqB: 0,
    sumSqDiff: 0,
    dot: 0,
  };

  /** A comparer of an `a`-typed tensor against a `b`-typed one. */
  constructor(a: DType, b: DType) {
    this.#a = a;
    this.#b = b;
    this.#w = ulpDType(a, b);
    this.#exactI64 = a === "I64" && b === "I64";
  }

  /** Adds the next block: `a` and `b` hold the same number of elements, following the last block. */
  add(a: Uint8Array, b: Uint8Array): void {
    const sa = DTYPES[this.#a].size, sb = DTYPES[this.#b].size;
    const n = a.byteLength / sa;
    if (b.byteLength / sb !== n) {
      throw new RangeError(`Cannot compare blocks of ${n} and ${b.byteLength / sb} elements`);
    }
    // Chunks decoded into two reused buffers: no allocation that grows with the block.
    for (let c = 0; c < n; c += CHUNK) {
      const m = Math.min(CHUNK, n - c);
      const ca = a.subarray(c * sa, (c + m) * sa), cb = b.subarray(c * sb, (c + m) * sb);
      const va = decodeChunk(this.#a, ca, SCRATCH_A32, SCRATCH_A64);
      const vb = decodeChunk(this.#b, cb, SCRATCH_B32, SCRATCH_B64);
      const big = this.#exactI64 ? [bigView(ca), bigView(cb)] as const : undefined;
      this.#compare(va, vb, m, big);
    }
  }

  #compare(
    va: Float32Array | Float64Array,
    vb: Float32Array | Float64Array,
    m: number,
    big: readonly [BigInt64Array, BigInt64Array] | undefined,
  ): void {
    const f = this.figures;
    const base = f.numel;
    let sumSqA = 0, sumSqB = 0, sumSqDiff = 0, dot = 0;
    for (let i = 0; i < m; i++) {
      const x = va[i]!, y = vb[i]!;
      if (x !== x || y !== y) { // NaN on one side or both
        if (x === x || y === y) {
          f.nanMismatch++;
          this.#differs(base + i, x, y, -1, Infinity);
        }
        continue;
      }
      const d = x - y;
      sumSqA += x * x;
      sumSqB += y * y;
      sumSqDiff += d * d;
      dot += x * y;
      if (x === y && (big === undefined || big[0][i] === big[1][i])) continue;
      this.#differs(base + i, x, y, Math.abs(d), ulpDistance(this.#w, x, y));
    }
    f.sumSqA += sumSqA;
    f.sumSqB += sumSqB;
    f.sumSqDiff += sumSqDiff;
    f.dot += dot;
    f.numel += m;
  }

  #differs(index: number, a: number, b: number, abs: number, ulp: number): void {
    const f = this.figures;
    f.differing++;
    if (f.first === undefined) f.first = { index, a, b };
    if (abs >= 0 && (abs > f.maxAbs || f.maxAbsIndex < 0)) {
      f.maxAbs = abs;
      f.maxAbsIndex = index;
    }
    if (ulp > f.maxUlp) f.maxUlp = ulp;
  }
}

function bigView(bytes: Uint8Array): BigInt64Array {
  const src = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  return new BigInt64Array(src.buffer, src.byteOffset, src.byteLength / 8);
}
