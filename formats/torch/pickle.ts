/**
 * A protocol-2 pickle writer for the value model of {@linkcode ./values.ts}, emitting only the
 * opcodes torch 2.6's `weights_only=True` loader accepts: dicts and OrderedDicts (items in batches
 * of 1000, as Python does), lists, tuples, ints (`BININT1/2`, `BININT`, `LONG1`), floats
 * (`BINFLOAT`), bools, None, strings (`BINUNICODE`), bytes (`_codecs.encode`), `torch.Size`,
 * globals, records (`REDUCE` + `BUILD`), and tensors as `_rebuild_tensor_v2` (typed storages) or
 * `_rebuild_tensor_v3` (float8, `UntypedStorage`) with a persistent id per storage. Memo and
 * batching follow CPython's C pickler (`BINPUT` after every str, tuple, list, dict, global and
 * `REDUCE` result; `BINGET` for repeats), so a torch-written file re-written from its loaded value
 * comes out byte for byte the same.
 *
 * @example Pickling a small tree
 * ```ts
 * import { pickleValue } from "./pickle.ts";
 * import { unpickle } from "./unpickle.ts";
 * import { pyDict, pyFloat, PyDict, PyFloat } from "./values.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = pickleValue(pyDict([["lr", 0.001], ["eps", pyFloat(1)], [0, [1, 2]]], "OrderedDict"));
 * const back = unpickle(bytes) as PyDict;
 * assert.equal(back.kind, "OrderedDict");
 * assert.equal(back.get("lr"), 0.001);
 * assert.ok(back.get("eps") instanceof PyFloat);
 * assert.deepEqual(back.get(0), [1, 2]);
 * ```
 * @module
 */
import { CkptError } from "../../errors.ts";
import { DTYPES } from "../dtype.ts";
import { encodeLong, OP, Out } from "./_pickle_out.ts";
import {
  PyDict,
  PyFloat,
  PyGlobal,
  PyRecord,
  PyTuple,
  pyTypeName,
  type PyValue,
  type TorchStorage,
  TorchTensor,
} from "./values.ts";

/** Options of {@linkcode pickleValue}. */
export interface PickleOptions {
  /**
   * The record key of a tensor's storage (`"0"`, `"1"`, ... in first-appearance order). Default:
   * keys assigned here in first-appearance order.
   */
  storageKey?: (storage: TorchStorage) => string;
  /** Deepest nesting accepted. Default 1000. */
  maxDepth?: number;
}

/** The storage class name torch 2.6 pickles for a dtype (`FloatStorage`), or undefined for v3 dtypes. */
export function storageClassName(dtype: keyof typeof DTYPES): string | undefined {
  return DTYPES[dtype].storage;
}

/**
 * Pickles `value` with protocol 2 (what `torch.save` writes to `data.pkl`). Tensors become
 * persistent ids `('storage', torch.<X>Storage, key, 'cpu', numel)` whose key comes from
 * `options.storageKey`. `PY_TYPE` for a value the writer cannot express; `PY_TOO_DEEP` past `maxDepth`.
 */
export function pickleValue(value: PyValue, options: PickleOptions = {}): Uint8Array {
  const p = new Pickler(options);
  p.out.byte(OP.PROTO);
  p.out.byte(2);
  p.save(value, 0);
  p.out.byte(OP.STOP);
  return p.out.buf.slice(0, p.out.len);
}

export { encodeLong };

/**
 * The writer. CPython's memo: every str, non-empty tuple, list, dict, global and REDUCE result
 * gets a BINPUT; a second save of the same object is a BINGET. Objects keep their identity here
 * (what the reader built); strings and globals, which have no identity in JS, are memoized by
 * value (Python's interned names and constants behave that way).
 */
class Pickler {
  readonly out = new Out();
  #memoSize = 0;
  readonly #objects = new Map<object, number>();
  readonly #strings = new Map<string, number>();
  readonly #globals = new Map<string, number>();
  readonly #storageKeys = new Map<string, number>();
  readonly #storageKey: (s: TorchStorage) => string;
  readonly #maxDepth: number;

