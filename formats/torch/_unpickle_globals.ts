/**
 * The unpickler's allowlist: the module-level names torch 2.6's `weights_only=True` loader accepts
 * for state dicts (tensor rebuild functions, storage classes, dtypes, layouts, ...), split into
 * values (a bare global) and functions (callable by `REDUCE`).
 * @module
 */
import { CkptError } from "../../errors.ts";
import type { DType } from "../dtype.ts";

const DTYPE_NAMES = [
  "float32",
  "float",
  "float64",
  "double",
  "float16",
  "half",
  "bfloat16",
  "uint8",
  "int8",
  "int16",
  "short",
  "int32",
  "int",
  "int64",
  "long",
  "bool",
  "complex64",
  "cfloat",
  "complex128",
  "cdouble",
  "complex32",
  "chalf",
  "float8_e4m3fn",
  "float8_e5m2",
  "float8_e4m3fnuz",
  "float8_e5m2fnuz",
  "uint16",
  "uint32",
  "uint64",
  "qint8",
  "quint8",
  "qint32",
  "quint4x2",
  "quint2x4",
  "bits1x8",
  "bits2x4",
  "bits4x2",
  "bits8",
  "bits16",
];
const TYPED_STORAGES: Record<string, DType | null> = {
  FloatStorage: "F32",
  DoubleStorage: "F64",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  CharStorage: "I8",
  ByteStorage: "U8",
  ShortStorage: "I16",
  IntStorage: "I32",
  LongStorage: "I64",
  BoolStorage: "BOOL",
  ComplexFloatStorage: null,
  ComplexDoubleStorage: null,
  QInt8Storage: null,
  QUInt8Storage: null,
  QInt32Storage: null,
  QUInt4x2Storage: null,
  QUInt2x4Storage: null,
};
const TENSOR_TYPES = [
  "FloatTensor",
  "DoubleTensor",
  "HalfTensor",
  "BFloat16Tensor",
  "CharTensor",
  "ByteTensor",
  "ShortTensor",
  "IntTensor",
  "LongTensor",
  "BoolTensor",
];
const QSCHEMES = [
  "per_tensor_affine",
  "per_channel_affine",
  "per_tensor_symmetric",
  "per_channel_symmetric",
  "per_channel_affine_float_qparams",
];
export const UNIMPLEMENTED = [
  "torch._utils._rebuild_qtensor",
  "torch._utils._rebuild_sparse_tensor",
  "torch._utils._rebuild_nested_tensor",
  "torch._utils._rebuild_wrapper_subclass",
  "torch._utils._rebuild_device_tensor_from_numpy",
  "torch._utils._rebuild_device_tensor_from_cpu_tensor",
];

/** `module.name` -> kind, for every global the weights-only allowlist accepts. */
const VALUE_GLOBALS = new Set<string>([
  ...DTYPE_NAMES.map((n) => `torch.${n}`),
  ...TENSOR_TYPES.flatMap((n) => [`torch.${n}`, `torch.cuda.${n}`]),
  ...QSCHEMES.map((n) => `torch.${n}`),
  "torch.Tensor",
  "torch.storage.TypedStorage",
  "torch.storage.UntypedStorage",
  "torch.UntypedStorage",
  ...Object.keys(TYPED_STORAGES).flatMap((n) => [`torch.${n}`, `torch.cuda.${n}`]),
]);
export const FUNCTION_GLOBALS = new Set<string>([
  "collections.OrderedDict",
  "collections.Counter",
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_tensor_v3",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
  "torch._utils._rebuild_meta_tensor_no_storage",
  "torch._tensor._rebuild_from_type_v2",
  "torch.nn.parameter.Parameter",
  "torch.Size",
  "torch.device",
  "torch.serialization._get_layout",
  "_codecs.encode",
  "builtins.bytearray",
  "builtins.set",
  "builtins.complex",
  ...UNIMPLEMENTED,
]);
export const PY2_MODULES: Record<string, string> = { __builtin__: "builtins", copy_reg: "copyreg" };

/** True when `module.name` is on the weights-only allowlist (torch 2.6, state dicts). */
export function isAllowedGlobal(qualname: string): boolean {
  return VALUE_GLOBALS.has(qualname) || FUNCTION_GLOBALS.has(qualname);
}

/** The dtype a storage class names (`torch.BFloat16Storage` -> `BF16`), undefined for `UntypedStorage`. */
export function storageClassDType(qualname: string): DType | undefined {
  if (qualname === "torch.storage.UntypedStorage" || qualname === "torch.UntypedStorage") {
    return undefined;
  }
  const name = qualname.replace(/^torch\.(cuda\.)?/, "");
  const d = TYPED_STORAGES[name];
  if (d === undefined || !qualname.startsWith("torch.")) {
    throw new CkptError(
      "PICKLE_PERSID",
      `Cannot load storage: "${qualname}" is not a storage class`,
    );
  }
  if (d === null) {
    throw new CkptError(
      "PICKLE_UNSUPPORTED",
      `Cannot load storage: "${qualname}" (complex or quantized) is not supported`,
    );
  }
  return d;
}
