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

/** Every dtype ckpt reads and writes, in safetensors' alignment order. */
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
