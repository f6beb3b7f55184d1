/**
 * A restricted pickle machine: reads pickles of protocols 2 to 5 into the value model of
 * {@linkcode ./values.ts}, running nothing. Module-level names (`GLOBAL`, `STACK_GLOBAL`, `INST`)
 * resolve only from an allowlist equal to what torch 2.6's `weights_only=True` loader accepts for
 * state dicts (tensor rebuild functions, storage classes, `collections.OrderedDict`, `torch.Size`,
 * dtypes, `torch.device`, layouts, `_codecs.encode`, `set`/`bytearray`/`complex`), plus, in records
 * mode, an explicit list of classes that become inert {@linkcode PyRecord}s (DCP metadata).
 * Every other name stops the machine with `PICKLE_GLOBAL` naming `module.name` and the byte offset.
 *
 * Records mode (`options.records`, for DCP `.metadata`): the listed classes are allowed as globals
 * and never run. `NEWOBJ(cls, args)`, `NEWOBJ_EX`, `REDUCE(cls, args)`, `INST` and `OBJ` make a
 * {@linkcode PyRecord} `{className, args, state}`; `BUILD` sets `state` (dict states merge). So:
 * a dataclass is `PyRecord(cls, [], PyDict{field: value})` (read with `record.field("name")`);
 * `TensorProperties` (custom `__getstate__`) has a 5-tuple `state`; an enum member
 * (`_MEM_FORMAT_ENCODING(0)`) is `PyRecord(cls, [0])`; a namedtuple is `PyRecord(cls, [a, b])`;
 * `torch.Size((2, 3))` is a {@linkcode PyTuple} with `kind: "torch.Size"`; `torch.float32` is a
 * {@linkcode PyGlobal} (`qualname` `"torch.float32"`); `_get_layout("torch.strided")` is the
 * {@linkcode PyGlobal} `torch.strided`; records may be dict keys (DCP `MetadataIndex`, by identity).
 * `toJSONish` shows a record as `{__class__: "m.C", args?, ...dict state | state}`.
 *
 * Error codes: `PICKLE_TRUNCATED` (ran out of bytes), `PICKLE_OPCODE` (unknown or unsupported
 * opcode), `PICKLE_EXT` (extension registry opcodes), `PICKLE_GLOBAL` (name not allowed),
 * `PICKLE_REDUCE` (call/instantiation of something not callable here), `PICKLE_BUILD` (`BUILD` on
 * something that takes no state), `PICKLE_ARGS` (bad arguments to an allowed function),
 * `PICKLE_STACK` (stack or mark underflow), `PICKLE_MALFORMED` (wrong types, unhashable keys, bad
 * UTF-8, cycles), `PICKLE_MEMO` (missing memo entry), `PICKLE_LIMIT` (stack, memo, depth or int
 * size over the limits), `PICKLE_PERSID` (persistent id refused), `PICKLE_UNSUPPORTED` (an allowed
 * but unimplemented torch rebuild such as quantized or sparse tensors).
 *
 * @example Reading a protocol-2 pickle of `{'a': (1, 2.5)}`
 * ```ts
 * import { unpickle } from "./unpickle.ts";
 * import { PyDict, PyTuple } from "./values.ts";
 * import assert from "node:assert/strict";
 *
 * // \x80\x02 } q\x00 X\x01\x00\x00\x00a K\x01 G@\x04\x00.. \x86 s .
 * const bytes = new Uint8Array([0x80, 2, 0x7d, 0x58, 1, 0, 0, 0, 0x61, 0x4b, 1, 0x47, 0x40, 4, 0, 0, 0, 0, 0, 0, 0x86, 0x73, 0x2e]);
 * const value = unpickle(bytes) as PyDict;
 * const t = value.get("a") as PyTuple;
 * assert.deepEqual(t.items, [1, 2.5]);
 * ```
 *
 * @example A disallowed global is refused, naming it
 * ```ts
 * import { unpickle } from "./unpickle.ts";
 * import { isCkptError } from "../../errors.ts";
 * import assert from "node:assert/strict";
 *
 * const evil = Uint8Array.from("\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.", (c) => c.charCodeAt(0));
 * assert.throws(() => unpickle(evil), (e) => isCkptError(e, "PICKLE_GLOBAL") && e.message.includes("os.system"));
 * ```
 * @module
 */
import { CkptError, type ErrorCode } from "../../errors.ts";
import { type DType, dtypeFromTorch, DTYPES } from "../dtype.ts";
import {
  PyDict,
  PyFloat,
  PyGlobal,
  type PyKey,
  PyRecord,
  PyTuple,
  pyTypeName,
  type PyValue,
  type StorageSource,
  TorchStorage,
  TorchTensor,
} from "./values.ts";

/**
 * What a persistent id (`BINPERSID`) resolved to: a storage whose dtype may only be known when a
 * rebuild function uses it (`UntypedStorage` + `_rebuild_tensor_v3`). {@linkcode StorageHandle.typed}
 * returns one {@linkcode TorchStorage} per dtype, cached, so views of one storage share it.
 */
