/**
 * The Python value model of ckpt's pickle reader and writer: what `torch.load` returns, as
 * TypeScript values that keep every Python type distinction a round trip needs.
 *
 * | Python | TypeScript |
 * |---|---|
 * | `None` | `null` |
 * | `bool` | `boolean` |
 * | `int` | `number` when it is a safe integer, else `bigint` |
 * | `float` | `number` when it is not a whole number (`0.001`, `NaN`, `±Infinity`), else {@linkcode PyFloat} (`1.0`, `-0.0`) |
 * | `str` | `string` |
 * | `bytes`, `bytearray` | `Uint8Array` |
 * | `list` | `PyValue[]` (a plain array) |
 * | `tuple` | {@linkcode PyTuple} (`kind: "tuple"`); `torch.Size` is a {@linkcode PyTuple} with `kind: "torch.Size"` |
 * | `dict`, `collections.OrderedDict` | {@linkcode PyDict} with `kind: "dict" \| "OrderedDict"` and a `Map` that allows int and str keys |
 * | tensors, `nn.Parameter` | {@linkcode TorchTensor} (a lazy {@linkcode TensorRef}) |
 * | dtypes, layouts, other bare globals | {@linkcode PyGlobal} (`torch.bfloat16`) |
 * | anything else that was built without being run (`torch.device`, `set`, DCP dataclasses, enums) | {@linkcode PyRecord} |
 *
 * The int/float rule: the writer emits a JS `number` as a Python `int` when it is an integer and
 * as a `float` otherwise; {@linkcode PyFloat} forces a float. The reader produces the same shapes,
 * so `lr: 0.001` reads as `0.001`, `step: 3` as `3`, and `eps: 1.0` as `PyFloat(1)`, and all of them
 * write back with their Python types. Use {@linkcode pyNumber} to get a plain JS number from any of them.
 *
 * @example Building an optimizer state tree
 * ```ts
 * import { pyDict, pyFloat, pyTuple, toJSONish, PyDict } from "./values.ts";
 * import assert from "node:assert/strict";
 *
 * const group = pyDict([["lr", 0.001], ["betas", pyTuple([0.9, 0.999])], ["eps", pyFloat(1)]]);
 * const opt = pyDict([["state", pyDict([[0, pyDict([])]])], ["param_groups", [group]]]);
 * assert.ok(opt instanceof PyDict && opt.kind === "dict");
 * assert.deepEqual(toJSONish(group), { lr: 0.001, betas: { __tuple__: [0.9, 0.999] }, eps: { __float__: 1 } });
 * ```
 * @module
 */
import { CkptError } from "../../errors.ts";
import { TorchTensor } from "./tensor.ts";

// Tensors live in tensor.ts; their names stay importable from here.
export {
  bytesSource,
  contiguousStrides,
  type StorageSource,
  tensorOfBytes,
  TorchStorage,
  TorchTensor,
  torchTensor,
  type TorchTensorOptions,
} from "./tensor.ts";

/**
 * Keys a {@linkcode PyDict} allows: Python's hashable scalars, plus tuples, records (DCP
 * `MetadataIndex` keys) and globals, which compare by identity.
 */
export type PyKey =
  | string
  | number
  | bigint
  | boolean
  | null
  | PyFloat
  | PyTuple
  | PyRecord
  | PyGlobal;

/** Any value the pickle reader produces or the writer accepts. */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyFloat
  | PyValue[]
  | PyTuple
  | PyDict
  | TorchTensor
  | PyGlobal
  | PyRecord;

/** A Python `float` that is a whole number (`1.0`, `-0.0`): keeps its type through a round trip. */
export class PyFloat {
  /** The value. */
  readonly value: number;
  /** Wraps `value` as a Python float. */
  constructor(value: number) {
    this.value = value;
  }
  /** The plain number (so `+f` and arithmetic work). */
  valueOf(): number {
    return this.value;
  }
}

/** A Python `tuple`, or a `torch.Size` (a tuple subclass) when `kind` is `"torch.Size"`. */
export class PyTuple {
  /** The items, in order. */
  readonly items: PyValue[];
  /** `"tuple"`, or `"torch.Size"` for sizes (written as `torch.Size((...))`). */
  readonly kind: "tuple" | "torch.Size";
  /** Creates a tuple of `items`. */
  constructor(items: PyValue[], kind: "tuple" | "torch.Size" = "tuple") {
    this.items = items;
    this.kind = kind;
  }
  /** Number of items. */
  get length(): number {
    return this.items.length;
  }
}

