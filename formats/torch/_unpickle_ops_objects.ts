/**
 * Opcodes that name or make objects: globals, calls (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`), `BUILD`
 * and persistent ids. Nothing runs: calls go to {@linkcode callGlobal}, which knows the allowed
 * functions, or make inert records. {@linkcode objectOp} runs one and says whether it knew it.
 * @module
 */
import { callGlobal } from "./_unpickle_calls.ts";
import type { Item, PickleState } from "./_unpickle_state.ts";
import { PyDict, PyGlobal, PyRecord, PyTuple, pyTypeName, type PyValue } from "./values.ts";
import { TorchTensor } from "./tensor.ts";

/** `NEWOBJ(cls, args)`: a record of a record class; Parameter and OrderedDict are called. */
function newObj(m: PickleState, cls: Item, args: PyValue[], kwargs: PyDict | undefined): PyValue {
  if (!(cls instanceof PyGlobal)) {
    throw m.err("PICKLE_REDUCE", `NEWOBJ on a ${pyTypeName(cls as PyValue)}, not a class`);
  }
  if (m.isRecord(cls.qualname)) {
    const r = new PyRecord(cls.qualname, args);
    if (kwargs && kwargs.size > 0) r.args.push(kwargs);
    return r;
  }
  if (
    cls.qualname === "torch.nn.parameter.Parameter" || cls.qualname === "collections.OrderedDict"
  ) {
    return callGlobal(m, cls, args, "NEWOBJ");
  }
  throw m.err("PICKLE_REDUCE", `NEWOBJ of ${cls.qualname} is not allowed`, {
    global: cls.qualname,
  });
}

/** `BUILD`: a record's state (dict states merge), an OrderedDict's attributes. */
function build(m: PickleState, target: Item, state: PyValue): void {
  if (target instanceof PyRecord) {
    if (target.state instanceof PyDict && state instanceof PyDict) {
      for (const [k, v] of state) target.state.set(k, v);
    } else target.state = state;
    return;
  }
  if (target instanceof PyDict && target.kind === "OrderedDict") {
    if (state === null) return;
    if (!(state instanceof PyDict)) {
      throw m.err("PICKLE_BUILD", "BUILD on an OrderedDict with a state that is not a dict");
    }
    target.attrs ??= new PyDict();
    for (const [k, v] of state) target.attrs.set(k, v);
    return;
  }
  if (target instanceof TorchTensor) return; // torch sets tensor __dict__ state; nothing ckpt uses
  throw m.err("PICKLE_BUILD", `BUILD on a ${pyTypeName(target as PyValue)} is not allowed`);
}

/** Runs `op` when it names or makes an object; false otherwise. */
export function objectOp(m: PickleState, op: number): boolean {
  switch (op) {
    case 0x63: { // GLOBAL
      const module = m.line();
      const name = m.line();
      m.push(m.global(module, name));
      return true;
    }
    case 0x93: { // STACK_GLOBAL
      const name = m.pop();
      const module = m.pop();
      if (typeof name !== "string" || typeof module !== "string") {
        throw m.err("PICKLE_MALFORMED", "STACK_GLOBAL needs two strings");
      }
      m.push(m.global(module, name));
      return true;
    }
    case 0x52: { // REDUCE
      const args = m.pop();
      const fn = m.pop();
      if (!(args instanceof PyTuple)) {
        throw m.err(
          "PICKLE_MALFORMED",
          `REDUCE arguments are a ${pyTypeName(args as PyValue)}, not a tuple`,
        );
      }
      m.push(callGlobal(m, fn, args.items, "REDUCE"));
      return true;
    }
    case 0x51: // BINPERSID
      m.push(m.persid(m.popValue()));
      return true;
    case 0x62: { // BUILD
      const state = m.popValue();
      build(m, m.top(), state);
      return true;
    }
    default:
      return rareObjectOp(m, op);
  }
}

/** The object opcodes torch's own pickles never use. */
function rareObjectOp(m: PickleState, op: number): boolean {
  switch (op) {
    case 0x69: { // INST
      const module = m.line();
      const name = m.line();
      const g = m.global(module, name);
      m.push(callGlobal(m, g, m.popMark() as PyValue[], "INST"));
      return true;
    }
    case 0x6f: { // OBJ
      const items = m.popMark();
      const cls = items.shift();
      if (cls === undefined) throw m.err("PICKLE_STACK", "OBJ has no class");
      m.push(callGlobal(m, cls, items as PyValue[], "OBJ"));
      return true;
    }
    case 0x81: { // NEWOBJ
      const args = m.pop();
      const cls = m.pop();
      if (!(args instanceof PyTuple)) {
        throw m.err("PICKLE_MALFORMED", "NEWOBJ arguments are not a tuple");
      }
      m.push(newObj(m, cls, args.items, undefined));
      return true;
    }
    case 0x92: { // NEWOBJ_EX
      const kwargs = m.pop();
      const args = m.pop();
      const cls = m.pop();
      if (!(args instanceof PyTuple) || !(kwargs instanceof PyDict)) {
        throw m.err("PICKLE_MALFORMED", "NEWOBJ_EX needs a tuple and a dict");
      }
      m.push(newObj(m, cls, args.items, kwargs));
      return true;
    }
    case 0x50: // PERSID
      m.push(m.persid(m.line()));
      return true;
    case 0x82:
    case 0x83:
    case 0x84: // EXT1, EXT2, EXT4
      throw m.err("PICKLE_EXT", "extension registry opcodes (EXT1/2/4) are not allowed");
    default:
      return false;
  }
}
