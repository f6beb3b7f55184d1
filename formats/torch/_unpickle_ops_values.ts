/**
 * Opcodes that push one plain value: protocol and frame markers, None and bools, ints, floats,
 * strings and bytes. {@linkcode valueOp} runs one and says whether it knew it.
 * @module
 */
import type { PickleState } from "./_unpickle_state.ts";
import { PyFloat } from "./values.ts";

/** A latin-1 string of `s` (Python 2 `str`), built in chunks. */
function latin1(s: Uint8Array): string {
  let out = "";
  for (let i = 0; i < s.length; i += 8192) out += String.fromCharCode(...s.subarray(i, i + 8192));
  return out;
}

/** Runs `op` when it pushes a plain value; false when it is not one of these opcodes. */
export function valueOp(m: PickleState, op: number): boolean {
  switch (op) {
    case 0x80: { // PROTO
      const p = m.u8();
      if (p > 5) throw m.err("PICKLE_OPCODE", `protocol ${p} is not supported`);
      return true;
    }
    case 0x95: // FRAME
      m.u64();
      return true;
    case 0x4e: // NONE
      m.push(null);
      return true;
    case 0x88: // NEWTRUE
      m.push(true);
      return true;
    case 0x89: // NEWFALSE
      m.push(false);
      return true;
    case 0x4a: // BININT
      m.push(m.i32());
      return true;
    case 0x4b: // BININT1
      m.push(m.u8());
      return true;
    case 0x4d: // BININT2
      m.push(m.u16());
      return true;
    case 0x8a: // LONG1
      m.push(m.long(m.bytes(m.u8())));
      return true;
    case 0x8b: { // LONG4
      const n = m.i32();
      if (n < 0) throw m.err("PICKLE_MALFORMED", "LONG4 has a negative length");
      if (n > m.maxLong) throw m.err("PICKLE_LIMIT", `an int of ${n} bytes exceeds ${m.maxLong}`);
      m.push(m.long(m.bytes(n)));
      return true;
    }
    case 0x47: { // BINFLOAT
      const f = m.dv.getFloat64(m.need(8), false);
      m.push(Number.isInteger(f) ? new PyFloat(f) : f);
      return true;
    }
    default:
      return textOp(m, op);
  }
}

/** Strings and bytes. */
function textOp(m: PickleState, op: number): boolean {
  switch (op) {
    case 0x58: // BINUNICODE
      m.push(m.str(m.u32()));
      return true;
    case 0x8c: // SHORT_BINUNICODE
      m.push(m.str(m.u8()));
      return true;
    case 0x8d: // BINUNICODE8
      m.push(m.str(m.u64()));
      return true;
    case 0x55: // SHORT_BINSTRING
      m.push(String.fromCharCode(...m.bytes(m.u8())));
      return true;
    case 0x54: { // BINSTRING
      const n = m.i32();
      if (n < 0) throw m.err("PICKLE_MALFORMED", "BINSTRING has a negative length");
      m.push(latin1(m.bytes(n)));
      return true;
    }
    case 0x43: // SHORT_BINBYTES
      m.push(m.bytes(m.u8()).slice());
      return true;
    case 0x42: // BINBYTES
      m.push(m.bytes(m.u32()).slice());
      return true;
    case 0x8e: // BINBYTES8
    case 0x96: // BYTEARRAY8
      m.push(m.bytes(m.u64()).slice());
      return true;
    default:
      return false;
  }
}
