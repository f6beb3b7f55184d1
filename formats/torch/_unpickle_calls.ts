/**
 * The calls a pickle may make (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`): only the functions of the
 * weights-only allowlist, each implemented here without running anything (an `OrderedDict`, a
 * `torch.Size`, a tensor over a storage, ...); a record class makes an inert {@linkcode PyRecord}.
 * @module
 */
import { CkptError } from "../../errors.ts";
import { type DType, dtypeFromTorch } from "../dtype.ts";
import { StorageHandle } from "./_storage_handle.ts";
import { FUNCTION_GLOBALS, UNIMPLEMENTED } from "./_unpickle_globals.ts";
import type { Item, PickleState } from "./_unpickle_state.ts";
import { TorchTensor } from "./tensor.ts";
import { PyDict, PyGlobal, PyRecord, PyTuple, pyTypeName, type PyValue } from "./values.ts";

type Bad = (why: string) => CkptError;

/** Calls the allowed global `fn` with `args`; `how` names the opcode for errors. */
export function callGlobal(m: PickleState, fn: Item, args: PyValue[], how: string): PyValue {
  if (!(fn instanceof PyGlobal)) {
    throw m.err(
      "PICKLE_REDUCE",
      `${how} calls a ${pyTypeName(fn as PyValue)}, which is not callable`,
    );
  }
  const q = fn.qualname;
  if (m.isRecord(q) && !FUNCTION_GLOBALS.has(q)) return new PyRecord(q, args);
  if (!FUNCTION_GLOBALS.has(q)) {
    throw m.err("PICKLE_REDUCE", `${how} of ${q} is not allowed`, { global: q });
  }
  if (UNIMPLEMENTED.includes(q)) {
    throw m.err(
      "PICKLE_UNSUPPORTED",
      `${q} (quantized, sparse, nested or subclass tensors) is not supported`,
      { global: q },
    );
  }
  const bad: Bad = (why) => m.err("PICKLE_ARGS", `${q}${why}`, { global: q });
  const v = callBuiltin(m, q, args, bad) ?? callTensor(m, q, args, how, bad);
  if (v === undefined) throw bad(" has no implementation");
  return v;
}

