/**
 * The one dtype table of ckpt: byte sizes and the names safetensors and torch use, plus exact
 * conversions between the 16- and 8-bit float formats and f32 (round-to-nearest-even).
 *
 * @example Looking a dtype up
 * ```ts
 * import { DTYPES, dtypeFromTorch } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(DTYPES.BF16.size, 2);
 * assert.equal(dtypeFromTorch("torch.float32"), "F32");
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import {
  bf16FromBits,
  f16FromBits,
  f16ToF32Table,
  f32Bits,
  f32FromBits,
  f8e4m3FromBits,
  f8e5m2FromBits,
  f8Table,
} from "./_float_bits.ts";

/** A dtype by its safetensors name. */
export type DType =
  | "BOOL"
  | "U8"
  | "I8"
  | "F8_E5M2"
  | "F8_E4M3"
  | "I16"
  | "F16"
  | "BF16"
  | "I32"
  | "F32"
  | "I64"
  | "F64";

/** One row of the dtype table. */
export interface DTypeInfo {
  /** safetensors name, e.g. `"BF16"`. */
  readonly name: DType;
  /** Bytes per element. */
  readonly size: number;
  /** torch name, e.g. `"torch.bfloat16"`; the attribute after `torch.` is what pickles carry. */
  readonly torch: string;
  /** Legacy typed storage class (`torch.BFloat16Storage`) or `undefined` for dtypes torch writes with
   * `UntypedStorage` (`_rebuild_tensor_v3`). */
  readonly storage: string | undefined;
  /** True for floating-point dtypes. */
  readonly float: boolean;
}

/** Every dtype ckpt reads and writes, by element size (the safetensors writer has its own order). */
export const DTYPES: Readonly<Record<DType, DTypeInfo>> = {
  BOOL: { name: "BOOL", size: 1, torch: "torch.bool", storage: "BoolStorage", float: false },
  U8: { name: "U8", size: 1, torch: "torch.uint8", storage: "ByteStorage", float: false },
  I8: { name: "I8", size: 1, torch: "torch.int8", storage: "CharStorage", float: false },
  F8_E5M2: {
    name: "F8_E5M2",
    size: 1,
    torch: "torch.float8_e5m2",
    storage: undefined,
    float: true,
  },
  F8_E4M3: {
    name: "F8_E4M3",
    size: 1,
    torch: "torch.float8_e4m3fn",
    storage: undefined,
    float: true,
  },
  I16: { name: "I16", size: 2, torch: "torch.int16", storage: "ShortStorage", float: false },
  F16: { name: "F16", size: 2, torch: "torch.float16", storage: "HalfStorage", float: true },
  BF16: { name: "BF16", size: 2, torch: "torch.bfloat16", storage: "BFloat16Storage", float: true },
  I32: { name: "I32", size: 4, torch: "torch.int32", storage: "IntStorage", float: false },
  F32: { name: "F32", size: 4, torch: "torch.float32", storage: "FloatStorage", float: true },
  I64: { name: "I64", size: 8, torch: "torch.int64", storage: "LongStorage", float: false },
  F64: { name: "F64", size: 8, torch: "torch.float64", storage: "DoubleStorage", float: true },
};

/** All dtype names. */
export const DTYPE_NAMES: readonly DType[] = Object.keys(DTYPES) as DType[];

/** True when `name` is a dtype ckpt knows. */
export function isDType(name: unknown): name is DType {
  return typeof name === "string" && Object.hasOwn(DTYPES, name);
}

/** The dtype of a torch name (`"torch.float16"` or `"float16"`), or a `DTYPE_UNKNOWN` error. */
export function dtypeFromTorch(torchName: string): DType {
  const full = torchName.startsWith("torch.") ? torchName : `torch.${torchName}`;
  for (const info of Object.values(DTYPES)) if (info.torch === full) return info.name;
  const aliases: Record<string, DType> = {
    "torch.half": "F16",
    "torch.float": "F32",
    "torch.double": "F64",
    "torch.long": "I64",
    "torch.int": "I32",
    "torch.short": "I16",
  };
  const alias = aliases[full];
  if (alias) return alias;
  throw new CkptError("DTYPE_UNKNOWN", `Cannot map torch dtype: "${torchName}" is not supported`);
}

