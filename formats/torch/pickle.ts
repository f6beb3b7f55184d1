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

class Out {
  buf = new Uint8Array(4096);
  len = 0;
  #enc = new TextEncoder();
  #ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const nb = new Uint8Array(cap);
    nb.set(this.buf.subarray(0, this.len));
    this.buf = nb;
  }
  byte(b: number): void {
    this.#ensure(1);
    this.buf[this.len++] = b;
  }
  bytes(b: Uint8Array): void {
    this.#ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  u16(v: number): void {
    this.byte(v & 0xff);
    this.byte(v >>> 8);
  }
  u32(v: number): void {
    this.#ensure(4);
    new DataView(this.buf.buffer).setUint32(this.len, v, true);
    this.len += 4;
  }
  ascii(s: string): void {
    for (let i = 0; i < s.length; i++) this.byte(s.charCodeAt(i));
  }
  utf8(s: string): Uint8Array {
    return this.#enc.encode(s);
  }
}

const OP = {
  PROTO: 0x80,
  STOP: 0x2e,
  MARK: 0x28,
  NONE: 0x4e,
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
  BININT: 0x4a,
  BININT1: 0x4b,
  BININT2: 0x4d,
  LONG1: 0x8a,
  LONG4: 0x8b,
  BINFLOAT: 0x47,
  BINUNICODE: 0x58,
  EMPTY_LIST: 0x5d,
  APPEND: 0x61,
  APPENDS: 0x65,
  EMPTY_TUPLE: 0x29,
  TUPLE: 0x74,
  TUPLE1: 0x85,
  EMPTY_DICT: 0x7d,
  SETITEM: 0x73,
  SETITEMS: 0x75,
  GLOBAL: 0x63,
  REDUCE: 0x52,
  BUILD: 0x62,
  BINPERSID: 0x51,
  BINPUT: 0x71,
  LONG_BINPUT: 0x72,
  BINGET: 0x68,
  LONG_BINGET: 0x6a,
} as const;