/** The allowed calls that make plain values; undefined for the others. */
function callBuiltin(m: PickleState, q: string, args: PyValue[], bad: Bad): PyValue | undefined {
  switch (q) {
    case "collections.OrderedDict":
      return orderedDict(m, args, bad);
    case "collections.Counter":
    case "builtins.complex":
    case "torch.device":
    case "torch._utils._rebuild_meta_tensor_no_storage":
      return new PyRecord(q, args);
    case "builtins.set":
      return new PyRecord(q, [
        Array.isArray(args[0]) ? args[0] : args[0] instanceof PyTuple ? [...args[0].items] : [],
      ]);
    case "builtins.bytearray": {
      if (args.length === 0) return new Uint8Array(0);
      if (args[0] instanceof Uint8Array) return args[0];
      if (typeof args[0] === "string") return encode(args[0], args[1], bad);
      throw bad(" needs bytes or a string");
    }
    case "_codecs.encode": {
      if (typeof args[0] !== "string") throw bad(" needs a string");
      return encode(args[0], args[1], bad);
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
    default:
      return undefined;
  }
}

/** `OrderedDict()`, `OrderedDict(dict)` or `OrderedDict([(k, v), ...])`. */
function orderedDict(m: PickleState, args: PyValue[], bad: Bad): PyDict {
  const d = new PyDict([], "OrderedDict");
  if (args.length === 0) return d;
  const src = args[0];
  if (src instanceof PyDict) {
    for (const [k, v] of src) d.set(k, v);
    return d;
  }
  if (!Array.isArray(src)) throw bad(" needs a dict or a list of pairs");
  for (const pair of src) {
    const items = pair instanceof PyTuple ? pair.items : Array.isArray(pair) ? pair : undefined;
    if (!items || items.length !== 2) throw bad(" needs (key, value) pairs");
    d.set(m.key(items[0]!), items[1]!);
  }
  return d;
}

/** A tensor marked as an `nn.Parameter`, with `requiresGrad` as given. */
function asParameter(t: TorchTensor, requiresGrad: boolean): TorchTensor {
  return new TorchTensor(t.storage, t.shape, {
    stride: t.stride,
    storageOffset: t.storageOffset,
    requiresGrad,
    parameter: true,
    source: t.source,
  });
}

/** The allowed calls that make tensors and parameters; undefined for the others. */
function callTensor(
  m: PickleState,
  q: string,
  args: PyValue[],
  how: string,
  bad: Bad,
): PyValue | undefined {
  switch (q) {
    case "torch._utils._rebuild_tensor":
    case "torch._utils._rebuild_tensor_v2":
    case "torch._utils._rebuild_tensor_v3":
      return rebuildTensor(m, q, args, bad);
    case "torch._utils._rebuild_parameter":
    case "torch._utils._rebuild_parameter_with_state":
    case "torch.nn.parameter.Parameter": {
      const t = args[0];
      if (!(t instanceof TorchTensor)) throw bad(" needs a tensor");
      const rg = args.length > 1 ? args[1] : true;
      if (typeof rg !== "boolean") throw bad(" needs a bool requires_grad");
      return asParameter(t, rg);
    }
    case "torch._tensor._rebuild_from_type_v2": {
      const [func, type, fargs] = args;
      if (!(type instanceof PyGlobal) || !(fargs instanceof PyTuple)) {
        throw bad(" needs (func, type, args, state)");
      }
      if (type.qualname !== "torch.Tensor" && type.qualname !== "torch.nn.parameter.Parameter") {
        throw m.err("PICKLE_REDUCE", `tensor subclass ${type.qualname} is not allowed`, {
          global: type.qualname,
        });
      }
      const t = callGlobal(m, func === undefined ? null : func, fargs.items, how);
      if (type.qualname === "torch.nn.parameter.Parameter" && t instanceof TorchTensor) {
        return asParameter(t, t.requiresGrad);
      }
      return t;
    }
    default:
      return undefined;
  }
}

/** `_codecs.encode(s, encoding)` for latin-1 and UTF-8. */
function encode(s: string, enc: PyValue | undefined, bad: Bad): Uint8Array {
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

/** A tuple or list of safe ints, else undefined. */
function ints(v: PyValue | undefined): number[] | undefined {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : undefined;
  if (!items || !items.every((x) => typeof x === "number" && Number.isSafeInteger(x))) {
    return undefined;
  }
  return items as number[];
}

/** The element type of a rebuilt tensor: v3 names it, v1/v2 take the typed storage's. */
function rebuildDType(
  m: PickleState,
  q: string,
  args: PyValue[],
  handle: StorageHandle,
  bad: Bad,
): DType {
  if (q !== "torch._utils._rebuild_tensor_v3") {
    if (handle.dtype === undefined) throw bad(" got an untyped storage");
    return handle.dtype;
  }
  const dt = args[6];
  if (!(dt instanceof PyGlobal) || dt.module !== "torch") throw bad(" needs a dtype");
  try {
    return dtypeFromTorch(dt.qualname);
  } catch (cause) {
    throw m.err("PICKLE_UNSUPPORTED", `dtype ${dt.qualname} is not supported`, { cause });
  }
}

/** `_rebuild_tensor(_v2/_v3)(storage, offset, size, stride, ...)`: a view of the storage. */
function rebuildTensor(m: PickleState, q: string, args: PyValue[], bad: Bad): TorchTensor {
  const handle = args[0] as unknown;
  if (!(handle instanceof StorageHandle)) throw bad(" needs a storage as its first argument");
  const [, offset, size, stride] = args;
  const sz = ints(size);
  const st = ints(stride);
  if (typeof offset !== "number" || !Number.isSafeInteger(offset) || !sz || !st) {
    throw bad(" needs an int offset and int tuples for size and stride");
  }
  const dtype = rebuildDType(m, q, args, handle, bad);
  const rg = args[4] ?? false;
  if (typeof rg !== "boolean") throw bad(" needs a bool requires_grad");
  const meta = q === "torch._utils._rebuild_tensor_v2"
    ? args[6]
    : q === "torch._utils._rebuild_tensor_v3"
    ? args[7]
    : undefined;
  if (meta instanceof PyDict && meta.size > 0) {
    throw m.err("PICKLE_UNSUPPORTED", "tensors with conj/neg bits are not supported");
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
      throw new CkptError(e.code, `${e.message} (at byte ${m.op})`, {
        file: handle.file,
        offset: m.op,
        cause: e,
      });
    }
    throw e;
  }
}