export class StorageHandle {
  /** Record key (`"0"`). */
  readonly key: string;
  /** Storage class as `module.name` (`torch.FloatStorage`, `torch.storage.UntypedStorage`). */
  readonly storageClass: string;
  /** Location (`"cpu"`). */
  readonly location: string;
  /** Count from the persistent id: elements for typed storages, bytes for `UntypedStorage`. */
  readonly numel: number;
  /** dtype of a typed storage class, undefined for untyped ones. */
  readonly dtype: DType | undefined;
  /** The bytes (a zip record). */
  readonly source: StorageSource;
  /** File name for errors. */
  readonly file: string;
  #typed = new Map<DType, TorchStorage>();
  /** Creates a handle; checks that the source holds the bytes the id claims (`TORCH_STORAGE_SIZE`). */
  constructor(
    init: {
      key: string;
      storageClass: string;
      location: string;
      numel: number;
      dtype: DType | undefined;
      source: StorageSource;
      file: string;
    },
  ) {
    this.key = init.key;
    this.storageClass = init.storageClass;
    this.location = init.location;
    this.numel = init.numel;
    this.dtype = init.dtype;
    this.source = init.source;
    this.file = init.file;
    const need = this.dtype === undefined ? this.numel : this.numel * DTYPES[this.dtype].size;
    if (need > this.source.byteLength) {
      throw new CkptError(
        "TORCH_STORAGE_SIZE",
        `Cannot load storage "${this.key}": its id claims ${need} bytes, the record has ${this.source.byteLength}`,
        { file: this.file },
      );
    }
  }
  /** The storage as elements of `dtype` (the handle's own dtype for typed storages). */
  typed(dtype: DType): TorchStorage {
    if (this.dtype !== undefined && this.dtype !== dtype) {
      throw new CkptError(
        "PICKLE_ARGS",
        `Cannot view storage "${this.key}" of ${this.dtype} as ${dtype}`,
        { file: this.file },
      );
    }
    let s = this.#typed.get(dtype);
    if (!s) {
      const item = DTYPES[dtype].size;
      const elems = this.dtype === undefined ? Math.floor(this.numel / item) : this.numel;
      s = new TorchStorage(dtype, elems, this.source, { location: this.location, key: this.key });
      this.#typed.set(dtype, s);
    }
    return s;
  }
}

/** Options of {@linkcode unpickle}. */
export interface UnpickleOptions {
  /** File name for error messages. */
  file?: string;
  /**
   * Records mode: classes (`"module.Name"`) or a predicate; a `GLOBAL` of one of them is allowed,
   * and calling it (`REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST`, `OBJ`) makes a {@linkcode PyRecord} of
   * the arguments, `BUILD` sets its state. Nothing runs. Default: none (weights-only allowlist).
   */
  records?: Iterable<string> | ((qualname: string) => boolean);
  /**
   * Resolves a persistent id (`BINPERSID`/`PERSID`). Gets the id value and the byte offset; returns
   * a {@linkcode StorageHandle} (for torch rebuild functions) or any value. Default: refuse with `PICKLE_PERSID`.
   */
  persistentLoad?: (pid: PyValue, offset: number) => StorageHandle | PyValue;
  /** Maximum nesting depth of the result. Default 1000. */
  maxDepth?: number;
  /** Maximum memo entries. Default: one per byte of input (what a pickle can legitimately make), capped at 10,000,000. */
  maxMemo?: number;
  /** Maximum stack length (values plus marks). Default: one per byte of input, capped at 10,000,000. */
  maxStack?: number;
  /** Maximum byte length of one `LONG4` int. Default 4096. */
  maxLongBytes?: number;
  /**
   * Largest size of the result as a tree, with shared references counted every time they appear
   * (guards consumers against memo bombs: a list holding the same list twice, 60 levels deep).
   * Default 10,000,000.
   */
  maxExpanded?: number;
}

