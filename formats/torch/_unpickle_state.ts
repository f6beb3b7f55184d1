/**
 * The state of the restricted pickle machine (bytes, position, stack, marks, memo, limits) and
 * its primitive steps (read a number, push, pop, look up the memo, resolve a global), shared by
 * the opcode handlers in `_unpickle_ops_*.ts`.
 * @module
 */
import { CkptError, type ErrorCode } from "../../errors.ts";
import type { StorageHandle } from "./_storage_handle.ts";
import { isAllowedGlobal, PY2_MODULES } from "./_unpickle_globals.ts";
import {
  PyDict,
  PyFloat,
  PyGlobal,
  type PyKey,
  PyRecord,
  PyTuple,
  pyTypeName,
  type PyValue,
} from "./values.ts";

/** What the stack holds: values, and storages on their way into a tensor rebuild. */
export type Item = PyValue | StorageHandle;

/** The machine's options (see `UnpickleOptions` in `unpickle.ts`). */
export interface MachineOptions {
  file?: string;
  records?: Iterable<string> | ((qualname: string) => boolean);
  persistentLoad?: (pid: PyValue, offset: number) => StorageHandle | PyValue;
  maxDepth?: number;
  maxMemo?: number;
  maxStack?: number;
  maxLongBytes?: number;
  maxExpanded?: number;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** The pickle machine's state and primitive steps. */
export class PickleState {
  readonly b: Uint8Array;
  readonly dv: DataView;
  /** Next byte to read. */
  pos = 0;
  /** Offset of the opcode being run (for errors). */
  op = 0;
  readonly stack: Item[] = [];
  readonly marks: number[] = [];
  readonly memo = new Map<number, Item>();
  readonly file: string | undefined;
  readonly isRecord: (q: string) => boolean;
  readonly persistentLoad: MachineOptions["persistentLoad"];
  readonly maxDepth: number;
  readonly maxMemo: number;
  readonly maxStack: number;
  readonly maxLong: number;
  readonly maxExpanded: number;

  constructor(bytes: Uint8Array, o: MachineOptions) {
    this.b = bytes;
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.file = o.file;
    const r = o.records;
    if (r === undefined) this.isRecord = () => false;
    else if (typeof r === "function") this.isRecord = r;
    else {
      const set = new Set(r);
      this.isRecord = (q) => set.has(q);
    }
    this.persistentLoad = o.persistentLoad;
    const cap = Math.min(10_000_000, bytes.byteLength + 16);
    this.maxDepth = o.maxDepth ?? 1000;
    this.maxMemo = o.maxMemo ?? cap;
    this.maxStack = o.maxStack ?? cap;
    this.maxLong = o.maxLongBytes ?? 4096;
    this.maxExpanded = o.maxExpanded ?? 10_000_000;
  }

  /** A coded error naming the opcode's byte offset. */
  err(code: ErrorCode, msg: string, details?: Record<string, unknown>): CkptError {
    return new CkptError(code, `Cannot unpickle: ${msg} (at byte ${this.op})`, {
      ...(this.file === undefined ? {} : { file: this.file }),
      offset: this.op,
      ...(details === undefined ? {} : { details }),
    });
  }

  /** Takes `n` bytes; returns where they start. */
  need(n: number): number {
    if (n < 0 || this.pos + n > this.b.byteLength) {
      throw this.err(
        "PICKLE_TRUNCATED",
        `needs ${n} more bytes at byte ${this.pos}, the pickle has ${this.b.byteLength}`,
      );
    }
    const p = this.pos;
    this.pos += n;
    return p;
  }
  u8(): number {
    return this.b[this.need(1)]!;
  }
  u16(): number {
    return this.dv.getUint16(this.need(2), true);
  }
  u32(): number {
    return this.dv.getUint32(this.need(4), true);
  }
  i32(): number {
    return this.dv.getInt32(this.need(4), true);
  }
  u64(): number {
    const p = this.need(8);
    const v = this.dv.getBigUint64(p, true);
    if (v > BigInt(this.b.byteLength)) {
      throw this.err(
        "PICKLE_TRUNCATED",
        `length ${v} exceeds the pickle's ${this.b.byteLength} bytes`,
      );
    }
    return Number(v);
  }
  bytes(n: number): Uint8Array {
    const p = this.need(n);
    return this.b.subarray(p, p + n);
  }
  line(): string {
    const end = this.b.indexOf(0x0a, this.pos);
    if (end < 0 || end - this.pos > 4096) {
      throw this.err("PICKLE_TRUNCATED", "a text line has no end within 4096 bytes");
    }
    const s = this.b.subarray(this.pos, end);
    this.pos = end + 1;
    return String.fromCharCode(...s);
  }
  str(n: number): string {
    const b = this.bytes(n);
    try {
      return utf8.decode(b);
    } catch {
      throw this.err("PICKLE_MALFORMED", "a string is not valid UTF-8");
    }
  }