  constructor(options: PickleOptions) {
    const keys = new Map<TorchStorage, string>();
    this.#storageKey = options.storageKey ?? ((s: TorchStorage) => {
      let k = keys.get(s);
      if (k === undefined) keys.set(s, k = String(keys.size));
      return k;
    });
    this.#maxDepth = options.maxDepth ?? 1000;
  }

  /** Emits BINPUT for the next memo slot and returns it. */
  #put(): number {
    const i = this.#memoSize++;
    if (i < 256) {
      this.out.byte(OP.BINPUT);
      this.out.byte(i);
    } else {
      this.out.byte(OP.LONG_BINPUT);
      this.out.u32(i);
    }
    return i;
  }
  #getIdx(i: number): void {
    if (i < 256) {
      this.out.byte(OP.BINGET);
      this.out.byte(i);
    } else {
      this.out.byte(OP.LONG_BINGET);
      this.out.u32(i);
    }
  }
  /** BINGET of `obj` when it was saved before; false when it was not. */
  #get(obj: object): boolean {
    const i = this.#objects.get(obj);
    if (i === undefined) return false;
    this.#getIdx(i);
    return true;
  }
  #global(module: string, name: string): void {
    const q = `${module}.${name}`;
    const hit = this.#globals.get(q);
    if (hit !== undefined) return this.#getIdx(hit);
    this.out.byte(OP.GLOBAL);
    this.out.ascii(`${module === "builtins" ? "__builtin__" : module}\n${name}\n`);
    this.#globals.set(q, this.#put());
  }
  /** A str; `fresh` ones are never shared by value (torch's own key strings). */
  #str(s: string, fresh = false): void {
    const hit = fresh ? undefined : this.#strings.get(s);
    if (hit !== undefined) return this.#getIdx(hit);
    const b = this.out.utf8(s);
    this.out.byte(OP.BINUNICODE);
    this.out.u32(b.length);
    this.out.bytes(b);
    const i = this.#put();
    if (!fresh) this.#strings.set(s, i);
  }
  #int(x: number | bigint): void {
    const out = this.out;
    if (typeof x === "number" && x >= 0 && x <= 0xff) {
      out.byte(OP.BININT1);
      out.byte(x);
    } else if (typeof x === "number" && x >= 0 && x <= 0xffff) {
      out.byte(OP.BININT2);
      out.u16(x);
    } else if (x >= -0x80000000 && x <= 0x7fffffff) {
      out.byte(OP.BININT);
      out.u32(Number(x) >>> 0);
    } else {
      const b = encodeLong(BigInt(x));
      if (b.length < 256) {
        out.byte(OP.LONG1);
        out.byte(b.length);
      } else {
        out.byte(OP.LONG4);
        out.u32(b.length);
      }
      out.bytes(b);
    }
  }
  #float(x: number): void {
    this.out.byte(OP.BINFLOAT);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, x, false);
    this.out.bytes(b);
  }
  /** A tuple; `owner` is the PyTuple to memoize by identity (fresh tuples pass undefined). */
  #tuple(items: readonly PyValue[], depth: number, owner?: object): void {
    if (items.length === 0) {
      this.out.byte(OP.EMPTY_TUPLE);
      return;
    }
    if (items.length <= 3) {
      for (const x of items) this.save(x, depth + 1);
      this.out.byte(OP.TUPLE1 + items.length - 1);
    } else {
      this.out.byte(OP.MARK);
      for (const x of items) this.save(x, depth + 1);
      this.out.byte(OP.TUPLE);
    }
    const i = this.#put();
    if (owner) this.#objects.set(owner, i);
  }
  #pair(entry: [PyValue, PyValue], depth: number): void {
    this.save(entry[0], depth + 1);
    this.save(entry[1], depth + 1);
  }
  /** `batch_dict_exact` (exact dicts): one item -> SETITEM; else MARK..SETITEMS per 1000, with a trailing empty batch when the size is a multiple of 1000. */
  #dictItemsExact(entries: [PyValue, PyValue][], depth: number): void {
    if (entries.length === 0) return;
    if (entries.length === 1) {
      this.#pair(entries[0]!, depth);
      this.out.byte(OP.SETITEM);
      return;
    }
    let i = 0;
    let n: number;
    do {
      n = 0;
      this.out.byte(OP.MARK);
      while (i < entries.length) {
        this.#pair(entries[i++]!, depth);
        if (++n === 1000) break;
      }
      this.out.byte(OP.SETITEMS);
    } while (n === 1000);
  }
  /** `batch_dict` (items from an iterator, as OrderedDict's reduce gives): a lone item in a batch -> SETITEM. */
  #dictItemsIter(entries: [PyValue, PyValue][], depth: number): void {
    let i = 0;
    let n = 0;
    do {
      if (i >= entries.length) break;
      if (i + 1 === entries.length) {
        this.#pair(entries[i]!, depth);
        this.out.byte(OP.SETITEM);
        break;
      }
      this.out.byte(OP.MARK);
      n = 0;
      while (n < 1000 && i < entries.length) {
        this.#pair(entries[i++]!, depth);
        n++;
      }
      this.out.byte(OP.SETITEMS);
    } while (n === 1000);
  }
  /** `batch_list_exact`: one item -> APPEND; else MARK..APPENDS per 1000. */
  #listItems(items: readonly PyValue[], depth: number): void {
    if (items.length === 0) return;
    if (items.length === 1) {
      this.save(items[0]!, depth + 1);
      this.out.byte(OP.APPEND);
      return;
    }
    let i = 0;
    while (i < items.length) {
      this.out.byte(OP.MARK);
      for (let n = 0; n < 1000 && i < items.length; n++) this.save(items[i++]!, depth + 1);
      this.out.byte(OP.APPENDS);
    }
  }
  /** `OrderedDict()` as torch's backward hooks: a fresh object each time. */
  #reduceEmptyOrderedDict(): void {
    this.#global("collections", "OrderedDict");
    this.out.byte(OP.EMPTY_TUPLE);
    this.out.byte(OP.REDUCE);
    this.#put();
  }
  /** The persistent id `('storage', <storage class>, key, 'cpu', numel)` of a tensor's storage. */
  #storageId(t: TorchTensor, v3: boolean): void {
    const info = DTYPES[t.dtype];
    this.out.byte(OP.MARK);
    this.#str("storage");
    if (v3) this.#global("torch.storage", "UntypedStorage");
    else this.#global("torch", info.storage!);
    // torch's key strings are its own objects (id_map values): repeats of one storage reuse them,
    // but they are never the same object as an equal string elsewhere in the pickle
    const key = this.#storageKey(t.storage);
    const seen = this.#storageKeys.get(key);
    if (seen !== undefined) this.#getIdx(seen);
    else {
      this.#str(key, true);
      this.#storageKeys.set(key, this.#memoSize - 1);
    }
    this.#str("cpu");
    this.#int(v3 ? t.storage.numel * info.size : t.storage.numel);
    this.out.byte(OP.TUPLE);
    this.#put();
    this.out.byte(OP.BINPERSID);
  }
  /** `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` (v3 adds the dtype). */
  #tensor(t: TorchTensor, depth: number): void {
    const info = DTYPES[t.dtype];
    const v3 = info.storage === undefined;
    this.#global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    this.out.byte(OP.MARK); // the args tuple (6 or 7 items)
    this.#storageId(t, v3);
    this.#int(t.storageOffset);
    this.#tuple(t.shape, depth);
    this.#tuple(t.stride, depth);
    this.out.byte(t.requiresGrad && !t.parameter ? OP.NEWTRUE : OP.NEWFALSE);
    this.#reduceEmptyOrderedDict();
    if (v3) this.#global("torch", info.torch.slice("torch.".length));
    this.out.byte(OP.TUPLE);
    this.#put();
    this.out.byte(OP.REDUCE);
  }
  /** A tensor, or a parameter as `_rebuild_parameter(tensor, requires_grad, hooks)`. */
  #tensorValue(v: TorchTensor, depth: number): void {
    if (v.parameter) {
      this.#global("torch._utils", "_rebuild_parameter");
      this.#tensor(v, depth);
      this.#put(); // the inner tensor (a fresh `param.data` object in Python)
      this.out.byte(v.requiresGrad ? OP.NEWTRUE : OP.NEWFALSE);
      this.#reduceEmptyOrderedDict();
      this.out.byte(OP.TUPLE1 + 2);
      this.#put();
      this.out.byte(OP.REDUCE);
    } else this.#tensor(v, depth);
    this.#objects.set(v, this.#put());
  }
  /** Protocol 2 bytes: `_codecs.encode(<latin-1 str>, 'latin1')`. */
  #bytes(v: Uint8Array): void {
    this.#global("_codecs", "encode");
    let s = "";
    for (let i = 0; i < v.length; i += 8192) s += String.fromCharCode(...v.subarray(i, i + 8192));
    this.#str(s, true);
    this.#str("latin1");
    this.out.byte(OP.TUPLE1 + 1);
    this.#put();
    this.out.byte(OP.REDUCE);
    this.#objects.set(v, this.#put());
  }
  #pyTuple(v: PyTuple, depth: number): void {
    if (v.kind !== "torch.Size") {
      return this.#tuple(v.items, depth, v.items.length > 0 ? v : undefined);
    }
    this.#global("torch", "Size");
    this.#tuple(v.items, depth);
    this.out.byte(OP.TUPLE1);
    this.#put();
    this.out.byte(OP.REDUCE);
    this.#objects.set(v, this.#put());
  }
  #dict(v: PyDict, depth: number): void {
    const entries = [...v.map] as [PyValue, PyValue][];
    if (v.kind !== "OrderedDict") {
      this.out.byte(OP.EMPTY_DICT);
      this.#objects.set(v, this.#put());
      return this.#dictItemsExact(entries, depth);
    }
    this.#global("collections", "OrderedDict");
    this.out.byte(OP.EMPTY_TUPLE);
    this.out.byte(OP.REDUCE);
    this.#objects.set(v, this.#put());
    this.#dictItemsIter(entries, depth);
    if (v.attrs && v.attrs.size > 0) {
      this.save(v.attrs, depth + 1);
      this.out.byte(OP.BUILD);
    }
  }
  /** A record as `cls(*args)`, then its list items, dict items and state (`BUILD`). */
  #record(v: PyRecord, depth: number): void {
    const dot = v.className.lastIndexOf(".");
    if (dot <= 0) {
      throw new CkptError("PY_TYPE", `Cannot pickle record of "${v.className}": it has no module`);
    }
    this.#global(v.className.slice(0, dot), v.className.slice(dot + 1));
    this.#tuple(v.args, depth);
    this.out.byte(OP.REDUCE);
    this.#objects.set(v, this.#put());
    if (v.listItems) this.#listItems(v.listItems, depth);
    if (v.dictItems) this.#dictItemsIter([...v.dictItems.map] as [PyValue, PyValue][], depth);
    if (v.state !== undefined) {
      this.save(v.state, depth + 1);
      this.out.byte(OP.BUILD);
    }
  }
  /** Scalars: None, bools, ints, floats, strings, globals; false for anything else. */
  #scalar(v: PyValue): boolean {
    if (v === null) this.out.byte(OP.NONE);
    else if (v === true) this.out.byte(OP.NEWTRUE);
    else if (v === false) this.out.byte(OP.NEWFALSE);
    else if (typeof v === "number") {
      if (Number.isSafeInteger(v)) this.#int(v);
      else if (Number.isInteger(v)) this.#int(BigInt(v)); // whole but beyond 2^53: still a Python int
      else this.#float(v);
    } else if (typeof v === "bigint") this.#int(v);
    else if (typeof v === "string") this.#str(v);
    else if (v instanceof PyFloat) this.#float(v.value);
    else if (v instanceof PyGlobal) this.#global(v.module, v.name);
    else return false;
    return true;
  }

  /** Saves one value at nesting `depth`. */
  save(v: PyValue, depth: number): void {
    if (depth > this.#maxDepth) {
      throw new CkptError(
        "PY_TOO_DEEP",
        `Cannot pickle value: it is nested deeper than ${this.#maxDepth} levels`,
      );
    }
    if (this.#scalar(v) || this.#get(v as object)) return;
    if (v instanceof Uint8Array) return this.#bytes(v);
    if (v instanceof PyTuple) return this.#pyTuple(v, depth);
    if (Array.isArray(v)) {
      this.out.byte(OP.EMPTY_LIST);
      this.#objects.set(v, this.#put());
      return this.#listItems(v, depth);
    }
    if (v instanceof PyDict) return this.#dict(v, depth);
    if (v instanceof TorchTensor) return this.#tensorValue(v, depth);
    if (v instanceof PyRecord) return this.#record(v, depth);
    throw new CkptError("PY_TYPE", `Cannot pickle a ${pyTypeName(v)}`);
  }
}