/** Parses user-facing dtype spellings (`bf16`, `bfloat16`, `BF16`, `torch.bfloat16`, `float32`). */
export function parseDType(spelling: string): DType {
  const s = spelling.trim();
  if (isDType(s.toUpperCase())) return s.toUpperCase() as DType;
  const short: Record<string, DType> = {
    bf16: "BF16",
    fp16: "F16",
    fp32: "F32",
    fp64: "F64",
    f16: "F16",
    f32: "F32",
    f64: "F64",
  };
  const hit = short[s.toLowerCase()];
  if (hit) return hit;
  return dtypeFromTorch(s);
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions: RNE with torch 2.6's NaN/Inf/overflow rules (`formats/_float_bits.ts`).

/**
 * The f32 value of bf16 bits (exact: bf16 is the top half of an f32).
 *
 * @example
 * ```ts
 * import { bf16ToF32 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(bf16ToF32(0x3f80), 1);
 * assert.equal(bf16ToF32(0xff80), -Infinity);
 * ```
 */
export function bf16ToF32(bits: number): number {
  return f32FromBits((bits & 0xffff) << 16);
}

/**
 * bf16 bits of `x` (rounded to f32 first), round-to-nearest-even; NaN gives 0xFFFF like torch.
 *
 * @example
 * ```ts
 * import { f32ToBf16 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(f32ToBf16(1), 0x3f80);
 * assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80); // tie rounds to even
 * ```
 */
export function f32ToBf16(x: number): number {
  return bf16FromBits(f32Bits(x));
}

/**
 * The f32 value of IEEE binary16 bits (exact, subnormals included).
 *
 * @example
 * ```ts
 * import { f16ToF32 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(f16ToF32(0x3c00), 1);
 * assert.equal(f16ToF32(0x0001), 2 ** -24);
 * ```
 */
export function f16ToF32(bits: number): number {
  return f32FromBits(f16ToF32Table()[bits & 0xffff]!);
}

/**
 * binary16 bits of `x` (rounded to f32 first), round-to-nearest-even, subnormals, overflow to Inf,
 * NaN kept quiet with its sign and top payload bits.
 *
 * @example
 * ```ts
 * import { f32ToF16 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(f32ToF16(1), 0x3c00);
 * assert.equal(f32ToF16(65520), 0x7c00); // rounds up to Inf
 * ```
 */
export function f32ToF16(x: number): number {
  return f16FromBits(f32Bits(x));
}

/**
 * The f32 value of float8_e4m3fn bits (no Inf; S.1111.111 is NaN).
 *
 * @example
 * ```ts
 * import { f8e4m3ToF32 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(f8e4m3ToF32(0x7e), 448);
 * assert.ok(Number.isNaN(f8e4m3ToF32(0x7f)));
 * ```
 */
export function f8e4m3ToF32(bits: number): number {
  return f32FromBits(f8Table(true)[bits & 0xff]!);
}

/**
 * float8_e4m3fn bits of `x`, as torch casts: RNE, subnormals, and anything that rounds above 448
 * (Inf and NaN included) becomes NaN with the sign of `x`.
 *
 * @example
 * ```ts
 * import { f32ToF8e4m3 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(f32ToF8e4m3(448), 0x7e);
 * assert.equal(f32ToF8e4m3(-1000), 0xff);
 * ```
 */
export function f32ToF8e4m3(x: number): number {
  return f8e4m3FromBits(f32Bits(x));
}

/**
 * The f32 value of float8_e5m2 bits (IEEE-like: Inf and NaN exist).
 *
 * @example
 * ```ts
 * import { f8e5m2ToF32 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(f8e5m2ToF32(0x7b), 57344);
 * assert.equal(f8e5m2ToF32(0x7c), Infinity);
 * ```
 */
export function f8e5m2ToF32(bits: number): number {
  return f32FromBits(f8Table(false)[bits & 0xff]!);
}

/**
 * float8_e5m2 bits of `x`, as torch casts: RNE, subnormals, overflow to Inf, NaN -> sign | 0x7F.
 *
 * @example
 * ```ts
 * import { f32ToF8e5m2 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(f32ToF8e5m2(1), 0x3c);
 * assert.equal(f32ToF8e5m2(1e6), 0x7c);
 * ```
 */
export function f32ToF8e5m2(x: number): number {
  return f8e5m2FromBits(f32Bits(x));
}

/** Float dtypes {@linkcode decodeF32} and {@linkcode encodeF32} handle. */
export type FloatDType = "BF16" | "F16" | "F32" | "F64" | "F8_E4M3" | "F8_E5M2";

/** True when `dtype` is a float dtype ({@linkcode FloatDType}). */
export function isFloatDType(dtype: DType): dtype is FloatDType {
  return DTYPES[dtype].float;
}

function requireFloat(dtype: DType, action: string): void {
  if (!isFloatDType(dtype)) {
    throw new CkptError(
      "DTYPE_NOT_FLOAT",
      `Cannot ${action}: ${dtype} is not a float dtype (BF16, F16, F32, F64, F8_E4M3, F8_E5M2)`,
    );
  }
}

/** `bytes` as-is when its offset is a multiple of `align`, else an aligned copy. */
function aligned(bytes: Uint8Array, align: number): Uint8Array {
  return bytes.byteOffset % align === 0 ? bytes : bytes.slice();
}

/**
 * Decodes little-endian `dtype` bytes into f32 values (exact for BF16, F16, F8; F64 rounds to
 * nearest even). Writes into `out` when given (at least `bytes.length / size` elements) and
 * returns the filled view. Unaligned input is copied first. `DTYPE_NOT_FLOAT` for integer dtypes,
 * `TENSOR_SIZE` when the byte count is not a multiple of the element size or `out` is too short.
 *
 * @example Decoding bf16 bytes
 * ```ts
 * import { decodeF32 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = new Uint8Array(new Uint16Array([0x3f80, 0xc000]).buffer);
 * assert.deepEqual([...decodeF32("BF16", bytes)], [1, -2]);
 * ```
 */
export function decodeF32(dtype: DType, bytes: Uint8Array, out?: Float32Array): Float32Array {
  requireFloat(dtype, "decode to f32");
  const size = DTYPES[dtype].size;
  if (bytes.byteLength % size !== 0) {
    throw new CkptError(
      "TENSOR_SIZE",
      `Cannot decode ${dtype}: ${bytes.byteLength} bytes is not a multiple of ${size}`,
    );
  }
  const n = bytes.byteLength / size;
  if (out && out.length < n) {
    throw new CkptError(
      "TENSOR_SIZE",
      `Cannot decode ${n} ${dtype} values into an array of ${out.length}`,
    );
  }
  const dst = out ? out.subarray(0, n) : new Float32Array(n);
  const src = aligned(bytes, size);
  switch (dtype as FloatDType) {
    case "F32":
      new Uint8Array(dst.buffer, dst.byteOffset, n * 4).set(src);
      break;
    case "F64": {
      const s = new Float64Array(src.buffer, src.byteOffset, n);
      for (let i = 0; i < n; i++) dst[i] = s[i]!;
      break;
    }
    case "BF16": {
      const s = new Uint16Array(src.buffer, src.byteOffset, n);
      const d = new Uint32Array(dst.buffer, dst.byteOffset, n);
      for (let i = 0; i < n; i++) d[i] = s[i]! << 16;
      break;
    }
    case "F16": {
      const t = f16ToF32Table();
      const s = new Uint16Array(src.buffer, src.byteOffset, n);
      const d = new Uint32Array(dst.buffer, dst.byteOffset, n);
      for (let i = 0; i < n; i++) d[i] = t[s[i]!]!;
      break;
    }
    case "F8_E4M3":
    case "F8_E5M2": {
      const t = f8Table(dtype === "F8_E4M3");
      const d = new Uint32Array(dst.buffer, dst.byteOffset, n);
      for (let i = 0; i < n; i++) d[i] = t[src[i]!]!;
      break;
    }
  }
  return dst;
}

/**
 * Encodes f32 values as little-endian `dtype` bytes, rounding to nearest even with torch's
 * NaN/Inf/overflow rules (see the scalar encoders). Writes into `out` when given (at least
 * `src.length * size` bytes) and returns the filled view. `DTYPE_NOT_FLOAT` for integer dtypes.
 *
 * @example Encoding to f16
 * ```ts
 * import { encodeF32 } from "./dtype.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = encodeF32("F16", new Float32Array([1, -2]));
 * assert.deepEqual([...new Uint16Array(bytes.buffer, bytes.byteOffset, 2)], [0x3c00, 0xc000]);
 * ```
 */
export function encodeF32(dtype: DType, src: Float32Array, out?: Uint8Array): Uint8Array {
  requireFloat(dtype, "encode from f32");
  const size = DTYPES[dtype].size;
  const n = src.length;
  if (out && out.byteLength < n * size) {
    throw new CkptError(
      "TENSOR_SIZE",
      `Cannot encode ${n} values as ${dtype} into ${out.byteLength} bytes`,
    );
  }
  const target = out ? out.subarray(0, n * size) : new Uint8Array(n * size);
  const dst = target.byteOffset % size === 0 ? target : new Uint8Array(n * size);
  const u = new Int32Array(src.buffer, src.byteOffset, n); // int32 keeps the bit math in small ints
  switch (dtype as FloatDType) {
    case "F32":
      dst.set(new Uint8Array(src.buffer, src.byteOffset, n * 4));
      break;
    case "F64": {
      const d = new Float64Array(dst.buffer, dst.byteOffset, n);
      for (let i = 0; i < n; i++) d[i] = src[i]!;
      break;
    }
    case "BF16": {
      const d = new Uint16Array(dst.buffer, dst.byteOffset, n);
      for (let i = 0; i < n; i++) {
        const x = u[i]!;
        d[i] = (x & 0x7fffffff) > 0x7f800000 ? 0xffff : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
      }
      break;
    }
    case "F16": {
      const d = new Uint16Array(dst.buffer, dst.byteOffset, n);
      for (let i = 0; i < n; i++) {
        const x = u[i]!;
        const a = x & 0x7fffffff;
        // Normal results inline (the hot case); the rest through the scalar encoder.
        d[i] = a >= 0x38800000 && a < 0x47800000
          ? ((x >>> 16) & 0x8000) | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13)
          : f16FromBits(x >>> 0);
      }
      break;
    }
    case "F8_E4M3":
      for (let i = 0; i < n; i++) {
        const x = u[i]!;
        const a = x & 0x7fffffff;
        dst[i] = a >= 0x3c800000 && a < 0x43f00000
          ? ((x >>> 24) & 0x80) | ((a - 0x3c000000 + 0x7ffff + ((a >>> 20) & 1)) >>> 20)
          : f8e4m3FromBits(x >>> 0);
      }
      break;
    case "F8_E5M2":
      for (let i = 0; i < n; i++) {
        const x = u[i]!;
        const a = x & 0x7fffffff;
        dst[i] = a >= 0x38800000 && a < 0x47800000
          ? ((x >>> 24) & 0x80) | ((a - 0x38000000 + 0xfffff + ((a >>> 21) & 1)) >>> 21)
          : f8e5m2FromBits(x >>> 0);
      }
      break;
  }
  if (dst !== target) target.set(dst);
  return target;
}