type Item = PyValue | StorageHandle;

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
const UNIMPLEMENTED = [
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
const FUNCTION_GLOBALS = new Set<string>([
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
const PY2_MODULES: Record<string, string> = { __builtin__: "builtins", copy_reg: "copyreg" };

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

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Runs the restricted machine over `bytes` (one pickle, up to its `STOP`) and returns the value.
 * Tensors come back as {@linkcode TorchTensor}s over the storages `persistentLoad` returned.
 */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions = {}): PyValue {
  return new Machine(bytes, options).run();
}

class Machine {
  #b: Uint8Array;
  #dv: DataView;
  #pos = 0;
  #op = 0;
  #stack: Item[] = [];
  #marks: number[] = [];
  #memo = new Map<number, Item>();
  #file: string | undefined;
  #isRecord: (q: string) => boolean;
  #persistentLoad: UnpickleOptions["persistentLoad"];
  #maxDepth: number;
  #maxMemo: number;
  #maxStack: number;
  #maxLong: number;
  #maxExpanded: number;

  constructor(bytes: Uint8Array, o: UnpickleOptions) {
    this.#b = bytes;
    this.#dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#file = o.file;
    const r = o.records;
    if (r === undefined) this.#isRecord = () => false;
    else if (typeof r === "function") this.#isRecord = r;
    else {
      const set = new Set(r);
      this.#isRecord = (q) => set.has(q);
    }
    this.#persistentLoad = o.persistentLoad;
    const cap = Math.min(10_000_000, bytes.byteLength + 16);
    this.#maxDepth = o.maxDepth ?? 1000;
    this.#maxMemo = o.maxMemo ?? cap;
    this.#maxStack = o.maxStack ?? cap;
    this.#maxLong = o.maxLongBytes ?? 4096;
    this.#maxExpanded = o.maxExpanded ?? 10_000_000;
  }

  #err(code: ErrorCode, msg: string, details?: Record<string, unknown>): CkptError {
    return new CkptError(code, `Cannot unpickle: ${msg} (at byte ${this.#op})`, {
      ...(this.#file === undefined ? {} : { file: this.#file }),
      offset: this.#op,
      ...(details === undefined ? {} : { details }),
    });
  }

  #need(n: number): number {
    if (n < 0 || this.#pos + n > this.#b.byteLength) {
      throw this.#err(
        "PICKLE_TRUNCATED",
        `needs ${n} more bytes at byte ${this.#pos}, the pickle has ${this.#b.byteLength}`,
      );
    }
    const p = this.#pos;
    this.#pos += n;
    return p;
  }
  #u8(): number {
    return this.#b[this.#need(1)]!;
  }
  #u16(): number {
    return this.#dv.getUint16(this.#need(2), true);
  }
  #u32(): number {
    return this.#dv.getUint32(this.#need(4), true);
  }
  #u64(): number {
    const p = this.#need(8);
    const v = this.#dv.getBigUint64(p, true);
    if (v > BigInt(this.#b.byteLength)) {
      throw this.#err(
        "PICKLE_TRUNCATED",
        `length ${v} exceeds the pickle's ${this.#b.byteLength} bytes`,
      );
    }
    return Number(v);
  }
  #bytes(n: number): Uint8Array {
    const p = this.#need(n);
    return this.#b.subarray(p, p + n);
  }
  #line(): string {
    const end = this.#b.indexOf(0x0a, this.#pos);
    if (end < 0 || end - this.#pos > 4096) {
      throw this.#err("PICKLE_TRUNCATED", "a text line has no end within 4096 bytes");
    }
    const s = this.#b.subarray(this.#pos, end);
    this.#pos = end + 1;
    return String.fromCharCode(...s);
  }
  #str(n: number): string {
    const b = this.#bytes(n);
    try {
      return utf8.decode(b);
    } catch {
      throw this.#err("PICKLE_MALFORMED", "a string is not valid UTF-8");
    }
  }

  #push(v: Item): void {
    if (this.#stack.length + this.#marks.length >= this.#maxStack) {
      throw this.#err("PICKLE_LIMIT", `stack exceeds ${this.#maxStack} entries`);
    }
    this.#stack.push(v);
  }
  #pop(): Item {
    const base = this.#marks.length > 0 ? this.#marks[this.#marks.length - 1]! : 0;
    if (this.#stack.length <= base) throw this.#err("PICKLE_STACK", "pops from an empty stack");
    return this.#stack.pop()!;
  }
  #top(): Item {
    const base = this.#marks.length > 0 ? this.#marks[this.#marks.length - 1]! : 0;
    if (this.#stack.length <= base) throw this.#err("PICKLE_STACK", "reads an empty stack");
    return this.#stack[this.#stack.length - 1]!;
  }
  #popMark(): Item[] {
    const m = this.#marks.pop();
    if (m === undefined) throw this.#err("PICKLE_STACK", "pops a MARK that was never pushed");
    return this.#stack.splice(m);
  }
  /** Storages travel as values (rebuild arguments); the result check refuses any left over. */
  #value(v: Item): PyValue {
    return v as PyValue;
  }
  #memoPut(idx: number, v: Item): void {
    if (!this.#memo.has(idx) && this.#memo.size >= this.#maxMemo) {
      throw this.#err("PICKLE_LIMIT", `memo exceeds ${this.#maxMemo} entries`);
    }
    this.#memo.set(idx, v);
  }
  #memoGet(idx: number): Item {
    if (!this.#memo.has(idx)) throw this.#err("PICKLE_MEMO", `memo entry ${idx} is missing`);
    return this.#memo.get(idx)!;
  }
  #key(v: Item): PyKey {
    if (
      v === null || typeof v === "string" || typeof v === "number" || typeof v === "bigint" ||
      typeof v === "boolean" || v instanceof PyFloat || v instanceof PyTuple ||
      v instanceof PyRecord || v instanceof PyGlobal
    ) return v;
    throw this.#err(
      "PICKLE_MALFORMED",
      `uses an unhashable ${pyTypeName(v as PyValue)} as a dict key`,
    );
  }
  #long(b: Uint8Array): number | bigint {
    if (b.length === 0) return 0;
    if (b.length > this.#maxLong) {
      throw this.#err("PICKLE_LIMIT", `an int of ${b.length} bytes exceeds ${this.#maxLong}`);
    }
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  }

  #global(module: string, name: string): PyGlobal {
    const mod = PY2_MODULES[module] ?? module;
    const q = `${mod}.${name}`;
    if (isAllowedGlobal(q) || this.#isRecord(q)) return new PyGlobal(mod, name);
    throw this.#err("PICKLE_GLOBAL", `global ${q} is not allowed`, { global: q });
  }

  run(): PyValue {
    const b = this.#b;
    for (;;) {
      this.#op = this.#pos;
      const op = this.#u8();
      switch (op) {
        case 0x80: { // PROTO
          const p = this.#u8();
          if (p > 5) throw this.#err("PICKLE_OPCODE", `protocol ${p} is not supported`);
          break;
        }
        case 0x95: // FRAME
          this.#u64();
          break;
        case 0x2e: { // STOP
          const v = this.#value(this.#pop());
          this.#checkTree(v);
          return v;
        }
        case 0x28: // MARK
          if (this.#stack.length + this.#marks.length >= this.#maxStack) {
            throw this.#err("PICKLE_LIMIT", `stack exceeds ${this.#maxStack} entries`);
          }
          this.#marks.push(this.#stack.length);
          break;
        case 0x30: // POP
          if (this.#stack.length === (this.#marks.at(-1) ?? -1)) this.#marks.pop();
          else this.#pop();
          break;
        case 0x31: // POP_MARK
          this.#popMark();
          break;
        case 0x32: // DUP
          this.#push(this.#top());
          break;
        case 0x4e: // NONE
          this.#push(null);
          break;
        case 0x88: // NEWTRUE
          this.#push(true);
          break;
        case 0x89: // NEWFALSE
          this.#push(false);
          break;
        case 0x4a: // BININT
          this.#push(this.#dv.getInt32(this.#need(4), true));
          break;
        case 0x4b: // BININT1
          this.#push(this.#u8());
          break;
        case 0x4d: // BININT2
          this.#push(this.#u16());
          break;
        case 0x8a: // LONG1
          this.#push(this.#long(this.#bytes(this.#u8())));
          break;
        case 0x8b: { // LONG4
          const n = this.#dv.getInt32(this.#need(4), true);
          if (n < 0) throw this.#err("PICKLE_MALFORMED", "LONG4 has a negative length");
          if (n > this.#maxLong) {
            throw this.#err("PICKLE_LIMIT", `an int of ${n} bytes exceeds ${this.#maxLong}`);
          }
          this.#push(this.#long(this.#bytes(n)));
          break;
        }
        case 0x47: { // BINFLOAT
          const f = this.#dv.getFloat64(this.#need(8), false);
          this.#push(Number.isInteger(f) ? new PyFloat(f) : f);
          break;
        }
        case 0x58: // BINUNICODE
          this.#push(this.#str(this.#u32()));
          break;
        case 0x8c: // SHORT_BINUNICODE
          this.#push(this.#str(this.#u8()));
          break;
        case 0x8d: // BINUNICODE8
          this.#push(this.#str(this.#u64()));
          break;
        case 0x55: // SHORT_BINSTRING
          this.#push(String.fromCharCode(...this.#bytes(this.#u8())));
          break;
        case 0x54: { // BINSTRING
          const n = this.#dv.getInt32(this.#need(4), true);
          if (n < 0) throw this.#err("PICKLE_MALFORMED", "BINSTRING has a negative length");
          const s = this.#bytes(n);
          let out = "";
          for (let i = 0; i < s.length; i += 8192) {
            out += String.fromCharCode(...s.subarray(i, i + 8192));
          }
          this.#push(out);
          break;
        }
        case 0x43: // SHORT_BINBYTES
          this.#push(this.#bytes(this.#u8()).slice());
          break;
        case 0x42: // BINBYTES
          this.#push(this.#bytes(this.#u32()).slice());
          break;
        case 0x8e: // BINBYTES8
        case 0x96: // BYTEARRAY8
          this.#push(this.#bytes(this.#u64()).slice());
          break;
        case 0x5d: // EMPTY_LIST
          this.#push([]);
          break;
        case 0x29: // EMPTY_TUPLE
          this.#push(new PyTuple([]));
          break;
        case 0x7d: // EMPTY_DICT
          this.#push(new PyDict());
          break;
        case 0x8f: // EMPTY_SET
          this.#push(new PyRecord("builtins.set", [[]]));
          break;
        case 0x6c: // LIST
          this.#push(this.#popMark().map((v) => this.#value(v)));
          break;
        case 0x74: // TUPLE
          this.#push(new PyTuple(this.#popMark().map((v) => this.#value(v))));
          break;
        case 0x85: // TUPLE1
        case 0x86: // TUPLE2
        case 0x87: { // TUPLE3
          const n = op - 0x84;
          const items: PyValue[] = [];
          for (let i = 0; i < n; i++) items.unshift(this.#value(this.#pop()));
          this.#push(new PyTuple(items));
          break;
        }
        case 0x91: // FROZENSET
          this.#push(
            new PyRecord("builtins.frozenset", [this.#popMark().map((v) => this.#value(v))]),
          );
          break;
        case 0x64: { // DICT
          const items = this.#popMark();
          if (items.length % 2) {
            throw this.#err("PICKLE_MALFORMED", "DICT has an odd number of items");
          }
          const d = new PyDict();
          for (let i = 0; i < items.length; i += 2) {
            d.set(this.#key(items[i]!), this.#value(items[i + 1]!));
          }
          this.#push(d);
          break;
        }
        case 0x61: { // APPEND
          const v = this.#value(this.#pop());
          this.#appendTo(this.#top(), [v]);
          break;
        }
        case 0x65: { // APPENDS
          const items = this.#popMark().map((v) => this.#value(v));
          this.#appendTo(this.#top(), items);
          break;
        }
        case 0x90: { // ADDITEMS
          const items = this.#popMark().map((v) => this.#value(v));
          const s = this.#top();
          if (!(s instanceof PyRecord) || !Array.isArray(s.args[0])) {
            throw this.#err("PICKLE_MALFORMED", "ADDITEMS on something that is not a set");
          }
          s.args[0].push(...items);
          break;
        }
        case 0x73: { // SETITEM
          const v = this.#value(this.#pop());
          const k = this.#key(this.#pop());
          this.#setItems(this.#top(), [k, v]);
          break;
        }
        case 0x75: { // SETITEMS
          const items = this.#popMark();
          if (items.length % 2) {
            throw this.#err("PICKLE_MALFORMED", "SETITEMS has an odd number of items");
          }
          this.#setItems(this.#top(), items);
          break;
        }
        case 0x63: { // GLOBAL
          const module = this.#line();
          const name = this.#line();
          this.#push(this.#global(module, name));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          const name = this.#pop();
          const module = this.#pop();
          if (typeof name !== "string" || typeof module !== "string") {
            throw this.#err("PICKLE_MALFORMED", "STACK_GLOBAL needs two strings");
          }
          this.#push(this.#global(module, name));
          break;
        }
        case 0x69: { // INST
          const module = this.#line();
          const name = this.#line();
          const g = this.#global(module, name);
          const args = this.#popMark().map((v) => this.#value(v));
          this.#push(this.#call(g, args, "INST"));
          break;
        }
        case 0x6f: { // OBJ
          const items = this.#popMark();
          const cls = items.shift();
          if (cls === undefined) throw this.#err("PICKLE_STACK", "OBJ has no class");
          this.#push(this.#call(cls, items.map((v) => this.#value(v)), "OBJ"));
          break;
        }
        case 0x52: { // REDUCE
          const args = this.#pop();
          const fn = this.#pop();
          if (!(args instanceof PyTuple)) {
            throw this.#err(
              "PICKLE_MALFORMED",
              `REDUCE arguments are a ${pyTypeName(this.#value(args))}, not a tuple`,
            );
          }
          this.#push(this.#call(fn, args.items, "REDUCE"));
          break;
        }
        case 0x81: { // NEWOBJ
          const args = this.#pop();
          const cls = this.#pop();
          if (!(args instanceof PyTuple)) {
            throw this.#err("PICKLE_MALFORMED", "NEWOBJ arguments are not a tuple");
          }
          this.#push(this.#newObj(cls, args.items, undefined));
          break;
        }
        case 0x92: { // NEWOBJ_EX
          const kwargs = this.#pop();
          const args = this.#pop();
          const cls = this.#pop();
          if (!(args instanceof PyTuple) || !(kwargs instanceof PyDict)) {
            throw this.#err("PICKLE_MALFORMED", "NEWOBJ_EX needs a tuple and a dict");
          }
          this.#push(this.#newObj(cls, args.items, kwargs));
          break;
        }
        case 0x62: { // BUILD
          const state = this.#value(this.#pop());
          this.#build(this.#top(), state);
          break;
        }
        case 0x51: { // BINPERSID
          const pid = this.#value(this.#pop());
          this.#push(this.#persid(pid));
          break;
        }
        case 0x50: // PERSID
          this.#push(this.#persid(this.#line()));
          break;
        case 0x68: // BINGET
          this.#push(this.#memoGet(this.#u8()));
          break;
        case 0x6a: // LONG_BINGET
          this.#push(this.#memoGet(this.#u32()));
          break;
        case 0x67: { // GET
          const n = Number.parseInt(this.#line(), 10);
          if (!Number.isSafeInteger(n)) throw this.#err("PICKLE_MALFORMED", "GET has a bad index");
          this.#push(this.#memoGet(n));
          break;
        }
        case 0x71: // BINPUT
          this.#memoPut(this.#u8(), this.#top());
          break;
        case 0x72: // LONG_BINPUT
          this.#memoPut(this.#u32(), this.#top());
          break;
        case 0x70: { // PUT
          const n = Number.parseInt(this.#line(), 10);
          if (!Number.isSafeInteger(n)) throw this.#err("PICKLE_MALFORMED", "PUT has a bad index");
          this.#memoPut(n, this.#top());
          break;
        }
        case 0x94: // MEMOIZE
          this.#memoPut(this.#memo.size, this.#top());
          break;
        case 0x82:
        case 0x83:
        case 0x84: // EXT1, EXT2, EXT4
          throw this.#err("PICKLE_EXT", "extension registry opcodes (EXT1/2/4) are not allowed");
        default:
          throw this.#err(
            "PICKLE_OPCODE",
            `opcode 0x${op.toString(16).padStart(2, "0")} (${
              JSON.stringify(String.fromCharCode(op))
            }) is not supported`,
            { opcode: op },
          );
      }
      if (this.#pos > b.byteLength) throw this.#err("PICKLE_TRUNCATED", "ran past the end");
    }
  }

  #appendTo(target: Item, items: PyValue[]): void {
    if (Array.isArray(target)) {
      for (const v of items) target.push(v);
    } else if (target instanceof PyRecord && this.#isRecord(target.className)) {
      (target.listItems ??= []).push(...items);
    } else {
      throw this.#err(
        "PICKLE_MALFORMED",
        `APPEND on a ${pyTypeName(this.#value(target))}, not a list`,
      );
    }
  }

  #setItems(target: Item, items: Item[]): void {
    let d: PyDict;
    if (target instanceof PyDict) {
      d = target;
    } else if (target instanceof PyRecord && this.#isRecord(target.className)) {
      d = target.dictItems ??= new PyDict();
    } else {
      throw this.#err(
        "PICKLE_MALFORMED",
        `SETITEM on a ${pyTypeName(this.#value(target))}, not a dict`,
      );
    }
    for (let i = 0; i < items.length; i += 2) {
      d.set(this.#key(items[i]!), this.#value(items[i + 1]!));
    }
  }

  #persid(pid: PyValue): StorageHandle | PyValue {
    if (!this.#persistentLoad) {
      throw this.#err("PICKLE_PERSID", "a persistent id appears but no storages are available");
    }
    try {
      return this.#persistentLoad(pid, this.#op);
    } catch (e) {
      if (e instanceof CkptError) {
        if (e.offset !== undefined) throw e;
        throw new CkptError(e.code, `${e.message} (at byte ${this.#op})`, {
          ...(this.#file === undefined ? {} : { file: this.#file }),
          offset: this.#op,
          cause: e,
        });
      }
      throw e;
    }
  }

  #newObj(cls: Item, args: PyValue[], kwargs: PyDict | undefined): PyValue {
    if (!(cls instanceof PyGlobal)) {
      throw this.#err("PICKLE_REDUCE", `NEWOBJ on a ${pyTypeName(this.#value(cls))}, not a class`);
    }
    if (this.#isRecord(cls.qualname)) {
      const r = new PyRecord(cls.qualname, args);
      if (kwargs && kwargs.size > 0) r.args.push(kwargs);
      return r;
    }
    if (
      cls.qualname === "torch.nn.parameter.Parameter" || cls.qualname === "collections.OrderedDict"
    ) {
      return this.#call(cls, args, "NEWOBJ");
    }
    throw this.#err("PICKLE_REDUCE", `NEWOBJ of ${cls.qualname} is not allowed`, {
      global: cls.qualname,
    });
  }

  #build(target: Item, state: PyValue): void {
    if (target instanceof PyRecord) {
      if (target.state instanceof PyDict && state instanceof PyDict) {
        for (const [k, v] of state) target.state.set(k, v);
      } else target.state = state;
      return;
    }
    if (target instanceof PyDict && target.kind === "OrderedDict") {
      if (state === null) return;
      if (!(state instanceof PyDict)) {
        throw this.#err("PICKLE_BUILD", "BUILD on an OrderedDict with a state that is not a dict");
      }
      target.attrs ??= new PyDict();
      for (const [k, v] of state) target.attrs.set(k, v);
      return;
    }
    if (target instanceof TorchTensor) return; // torch sets tensor __dict__ state; nothing ckpt uses
    throw this.#err(
      "PICKLE_BUILD",
      `BUILD on a ${pyTypeName(target as PyValue)} is not allowed`,
    );
  }

  #call(fn: Item, args: PyValue[], how: string): PyValue {
    if (!(fn instanceof PyGlobal)) {
      throw this.#err(
        "PICKLE_REDUCE",
        `${how} calls a ${pyTypeName(fn as PyValue)}, which is not callable`,
      );
    }
    const q = fn.qualname;
    if (this.#isRecord(q) && !FUNCTION_GLOBALS.has(q)) return new PyRecord(q, args);
    if (!FUNCTION_GLOBALS.has(q)) {
      throw this.#err("PICKLE_REDUCE", `${how} of ${q} is not allowed`, { global: q });
    }
    if (UNIMPLEMENTED.includes(q)) {
      throw this.#err(
        "PICKLE_UNSUPPORTED",
        `${q} (quantized, sparse, nested or subclass tensors) is not supported`,
        {
          global: q,
        },
      );
    }
    const bad = (why: string): CkptError => this.#err("PICKLE_ARGS", `${q}${why}`, { global: q });
    switch (q) {
      case "collections.OrderedDict": {
        const d = new PyDict([], "OrderedDict");
        if (args.length === 0) return d;
        const src = args[0];
        if (src instanceof PyDict) { for (const [k, v] of src) d.set(k, v); }
        else if (Array.isArray(src)) {
          for (const pair of src) {
            const items = pair instanceof PyTuple
              ? pair.items
              : Array.isArray(pair)
              ? pair
              : undefined;
            if (!items || items.length !== 2) throw bad(" needs (key, value) pairs");
            d.set(this.#key(items[0]!), items[1]!);
          }
        } else throw bad(" needs a dict or a list of pairs");
        return d;
      }
      case "collections.Counter":
      case "builtins.complex":
      case "torch.device":
        return new PyRecord(q, args);
      case "builtins.set":
        return new PyRecord(q, [
          Array.isArray(args[0]) ? args[0] : args[0] instanceof PyTuple ? [...args[0].items] : [],
        ]);
      case "builtins.bytearray": {
        if (args.length === 0) return new Uint8Array(0);
        if (args[0] instanceof Uint8Array) return args[0];
        if (typeof args[0] === "string") return this.#encode(args[0], args[1], bad);
        throw bad(" needs bytes or a string");
      }
      case "_codecs.encode": {
        if (typeof args[0] !== "string") throw bad(" needs a string");
        return this.#encode(args[0], args[1], bad);
      }
      case "torch.Size": {
        const t = args[0];
        const items = t instanceof PyTuple ? t.items : Array.isArray(t) ? t : undefined;
        if (!items || !items.every((x) => typeof x === "number" && Number.isSafeInteger(x))) {
          throw bad(" needs a tuple of ints");
        }
        return new PyTuple([...items], "torch.Size");
      }
      case "torch.serialization._get_layout": {
        if (typeof args[0] !== "string" || !args[0].startsWith("torch.")) {
          throw bad(" needs a layout name");
        }
        return new PyGlobal("torch", args[0].slice(6));
      }
      case "torch._utils._rebuild_meta_tensor_no_storage":
        return new PyRecord(q, args);
      case "torch._utils._rebuild_tensor":
      case "torch._utils._rebuild_tensor_v2":
      case "torch._utils._rebuild_tensor_v3":
        return this.#rebuildTensor(q, args, bad);
      case "torch._utils._rebuild_parameter":
      case "torch._utils._rebuild_parameter_with_state":
      case "torch.nn.parameter.Parameter": {
        const t = args[0];
        if (!(t instanceof TorchTensor)) throw bad(" needs a tensor");
        const rg = args.length > 1 ? args[1] : true;
        if (typeof rg !== "boolean") throw bad(" needs a bool requires_grad");
        return new TorchTensor(t.storage, t.shape, {
          stride: t.stride,
          storageOffset: t.storageOffset,
          requiresGrad: rg,
          parameter: true,
          source: t.source,
        });
      }
      case "torch._tensor._rebuild_from_type_v2": {
        const [func, type, fargs] = args;
        if (!(type instanceof PyGlobal) || !(fargs instanceof PyTuple)) {
          throw bad(" needs (func, type, args, state)");
        }
        if (type.qualname !== "torch.Tensor" && type.qualname !== "torch.nn.parameter.Parameter") {
          throw this.#err("PICKLE_REDUCE", `tensor subclass ${type.qualname} is not allowed`, {
            global: type.qualname,
          });
        }
        const t = this.#call(func === undefined ? null : func, fargs.items, how);
        if (type.qualname === "torch.nn.parameter.Parameter" && t instanceof TorchTensor) {
          return new TorchTensor(t.storage, t.shape, {
            stride: t.stride,
            storageOffset: t.storageOffset,
            requiresGrad: t.requiresGrad,
            parameter: true,
            source: t.source,
          });
        }
        return t;
      }
    }
    throw bad(" has no implementation");
  }

  #encode(s: string, enc: PyValue | undefined, bad: (w: string) => CkptError): Uint8Array {
    const e = typeof enc === "string" ? enc.toLowerCase().replace(/[-_]/g, "") : "utf8";
    if (e === "latin1" || e === "iso88591") {
      const out = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c > 255) throw bad(" got a character outside latin-1");
        out[i] = c;
      }
      return out;
    }
    if (e === "utf8") return new TextEncoder().encode(s);
    throw bad(` uses encoding ${JSON.stringify(enc)}`);
  }

  #rebuildTensor(q: string, args: PyValue[], bad: (w: string) => CkptError): TorchTensor {
    const handle = args[0] as unknown;
    if (!(handle instanceof StorageHandle)) throw bad(" needs a storage as its first argument");
    const [, offset, size, stride] = args;
    const ints = (v: PyValue | undefined): number[] | undefined => {
      const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : undefined;
      if (!items || !items.every((x) => typeof x === "number" && Number.isSafeInteger(x))) {
        return undefined;
      }
      return items as number[];
    };
    const sz = ints(size);
    const st = ints(stride);
    if (typeof offset !== "number" || !Number.isSafeInteger(offset) || !sz || !st) {
      throw bad(" needs an int offset and int tuples for size and stride");
    }
    let dtype: DType;
    if (q === "torch._utils._rebuild_tensor_v3") {
      const dt = args[6];
      if (!(dt instanceof PyGlobal) || dt.module !== "torch") throw bad(" needs a dtype");
      try {
        dtype = dtypeFromTorch(dt.qualname);
      } catch (cause) {
        throw this.#err("PICKLE_UNSUPPORTED", `dtype ${dt.qualname} is not supported`, { cause });
      }
    } else {
      if (handle.dtype === undefined) throw bad(" got an untyped storage");
      dtype = handle.dtype;
    }
    const rg = args[4] ?? false;
    if (typeof rg !== "boolean") throw bad(" needs a bool requires_grad");
    const meta = q === "torch._utils._rebuild_tensor_v2"
      ? args[6]
      : q === "torch._utils._rebuild_tensor_v3"
      ? args[7]
      : undefined;
    if (meta instanceof PyDict && meta.size > 0) {
      throw this.#err("PICKLE_UNSUPPORTED", "tensors with conj/neg bits are not supported");
    }
    try {
      return new TorchTensor(handle.typed(dtype), sz, {
        stride: st,
        storageOffset: offset,
        requiresGrad: rg,
        source: handle.file,
      });
    } catch (e) {
      if (e instanceof CkptError && e.offset === undefined) {
        throw new CkptError(e.code, `${e.message} (at byte ${this.#op})`, {
          file: handle.file,
          offset: this.#op,
          cause: e,
        });
      }
      throw e;
    }
  }

  /**
   * Iterative check of the result: no cycles, depth within `maxDepth`, and the size of the value
   * as a tree (shared references counted each time they appear) within `maxExpanded`.
   */
  #checkTree(root: PyValue): void {
    const done = new Map<object, { d: number; n: number }>();
    const onPath = new Set<object>();
    type Frame = { node: object; kids: PyValue[]; i: number; d: number; n: number };
    const kidsOf = (v: object): PyValue[] | undefined => {
      if (Array.isArray(v)) return v;
      if (v instanceof PyTuple) return v.items;
      if (v instanceof PyDict) {
        const out: PyValue[] = [];
        for (const [k, x] of v.map) {
          out.push(k as PyValue);
          out.push(x);
        }
        if (v.attrs) out.push(v.attrs);
        return out;
      }
      if (v instanceof PyRecord) {
        const out: PyValue[] = [...v.args];
        if (v.state !== undefined) out.push(v.state);
        if (v.listItems) out.push(...v.listItems);
        if (v.dictItems) out.push(v.dictItems);
        return out;
      }
      return undefined;
    };
    const storageMisuse = () => this.#err("PICKLE_MALFORMED", "a storage is used outside a tensor");
    const start = (v: PyValue): Frame | undefined => {
      if (v === null || typeof v !== "object") return undefined;
      if ((v as unknown) instanceof StorageHandle) throw storageMisuse();
      const kids = kidsOf(v);
      return kids ? { node: v, kids, i: 0, d: 0, n: 1 } : undefined;
    };
    const first = start(root);
    if (!first) return;
    const stack: Frame[] = [first];
    onPath.add(first.node);
    const grow = (f: Frame, n: number) => {
      f.n += n;
      if (f.n > this.#maxExpanded) {
        throw this.#err(
          "PICKLE_LIMIT",
          `the value expands to more than ${this.#maxExpanded} items (shared references counted each time)`,
        );
      }
    };
    while (stack.length > 0) {
      const f = stack[stack.length - 1]!;
      if (f.i < f.kids.length) {
        const k = f.kids[f.i++]!;
        if (k === null || typeof k !== "object") {
          grow(f, 1);
          continue;
        }
        if ((k as unknown) instanceof StorageHandle) throw storageMisuse();
        if (onPath.has(k)) {
          throw this.#err("PICKLE_MALFORMED", "the value contains itself (a cycle)");
        }
        const known = done.get(k);
        if (known !== undefined) {
          f.d = Math.max(f.d, known.d + 1);
          grow(f, known.n);
          continue;
        }
        const nf = start(k);
        if (!nf) {
          grow(f, 1);
          continue;
        }
        if (stack.length >= this.#maxDepth) {
          throw this.#err(
            "PICKLE_LIMIT",
            `the value is nested deeper than ${this.#maxDepth} levels`,
          );
        }
        onPath.add(k);
        stack.push(nf);
      } else {
        stack.pop();
        onPath.delete(f.node);
        done.set(f.node, { d: f.d, n: f.n });
        const parent = stack[stack.length - 1];
        if (parent) {
          parent.d = Math.max(parent.d, f.d + 1);
          grow(parent, f.n);
        }
      }
    }
  }
}