/**
 * A Python `dict` or `collections.OrderedDict`: insertion-ordered, with str, int, float, bool,
 * None and tuple keys (ints as `number`/`bigint`, so `0` and `"0"` are different keys, as in Python).
 * `attrs` holds the instance attributes an OrderedDict carried (`state_dict()._metadata`).
 */
export class PyDict {
  /** Entries in insertion order. */
  readonly map: Map<PyKey, PyValue>;
  /** `"dict"` or `"OrderedDict"`. */
  kind: "dict" | "OrderedDict";
  /** Instance attributes set by a pickle `BUILD` (only OrderedDicts have them), else undefined. */
  attrs: PyDict | undefined;
  /** Creates a dict from entries. */
  constructor(entries: Iterable<[PyKey, PyValue]> = [], kind: "dict" | "OrderedDict" = "dict") {
    this.map = new Map(entries);
    this.kind = kind;
    this.attrs = undefined;
  }
  /** Value of `key` (undefined when missing). */
  get(key: PyKey): PyValue | undefined {
    return this.map.get(key);
  }
  /** Sets `key`. */
  set(key: PyKey, value: PyValue): this {
    this.map.set(key, value);
    return this;
  }
  /** True when `key` is present. */
  has(key: PyKey): boolean {
    return this.map.has(key);
  }
  /** Number of entries. */
  get size(): number {
    return this.map.size;
  }
  /** Keys in order. */
  keys(): IterableIterator<PyKey> {
    return this.map.keys();
  }
  /** Entries in order. */
  entries(): IterableIterator<[PyKey, PyValue]> {
    return this.map.entries();
  }
  /** Same as {@linkcode PyDict.entries}. */
  [Symbol.iterator](): IterableIterator<[PyKey, PyValue]> {
    return this.map.entries();
  }
}

/** A module-level name that was referenced but not called: dtypes (`torch.bfloat16`), layouts, classes. */
export class PyGlobal {
  /** Module, e.g. `"torch"`. */
  readonly module: string;
  /** Name, e.g. `"bfloat16"`. */
  readonly name: string;
  /** Creates a reference to `module.name`. */
  constructor(module: string, name: string) {
    this.module = module;
    this.name = name;
  }
  /** `"module.name"`. */
  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
  /** `"module.name"`. */
  toString(): string {
    return this.qualname;
  }
}

/**
 * An object the pickle described but ckpt did not construct: its class as `"module.Name"`, the
 * arguments it was created with (`REDUCE`/`NEWOBJ`/`INST`/`OBJ`), and the state `BUILD` gave it.
 *
 * - A dataclass pickled as `NEWOBJ(cls, ())` + `BUILD({...fields})` has `args: []` and `state` a
 *   {@linkcode PyDict} of its fields; {@linkcode PyRecord.field} reads one.
 * - A custom `__getstate__` gives a non-dict state (DCP `TensorProperties`: a 5-tuple {@linkcode PyTuple}).
 * - An enum member (`_MEM_FORMAT_ENCODING(0)`) or `torch.device("cuda:1")` is a `REDUCE` call: `args: [0]`,
 *   `args: ["cuda:1"]`, `state: undefined`.
 * - A namedtuple is `REDUCE(cls, (a, b))` (`args` = its fields in order) or `NEWOBJ(cls, (a, b))`.
 * - A `BUILD` whose state is a 2-tuple `(dict, slots)` is kept as that tuple.
 * - `set`/`frozenset` are records `builtins.set`/`builtins.frozenset` with `args: [[...items]]`.
 * - Items added by `APPEND(S)`/`SETITEM(S)` to a record (list or dict subclasses) go to `listItems`/`dictItems`.
 *
 * The writer emits a record as `GLOBAL module name` + `args` tuple + `REDUCE` (+ `state` `BUILD`).
 */