  push(v: Item): void {
    if (this.stack.length + this.marks.length >= this.maxStack) {
      throw this.err("PICKLE_LIMIT", `stack exceeds ${this.maxStack} entries`);
    }
    this.stack.push(v);
  }
  pop(): Item {
    const base = this.marks.length > 0 ? this.marks[this.marks.length - 1]! : 0;
    if (this.stack.length <= base) throw this.err("PICKLE_STACK", "pops from an empty stack");
    return this.stack.pop()!;
  }
  /** Pops a value (storages travel as values into rebuilds; the result check refuses any left). */
  popValue(): PyValue {
    return this.pop() as PyValue;
  }
  top(): Item {
    const base = this.marks.length > 0 ? this.marks[this.marks.length - 1]! : 0;
    if (this.stack.length <= base) throw this.err("PICKLE_STACK", "reads an empty stack");
    return this.stack[this.stack.length - 1]!;
  }
  popMark(): Item[] {
    const m = this.marks.pop();
    if (m === undefined) throw this.err("PICKLE_STACK", "pops a MARK that was never pushed");
    return this.stack.splice(m);
  }
  memoPut(idx: number, v: Item): void {
    if (!this.memo.has(idx) && this.memo.size >= this.maxMemo) {
      throw this.err("PICKLE_LIMIT", `memo exceeds ${this.maxMemo} entries`);
    }
    this.memo.set(idx, v);
  }
  memoGet(idx: number): Item {
    if (!this.memo.has(idx)) throw this.err("PICKLE_MEMO", `memo entry ${idx} is missing`);
    return this.memo.get(idx)!;
  }
  /** `v` as a dict key; `PICKLE_MALFORMED` for unhashable values. */
  key(v: Item): PyKey {
    if (
      v === null || typeof v === "string" || typeof v === "number" || typeof v === "bigint" ||
      typeof v === "boolean" || v instanceof PyFloat || v instanceof PyTuple ||
      v instanceof PyRecord || v instanceof PyGlobal
    ) return v;
    throw this.err(
      "PICKLE_MALFORMED",
      `uses an unhashable ${pyTypeName(v as PyValue)} as a dict key`,
    );
  }
  /** A little-endian two's-complement int (`LONG1`/`LONG4`); no bytes is 0. */
  long(b: Uint8Array): number | bigint {
    if (b.length > this.maxLong) {
      throw this.err("PICKLE_LIMIT", `an int of ${b.length} bytes exceeds ${this.maxLong}`);
    }
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  }
  /** `module.name` when allowed (or a record class); `PICKLE_GLOBAL` otherwise. */
  global(module: string, name: string): PyGlobal {
    const mod = PY2_MODULES[module] ?? module;
    const q = `${mod}.${name}`;
    if (isAllowedGlobal(q) || this.isRecord(q)) return new PyGlobal(mod, name);
    throw this.err("PICKLE_GLOBAL", `global ${q} is not allowed`, { global: q });
  }

  /** `APPEND`/`APPENDS` onto a list (or a record's list items). */
  appendTo(target: Item, items: PyValue[]): void {
    if (Array.isArray(target)) {
      for (const v of items) target.push(v);
    } else if (target instanceof PyRecord && this.isRecord(target.className)) {
      (target.listItems ??= []).push(...items);
    } else {
      throw this.err(
        "PICKLE_MALFORMED",
        `APPEND on a ${pyTypeName(target as PyValue)}, not a list`,
      );
    }
  }

  /** `SETITEM`/`SETITEMS` onto a dict (or a record's dict items); `items` alternate key, value. */
  setItems(target: Item, items: Item[]): void {
    let d: PyDict;
    if (target instanceof PyDict) {
      d = target;
    } else if (target instanceof PyRecord && this.isRecord(target.className)) {
      d = target.dictItems ??= new PyDict();
    } else {
      throw this.err(
        "PICKLE_MALFORMED",
        `SETITEM on a ${pyTypeName(target as PyValue)}, not a dict`,
      );
    }
    for (let i = 0; i < items.length; i += 2) {
      d.set(this.key(items[i]!), items[i + 1]! as PyValue);
    }
  }

  /** Resolves a persistent id through `persistentLoad`, errors placed at this opcode. */
  persid(pid: PyValue): StorageHandle | PyValue {
    if (!this.persistentLoad) {
      throw this.err("PICKLE_PERSID", "a persistent id appears but no storages are available");
    }
    try {
      return this.persistentLoad(pid, this.op);
    } catch (e) {
      if (e instanceof CkptError) {
        if (e.offset !== undefined) throw e;
        throw new CkptError(e.code, `${e.message} (at byte ${this.op})`, {
          ...(this.file === undefined ? {} : { file: this.file }),
          offset: this.op,
          cause: e,
        });
      }
      throw e;
    }
  }
}
