/**
 * Opcodes that shape the stack: marks, lists, tuples, dicts and sets and the items added to them,
 * and the memo (`PUT`/`GET`). {@linkcode containerOp} runs one and says whether it knew it.
 * @module
 */
import type { PickleState } from "./_unpickle_state.ts";
import { PyDict, PyRecord, PyTuple, type PyValue } from "./values.ts";

/** Runs `op` when it is a stack, container or memo opcode; false otherwise. */
export function containerOp(m: PickleState, op: number): boolean {
  switch (op) {
    case 0x71: // BINPUT
      m.memoPut(m.u8(), m.top());
      return true;
    case 0x72: // LONG_BINPUT
      m.memoPut(m.u32(), m.top());
      return true;
    case 0x94: // MEMOIZE
      m.memoPut(m.memo.size, m.top());
      return true;
    case 0x68: // BINGET
      m.push(m.memoGet(m.u8()));
      return true;
    case 0x6a: // LONG_BINGET
      m.push(m.memoGet(m.u32()));
      return true;
    case 0x28: // MARK
      if (m.stack.length + m.marks.length >= m.maxStack) {
        throw m.err("PICKLE_LIMIT", `stack exceeds ${m.maxStack} entries`);
      }
      m.marks.push(m.stack.length);
      return true;
    default:
      return buildOp(m, op) || stackOp(m, op);
  }
}

/** Opcodes that build a container. */
function buildOp(m: PickleState, op: number): boolean {
  switch (op) {
    case 0x5d: // EMPTY_LIST
      m.push([]);
      return true;
    case 0x29: // EMPTY_TUPLE
      m.push(new PyTuple([]));
      return true;
    case 0x7d: // EMPTY_DICT
      m.push(new PyDict());
      return true;
    case 0x8f: // EMPTY_SET
      m.push(new PyRecord("builtins.set", [[]]));
      return true;
    case 0x6c: // LIST
      m.push(m.popMark() as PyValue[]);
      return true;
    case 0x74: // TUPLE
      m.push(new PyTuple(m.popMark() as PyValue[]));
      return true;
    case 0x85: // TUPLE1
    case 0x86: // TUPLE2
    case 0x87: { // TUPLE3
      const n = op - 0x84;
      const items: PyValue[] = [];
      for (let i = 0; i < n; i++) items.unshift(m.popValue());
      m.push(new PyTuple(items));
      return true;
    }
    case 0x91: // FROZENSET
      m.push(new PyRecord("builtins.frozenset", [m.popMark() as PyValue[]]));
      return true;
    case 0x64: { // DICT
      const items = m.popMark();
      if (items.length % 2) throw m.err("PICKLE_MALFORMED", "DICT has an odd number of items");
      const d = new PyDict();
      for (let i = 0; i < items.length; i += 2) d.set(m.key(items[i]!), items[i + 1] as PyValue);
      m.push(d);
      return true;
    }
    default:
      return false;
  }
}

/** Opcodes that add to the container on top of the stack, or drop and copy stack items. */
function stackOp(m: PickleState, op: number): boolean {
  switch (op) {
    case 0x61: { // APPEND
      const v = m.popValue();
      m.appendTo(m.top(), [v]);
      return true;
    }
    case 0x65: { // APPENDS
      const items = m.popMark() as PyValue[];
      m.appendTo(m.top(), items);
      return true;
    }
    case 0x90: { // ADDITEMS
      const items = m.popMark() as PyValue[];
      const s = m.top();
      if (!(s instanceof PyRecord) || !Array.isArray(s.args[0])) {
        throw m.err("PICKLE_MALFORMED", "ADDITEMS on something that is not a set");
      }
      s.args[0].push(...items);
      return true;
    }
    case 0x73: { // SETITEM
      const v = m.popValue();
      const k = m.key(m.pop());
      m.setItems(m.top(), [k, v]);
      return true;
    }
    case 0x75: { // SETITEMS
      const items = m.popMark();
      if (items.length % 2) throw m.err("PICKLE_MALFORMED", "SETITEMS has an odd number of items");
      m.setItems(m.top(), items);
      return true;
    }
    case 0x30: // POP
      if (m.stack.length === (m.marks.at(-1) ?? -1)) m.marks.pop();
      else m.pop();
      return true;
    case 0x67: { // GET
      const n = Number.parseInt(m.line(), 10);
      if (!Number.isSafeInteger(n)) throw m.err("PICKLE_MALFORMED", "GET has a bad index");
      m.push(m.memoGet(n));
      return true;
    }
    case 0x70: { // PUT
      const n = Number.parseInt(m.line(), 10);
      if (!Number.isSafeInteger(n)) throw m.err("PICKLE_MALFORMED", "PUT has a bad index");
      m.memoPut(n, m.top());
      return true;
    }
    case 0x31: // POP_MARK
      m.popMark();
      return true;
    case 0x32: // DUP
      m.push(m.top());
      return true;
    default:
      return false;
  }
}