export class PyRecord {
  /** Class or callable as `"module.Name"`. */
  readonly className: string;
  /** Constructor / call arguments. */
  args: PyValue[];
  /** State given by `BUILD`, if any. */
  state: PyValue | undefined;
  /** Items appended to it (list subclasses), if any. */
  listItems: PyValue[] | undefined;
  /** Items set on it (dict subclasses), if any. */
  dictItems: PyDict | undefined;
  /** Creates a record of `className` built from `args`, with an optional `state`. */
  constructor(className: string, args: PyValue[] = [], state?: PyValue) {
    this.className = className;
    this.args = args;
    this.state = state;
    this.listItems = undefined;
    this.dictItems = undefined;
  }
  /** A field of a dict state (`record.field("size")`), or undefined. */
  field(name: string): PyValue | undefined {
    return this.state instanceof PyDict ? this.state.get(name) : undefined;
  }
}

/** A `dict` (default) or `OrderedDict` from entries. */
export function pyDict(
  entries: Iterable<[PyKey, PyValue]> | Record<string, PyValue> = [],
  kind: "dict" | "OrderedDict" = "dict",
): PyDict {
  const it: Iterable<[PyKey, PyValue]> = Symbol.iterator in entries
    ? entries as Iterable<[PyKey, PyValue]>
    : Object.entries(entries);
  return new PyDict(it, kind);
}

/** A tuple of `items`. */
export function pyTuple(items: PyValue[]): PyTuple {
  return new PyTuple(items, "tuple");
}

/** A `torch.Size` of `dims`. */
export function torchSize(dims: readonly number[]): PyTuple {
  return new PyTuple([...dims], "torch.Size");
}

/** A Python float, kept a float even when whole (`pyFloat(1)` is `1.0`). */
export function pyFloat(value: number): PyFloat {
  return new PyFloat(value);
}

/** A JS number from a Python int or float (`number`, `bigint`, {@linkcode PyFloat}, `boolean`); `PY_TYPE` otherwise. */
export function pyNumber(value: PyValue | undefined): number {
  if (typeof value === "number") return value;
  if (typeof value === "bigint") return Number(value);
  if (typeof value === "boolean") return value ? 1 : 0;
  if (value instanceof PyFloat) return value.value;
  throw new CkptError("PY_TYPE", `Cannot read a number: found ${pyTypeName(value)}`);
}

/** Short description of a value's Python type, for error messages. */
export function pyTypeName(value: PyValue | undefined): string {
  if (value === undefined) return "nothing";
  if (value === null) return "None";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
  if (typeof value === "bigint") return "int";
  if (typeof value === "string") return "str";
  if (value instanceof Uint8Array) return "bytes";
  if (value instanceof PyFloat) return "float";
  if (Array.isArray(value)) return "list";
  if (value instanceof PyTuple) return value.kind;
  if (value instanceof PyDict) return value.kind;
  if (value instanceof TorchTensor) return "torch.Tensor";
  if (value instanceof PyGlobal) return value.qualname;
  if (value instanceof PyRecord) return value.className;
  return "storage";
}

/** A JSON-friendly key for a {@linkcode PyKey}. Ints print as digits; other non-strings as JSON. */
function keyString(key: PyKey): string {
  if (typeof key === "string") return key;
  if (typeof key === "number" || typeof key === "bigint") return String(key);
  if (key instanceof PyFloat) return `${key.value}.0`;
  if (key instanceof PyTuple || key instanceof PyRecord || key instanceof PyGlobal) {
    return JSON.stringify(toJSONish(key));
  }
  return JSON.stringify(key);
}

/** Options of {@linkcode toJSONish}. */
export interface ToJSONishOptions {
  /** Stop after this many nodes (guards against shared-reference bombs). Default 1,000,000. */
  maxNodes?: number;
  /** Mark dict keys that are not strings (`{"__dict__": [[k, v], ...]}`) instead of stringifying them. Default false. */
  exactKeys?: boolean;
}

/**
 * A JSON-friendly view of a value, for inspect output and tests. Plain JSON where the type is
 * unambiguous; otherwise a one-key tag: `{__tuple__: [...]}`, `{__size__: [...]}`,
 * `{__float__: 1}` (whole floats, NaN, ±Infinity as strings), `{__int__: "123..."}` (big ints),
 * `{__bytes__: "hex"}`, `{__odict__: {...}}`, `{__global__: "torch.bfloat16"}`,
 * `{__tensor__: {dtype, shape, stride, offset, key, requires_grad, parameter}}`,
 * `{__class__: "m.C", args?, state?, ...}` for records. Dict keys become strings (int `0` -> `"0"`).
 */