/** Two's-complement little-endian bytes of `x` as Python's `encode_long` makes them. */
export function encodeLong(x: bigint): Uint8Array {
  if (x === 0n) return new Uint8Array(0);
  const bitLen = (x < 0n ? -x : x).toString(2).length;
  let n = (bitLen >> 3) + 1;
  const out = new Uint8Array(n);
  let v = x < 0n ? (1n << BigInt(8 * n)) + x : x;
  for (let i = 0; i < n; i++) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  if (x < 0n && n > 1 && out[n - 1] === 0xff && (out[n - 2]! & 0x80) !== 0) n--;
  return out.subarray(0, n);
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
  const out = new Out();
  // CPython's memo: every str, non-empty tuple, list, dict, global and REDUCE result gets a BINPUT;
  // a second save of the same object is a BINGET. Objects keep their identity here (what the reader
  // built); strings and globals, which have no identity in JS, are memoized by value (Python's
  // interned names and constants behave that way).
  let memoSize = 0;
  const objects = new Map<object, number>();
  const strings = new Map<string, number>();
  const globals = new Map<string, number>();
  const storageKeys = new Map<string, number>();
  const keys = new Map<TorchStorage, string>();
  const storageKey = options.storageKey ?? ((s: TorchStorage) => {
    let k = keys.get(s);
    if (k === undefined) keys.set(s, k = String(keys.size));
    return k;
  });
  const maxDepth = options.maxDepth ?? 1000;

  /** Emits BINPUT for the next memo slot and returns it. */
  const put = (): number => {
    const i = memoSize++;
    if (i < 256) {
      out.byte(OP.BINPUT);
      out.byte(i);
    } else {
      out.byte(OP.LONG_BINPUT);
      out.u32(i);
    }
    return i;
  };
  const getIdx = (i: number): void => {
    if (i < 256) {
      out.byte(OP.BINGET);
      out.byte(i);
    } else {
      out.byte(OP.LONG_BINGET);
      out.u32(i);
    }
  };
  const get = (obj: object): boolean => {
    const i = objects.get(obj);
    if (i === undefined) return false;
    getIdx(i);
    return true;
  };
  const global = (module: string, name: string): void => {
    const q = `${module}.${name}`;
    const hit = globals.get(q);
    if (hit !== undefined) return getIdx(hit);
    out.byte(OP.GLOBAL);
    out.ascii(`${module === "builtins" ? "__builtin__" : module}\n${name}\n`);
    globals.set(q, put());
  };
  const str = (s: string, fresh = false): void => {
    const hit = fresh ? undefined : strings.get(s);
    if (hit !== undefined) return getIdx(hit);
    const b = out.utf8(s);
    out.byte(OP.BINUNICODE);
    out.u32(b.length);
    out.bytes(b);
    const i = put();
    if (!fresh) strings.set(s, i);
  };
  const int = (x: number | bigint): void => {
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
  };
  const float = (x: number): void => {
    out.byte(OP.BINFLOAT);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, x, false);
    out.bytes(b);
  };
  /** A tuple; `owner` is the PyTuple to memoize by identity (fresh tuples pass undefined). */
  const tuple = (items: readonly PyValue[], depth: number, owner?: object): void => {
    if (items.length === 0) {
      out.byte(OP.EMPTY_TUPLE);
      return;
    }
    if (items.length <= 3) {
      for (const x of items) save(x, depth + 1);
      out.byte(OP.TUPLE1 + items.length - 1);
    } else {
      out.byte(OP.MARK);
      for (const x of items) save(x, depth + 1);
      out.byte(OP.TUPLE);
    }
    const i = put();
    if (owner) objects.set(owner, i);
  };
  /** `batch_dict_exact` (exact dicts): one item -> SETITEM; else MARK..SETITEMS per 1000, with a trailing empty batch when the size is a multiple of 1000. */
  const dictItemsExact = (entries: [PyValue, PyValue][], depth: number): void => {
    if (entries.length === 0) return;
    if (entries.length === 1) {
      save(entries[0]![0], depth + 1);
      save(entries[0]![1], depth + 1);
      out.byte(OP.SETITEM);
      return;
    }
    let i = 0;
    let n: number;
    do {
      n = 0;
      out.byte(OP.MARK);
      while (i < entries.length) {
        save(entries[i]![0], depth + 1);
        save(entries[i]![1], depth + 1);
        i++;
        if (++n === 1000) break;
      }
      out.byte(OP.SETITEMS);
    } while (n === 1000);
  };
  /** `batch_dict` (items from an iterator, as OrderedDict's reduce gives): a lone item in a batch -> SETITEM. */
  const dictItemsIter = (entries: [PyValue, PyValue][], depth: number): void => {
    let i = 0;
    let n = 0;
    do {
      if (i >= entries.length) break;
      if (i + 1 === entries.length) {
        save(entries[i]![0], depth + 1);
        save(entries[i]![1], depth + 1);
        out.byte(OP.SETITEM);
        break;
      }
      out.byte(OP.MARK);
      n = 0;
      while (n < 1000 && i < entries.length) {
        save(entries[i]![0], depth + 1);
        save(entries[i]![1], depth + 1);
        i++;
        n++;
      }
      out.byte(OP.SETITEMS);
    } while (n === 1000);
  };
  /** `batch_list_exact`: one item -> APPEND; else MARK..APPENDS per 1000. */
  const listItems = (items: readonly PyValue[], depth: number): void => {
    if (items.length === 0) return;
    if (items.length === 1) {
      save(items[0]!, depth + 1);
      out.byte(OP.APPEND);
      return;
    }
    let i = 0;
    while (i < items.length) {
      out.byte(OP.MARK);
      for (let n = 0; n < 1000 && i < items.length; n++) save(items[i++]!, depth + 1);
      out.byte(OP.APPENDS);
    }
  };
  /** `OrderedDict()` as torch's backward hooks: a fresh object each time. */
  const emptyOrderedDict = (): void => {
    global("collections", "OrderedDict");
    out.byte(OP.EMPTY_TUPLE);
    out.byte(OP.REDUCE);
    put();
  };
  const tensor = (t: TorchTensor, depth: number): void => {
    const info = DTYPES[t.dtype];
    const v3 = info.storage === undefined;
    global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    out.byte(OP.MARK); // the args tuple (6 or 7 items)
    out.byte(OP.MARK); // the persistent id tuple
    str("storage");
    if (v3) global("torch.storage", "UntypedStorage");
    else global("torch", info.storage!);
    // torch's key strings are its own objects (id_map values): repeats of one storage reuse them,
    // but they are never the same object as an equal string elsewhere in the pickle
    const key = storageKey(t.storage);
    const seen = storageKeys.get(key);
    if (seen !== undefined) getIdx(seen);
    else {
      str(key, true);
      storageKeys.set(key, memoSize - 1);
    }
    str("cpu");
    int(v3 ? t.storage.numel * info.size : t.storage.numel);
    out.byte(OP.TUPLE);
    put();
    out.byte(OP.BINPERSID);
    int(t.storageOffset);
    tuple(t.shape, depth);
    tuple(t.stride, depth);
    out.byte(t.requiresGrad && !t.parameter ? OP.NEWTRUE : OP.NEWFALSE);
    emptyOrderedDict();
    if (v3) global("torch", info.torch.slice("torch.".length));
    out.byte(OP.TUPLE);
    put();
    out.byte(OP.REDUCE);
  };

  const save = (v: PyValue, depth: number): void => {
    if (depth > maxDepth) {
      throw new CkptError(
        "PY_TOO_DEEP",
        `Cannot pickle value: it is nested deeper than ${maxDepth} levels`,
      );
    }
    if (v === null) return out.byte(OP.NONE);
    if (v === true) return out.byte(OP.NEWTRUE);
    if (v === false) return out.byte(OP.NEWFALSE);
    if (typeof v === "number") {
      if (Number.isSafeInteger(v)) return int(v);
      if (Number.isInteger(v)) return int(BigInt(v)); // whole but beyond 2^53: still a Python int
      return float(v);
    }
    if (typeof v === "bigint") return int(v);
    if (typeof v === "string") return str(v);
    if (v instanceof PyFloat) return float(v.value);
    if (v instanceof PyGlobal) return global(v.module, v.name);
    if (get(v)) return;
    if (v instanceof Uint8Array) {
      // protocol 2 bytes: _codecs.encode(<latin-1 str>, 'latin1')
      global("_codecs", "encode");
      let s = "";
      for (let i = 0; i < v.length; i += 8192) s += String.fromCharCode(...v.subarray(i, i + 8192));
      str(s, true);
      str("latin1");
      out.byte(OP.TUPLE1 + 1);
      put();
      out.byte(OP.REDUCE);
      objects.set(v, put());
      return;
    }
    if (v instanceof PyTuple) {
      if (v.kind === "torch.Size") {
        global("torch", "Size");
        tuple(v.items, depth);
        out.byte(OP.TUPLE1);
        put();
        out.byte(OP.REDUCE);
        objects.set(v, put());
        return;
      }
      return tuple(v.items, depth, v.items.length > 0 ? v : undefined);
    }
    if (Array.isArray(v)) {
      out.byte(OP.EMPTY_LIST);
      objects.set(v, put());
      listItems(v, depth);
      return;
    }
    if (v instanceof PyDict) {
      const entries = [...v.map] as [PyValue, PyValue][];
      if (v.kind === "OrderedDict") {
        global("collections", "OrderedDict");
        out.byte(OP.EMPTY_TUPLE);
        out.byte(OP.REDUCE);
        objects.set(v, put());
        dictItemsIter(entries, depth);
        if (v.attrs && v.attrs.size > 0) {
          save(v.attrs, depth + 1);
          out.byte(OP.BUILD);
        }
        return;
      }
      out.byte(OP.EMPTY_DICT);
      objects.set(v, put());
      dictItemsExact(entries, depth);
      return;
    }
    if (v instanceof TorchTensor) {
      if (v.parameter) {
        global("torch._utils", "_rebuild_parameter");
        tensor(v, depth);
        put(); // the inner tensor (a fresh `param.data` object in Python)
        out.byte(v.requiresGrad ? OP.NEWTRUE : OP.NEWFALSE);
        emptyOrderedDict();
        out.byte(OP.TUPLE1 + 2);
        put();
        out.byte(OP.REDUCE);
      } else tensor(v, depth);
      objects.set(v, put());
      return;
    }
    if (v instanceof PyRecord) {
      const dot = v.className.lastIndexOf(".");
      if (dot <= 0) {
        throw new CkptError(
          "PY_TYPE",
          `Cannot pickle record of "${v.className}": it has no module`,
        );
      }
      global(v.className.slice(0, dot), v.className.slice(dot + 1));
      tuple(v.args, depth);
      out.byte(OP.REDUCE);
      objects.set(v, put());
      if (v.listItems) listItems(v.listItems, depth);
      if (v.dictItems) dictItemsIter([...v.dictItems.map] as [PyValue, PyValue][], depth);
      if (v.state !== undefined) {
        save(v.state, depth + 1);
        out.byte(OP.BUILD);
      }
      return;
    }
    throw new CkptError("PY_TYPE", `Cannot pickle a ${pyTypeName(v)}`);
  };

  out.byte(OP.PROTO);
  out.byte(2);
  save(value, 0);
  out.byte(OP.STOP);
  return out.buf.slice(0, out.len);
}
