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
import { StorageHandle } from "./_storage_handle.ts";
import { checkTree } from "./_unpickle_check.ts";
import { containerOp } from "./_unpickle_ops_containers.ts";
import { objectOp } from "./_unpickle_ops_objects.ts";
import { valueOp } from "./_unpickle_ops_values.ts";
import { PickleState } from "./_unpickle_state.ts";
import type { PyValue } from "./values.ts";

export { StorageHandle };
export { isAllowedGlobal, storageClassDType } from "./_unpickle_globals.ts";

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

/** The `PICKLE_OPCODE` error of an opcode no handler knows. */
function unknownOpcode(m: PickleState, op: number): Error {
  return m.err(
    "PICKLE_OPCODE",
    `opcode 0x${op.toString(16).padStart(2, "0")} (${
      JSON.stringify(String.fromCharCode(op))
    }) is not supported`,
    { opcode: op },
  );
}

/**
 * Runs the restricted machine over `bytes` (one pickle, up to its `STOP`) and returns the value.
 * Tensors come back as {@linkcode TorchTensor}s over the storages `persistentLoad` returned.
 * The opcodes are handled in groups, the most frequent in torch's pickles first: stack, containers
 * and memo (`_unpickle_ops_containers.ts`), plain values (`_unpickle_ops_values.ts`), globals,
 * calls and persistent ids (`_unpickle_ops_objects.ts`).
 */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions = {}): PyValue {
  const m = new PickleState(bytes, options);
  const end = bytes.byteLength;
  for (;;) {
    m.op = m.pos;
    const op = m.u8();
    if (op === 0x2e) { // STOP
      const v = m.popValue();
      checkTree(m, v);
      return v;
    }
    if (!containerOp(m, op) && !valueOp(m, op) && !objectOp(m, op)) throw unknownOpcode(m, op);
    if (m.pos > end) throw m.err("PICKLE_TRUNCATED", "ran past the end");
  }
}