export function toJSONish(value: PyValue, options: ToJSONishOptions = {}): unknown {
  let budget = options.maxNodes ?? 1_000_000;
  const exact = options.exactKeys ?? false;
  const walk = (v: PyValue, depth: number): unknown => {
    if (--budget < 0) {
      throw new CkptError("PY_TOO_LARGE", "Cannot convert value to JSON: it has too many nodes");
    }
    if (depth > 1000) {
      throw new CkptError("PY_TOO_DEEP", "Cannot convert value to JSON: it is nested too deeply");
    }
    if (v === null || typeof v === "boolean" || typeof v === "string") return v;
    if (typeof v === "number") {
      return Number.isFinite(v) ? v : { __float__: String(v) };
    }
    if (typeof v === "bigint") return { __int__: v.toString() };
    if (v instanceof PyFloat) {
      return Number.isFinite(v.value) ? { __float__: Object.is(v.value, -0) ? "-0.0" : v.value } : {
        __float__: String(v.value),
      };
    }
    if (v instanceof Uint8Array) {
      return { __bytes__: Array.from(v, (b) => b.toString(16).padStart(2, "0")).join("") };
    }
    if (Array.isArray(v)) return v.map((x) => walk(x, depth + 1));
    if (v instanceof PyTuple) {
      const items = v.items.map((x) => walk(x, depth + 1));
      return v.kind === "torch.Size" ? { __size__: items } : { __tuple__: items };
    }
    if (v instanceof PyDict) {
      let body: unknown;
      if (exact) {
        body = {
          __dict__: [...v.map].map(([k, x]) => [walk(k as PyValue, depth + 1), walk(x, depth + 1)]),
        };
      } else {
        const o: Record<string, unknown> = {};
        for (const [k, x] of v.map) o[keyString(k)] = walk(x, depth + 1);
        body = o;
      }
      return v.kind === "OrderedDict" ? { __odict__: body } : body;
    }
    if (v instanceof TorchTensor) {
      return {
        __tensor__: {
          dtype: v.dtype,
          shape: [...v.shape],
          stride: [...v.stride],
          offset: v.storageOffset,
          key: v.storage.key ?? null,
          requires_grad: v.requiresGrad,
          parameter: v.parameter,
        },
      };
    }
    if (v instanceof PyGlobal) return { __global__: v.qualname };
    const rec: Record<string, unknown> = { __class__: v.className };
    if (v.args.length > 0) rec.args = v.args.map((x) => walk(x, depth + 1));
    if (v.state instanceof PyDict) {
      for (const [k, x] of v.state.map) rec[keyString(k)] = walk(x, depth + 1);
    } else if (v.state !== undefined) rec.state = walk(v.state, depth + 1);
    if (v.listItems) rec.items = v.listItems.map((x) => walk(x, depth + 1));
    if (v.dictItems) rec.dict = walk(v.dictItems, depth + 1);
    return rec;
  };
  return walk(value, 0);
}

/** Every tensor in a value tree, with a dotted path (`state.0.exp_avg`), in tree order. */
export function* tensorsOf(value: PyValue, prefix = ""): Generator<[string, TorchTensor]> {
  const seen = new Set<object>();
  const stack: [string, PyValue][] = [[prefix, value]];
  while (stack.length > 0) {
    const [path, v] = stack.pop()!;
    if (v instanceof TorchTensor) {
      yield [path, v];
      continue;
    }
    if (v === null || typeof v !== "object" || v instanceof Uint8Array) continue;
    if (seen.has(v)) continue;
    seen.add(v);
    const join = (k: string) => (path === "" ? k : `${path}.${k}`);
    const kids: [string, PyValue][] = [];
    if (Array.isArray(v)) v.forEach((x, i) => kids.push([join(String(i)), x]));
    else if (v instanceof PyTuple) v.items.forEach((x, i) => kids.push([join(String(i)), x]));
    else if (v instanceof PyDict) {
      for (const [k, x] of v.map) kids.push([join(keyString(k)), x]);
    } else if (v instanceof PyRecord) {
      v.args.forEach((x, i) => kids.push([join(String(i)), x]));
      if (v.state !== undefined) kids.push([path, v.state]);
    }
    for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]!);
  }
}
