/**
 * The restricted unpickler at edges a held-out mutation sample (seed 3) found unguarded: the text
 * memo opcodes, NEWOBJ of the two classes it allows, BUILD on a tensor, a MARK past the stack
 * limit, LONG4's length, reads of an empty stack, ints at 2^53 − 1, OrderedDict pairs and the int
 * tuples of a tensor rebuild. Then those of an exploratory sample (seed 101): a storage as the whole
 * result, SETITEMS' pairs, the 8-byte-length strings and bytes, BINSTRING's length, reading the top
 * above a single mark, and a memo bomb checked once per distinct value.
 */
import assert from "node:assert/strict";
import { isCkptError } from "../../../errors.ts";
import { unpickle } from "../../../formats/torch/unpickle.ts";
import { PyDict, type PyValue, TorchTensor } from "../../../formats/torch/values.ts";
import { floatStorage } from "./_float_storage.ts";

const bytes = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

/** The value, or the error's code. */
function outcome(p: string, options: Parameters<typeof unpickle>[1] = {}): PyValue | string {
  try {
    return unpickle(bytes(p), options);
  } catch (e) {
    if (isCkptError(e)) return e.code;
    throw e;
  }
}

Deno.test("unpickle() reads protocol 0's text memo: PUT then GET gives the same object, a bad index is refused", () => {
  // [[], <the same list>] as Python's protocol 0 writes it: (lp0\n(lp1\nag1\na.
  const v = outcome("(lp0\n(lp1\nag1\na.");
  assert.ok(Array.isArray(v) && v.length === 2 && v[0] === v[1], JSON.stringify(v));
  assert.equal(outcome("(lp0\ngx\n."), "PICKLE_MALFORMED");
  assert.equal(outcome("(lpx\n."), "PICKLE_MALFORMED");
});

Deno.test("unpickle() allows NEWOBJ of OrderedDict and Parameter only", () => {
  const od = outcome("\x80\x02ccollections\nOrderedDict\n)\x81.");
  assert.ok(od instanceof PyDict && od.kind === "OrderedDict" && od.size === 0);
  assert.equal(outcome("\x80\x02cbuiltins\nset\n)\x81."), "PICKLE_REDUCE");
});

Deno.test("unpickle() takes BUILD on a tensor (torch's __dict__ state) and keeps the tensor", () => {
  const { persistentLoad, storage } = floatStorage(2);
  const t = outcome(
    `\x80\x02ctorch._utils\n_rebuild_tensor\n(${storage}K\x00K\x02\x85K\x01\x85tR}X\x01\x00\x00\x00aK\x01sb.`,
    { persistentLoad },
  );
  assert.ok(t instanceof TorchTensor, String(t));
  assert.deepEqual(t.shape, [2]);
});

Deno.test("unpickle() refuses a tensor rebuild whose size or stride holds anything but ints", () => {
  const { persistentLoad, storage } = floatStorage(2);
  const rebuild = (size: string, stride: string) =>
    outcome(`\x80\x02ctorch._utils\n_rebuild_tensor\n(${storage}K\x00${size}${stride}tR.`, {
      persistentLoad,
    });
  assert.ok(rebuild("K\x02\x85", "K\x01\x85") instanceof TorchTensor);
  // BINFLOAT 1.5 (a float that is not whole stays a plain number) and 2.0 (kept as a float)
  assert.equal(rebuild("G?\xf8\x00\x00\x00\x00\x00\x00\x85", "K\x01\x85"), "PICKLE_ARGS");
  assert.equal(rebuild("G@\x00\x00\x00\x00\x00\x00\x00\x85", "K\x01\x85"), "PICKLE_ARGS");
  assert.equal(rebuild("K\x02\x85", "N"), "PICKLE_ARGS");
});

Deno.test("unpickle() refuses a MARK past the stack limit, even when a POP would take it back", () => {
  assert.equal(outcome("\x80\x02NN(0.", { maxStack: 3 }), null); // the mark is the third entry
  assert.equal(outcome("\x80\x02NNN(0.", { maxStack: 3 }), "PICKLE_LIMIT");
});

Deno.test("unpickle() refuses LONG4 with a negative length as malformed", () => {
  assert.equal(outcome("\x80\x02\x8b\xff\xff\xff\xff."), "PICKLE_MALFORMED");
  assert.equal(outcome("\x80\x02\x8b\x01\x00\x00\x00\x05."), 5);
});

Deno.test("unpickle() refuses opcodes that read an empty stack, or one emptied down to the last mark", () => {
  assert.equal(outcome("\x80\x02a."), "PICKLE_STACK"); // APPEND with nothing
  assert.equal(outcome("\x80\x02](a."), "PICKLE_STACK"); // APPEND reading only past the mark
  assert.equal(outcome("\x80\x02}b."), "PICKLE_STACK"); // BUILD with the state alone
});

Deno.test("unpickle() gives ints up to 2^53 - 1 as numbers and larger ones as bigints", () => {
  // LONG1 of 8 bytes, little-endian
  const long1 = (v: bigint) => {
    let s = "";
    for (let i = 0; i < 8; i++) s += String.fromCharCode(Number((v >> BigInt(8 * i)) & 0xffn));
    return `\x80\x02\x8a\x08${s}.`;
  };
  assert.equal(outcome(long1(2n ** 53n - 1n)), Number.MAX_SAFE_INTEGER);
  assert.equal(outcome(long1(2n ** 53n)), 2n ** 53n);
  assert.equal(outcome(long1(-(2n ** 53n) + 1n)), Number.MIN_SAFE_INTEGER);
  assert.equal(outcome(long1(-(2n ** 53n))), -(2n ** 53n));
});

Deno.test("unpickle() builds an OrderedDict from a list of pairs and refuses any other length", () => {
  const od = (pairs: string) => outcome(`\x80\x02ccollections\nOrderedDict\n](${pairs}e\x85R.`);
  const two = od("K\x01K\x02\x86");
  assert.ok(two instanceof PyDict && two.get(1) === 2, String(two));
  assert.equal(od("K\x01K\x02K\x03\x87"), "PICKLE_ARGS");
  assert.equal(od("K\x01\x85"), "PICKLE_ARGS");
});

Deno.test("unpickle() builds an allowed class with protocol 0's INST and protocol 1's OBJ", () => {
  const inst = outcome("(icollections\nOrderedDict\n.");
  assert.ok(inst instanceof PyDict && inst.kind === "OrderedDict", String(inst));
  const obj = outcome("(ccollections\nOrderedDict\no.");
  assert.ok(obj instanceof PyDict && obj.kind === "OrderedDict", String(obj));
  assert.equal(outcome("(o."), "PICKLE_STACK");
});

Deno.test("unpickle() reads _rebuild_tensor_v3's metadata from its eighth argument: conj/neg bits are refused", () => {
  const { persistentLoad, storage } = floatStorage(2);
  // _rebuild_tensor_v3(storage, 0, (2,), (1,), False, OrderedDict(), torch.float32, metadata)
  const v3 = (meta: string) =>
    outcome(
      `\x80\x02ctorch._utils\n_rebuild_tensor_v3\n(${storage}K\x00K\x02\x85K\x01\x85\x89` +
        `ccollections\nOrderedDict\n)Rctorch\nfloat32\n${meta}tR.`,
      { persistentLoad },
    );
  assert.ok(v3("}") instanceof TorchTensor);
  assert.equal(v3("}X\x03\x00\x00\x00negK\x01s"), "PICKLE_UNSUPPORTED");
});

Deno.test("unpickle() reads Python 2 byte strings as Latin-1 text", () => {
  assert.equal(outcome("\x80\x02U\x03abc."), "abc"); // SHORT_BINSTRING
  assert.equal(outcome("\x80\x02T\x02\x00\x00\x00\xe9\xff."), "\xe9\xff"); // BINSTRING, é and ÿ
  assert.equal(outcome("\x80\x02U\x00."), "");
});

Deno.test("unpickle() refuses a storage that is the whole result, not only one inside a container", () => {
  const { persistentLoad, storage } = floatStorage(1);
  assert.equal(outcome(`\x80\x02${storage}.`, { persistentLoad }), "PICKLE_MALFORMED");
  assert.equal(outcome(`\x80\x02${storage}\x85.`, { persistentLoad }), "PICKLE_MALFORMED");
});

Deno.test("unpickle() builds SETITEMS from pairs and refuses an odd count", () => {
  const d = outcome("\x80\x02}(K\x01K\x02K\x03K\x04u.");
  assert.ok(d instanceof PyDict, String(d));
  assert.deepEqual([...d], [[1, 2], [3, 4]]);
  assert.equal(outcome("\x80\x02}(K\x01K\x02K\x03u."), "PICKLE_MALFORMED");
  assert.equal(outcome("\x80\x02}(K\x01u."), "PICKLE_MALFORMED");
});

Deno.test("unpickle() reads BINUNICODE8, BINBYTES, BINBYTES8 and BYTEARRAY8", () => {
  const len8 = (n: number) => String.fromCharCode(n, 0, 0, 0, 0, 0, 0, 0);
  const list = (v: PyValue | string) => v instanceof Uint8Array ? [...v] : v;
  assert.equal(outcome(`\x80\x04\x8d${len8(2)}hi.`), "hi"); // BINUNICODE8
  assert.deepEqual(list(outcome("\x80\x03B\x02\x00\x00\x00xy.")), [0x78, 0x79]); // BINBYTES
  assert.deepEqual(list(outcome(`\x80\x04\x8e${len8(1)}z.`)), [0x7a]); // BINBYTES8
  assert.deepEqual(list(outcome(`\x80\x05\x96${len8(1)}w.`)), [0x77]); // BYTEARRAY8
});

Deno.test("unpickle() refuses BINSTRING with a negative length as malformed, not as truncated", () => {
  assert.equal(outcome("\x80\x02T\xff\xff\xff\xff."), "PICKLE_MALFORMED");
  assert.equal(outcome("\x80\x02T\x00\x00\x00\x00."), "");
});

Deno.test("unpickle() refuses DUP and BINPUT right after a single mark, even with a value below it", () => {
  assert.equal(outcome("\x80\x02N(N2."), null); // DUP reads the None above the mark
  assert.equal(outcome("\x80\x02N(2."), "PICKLE_STACK"); // DUP would read past the only mark
  assert.equal(outcome("\x80\x02N(q\x00."), "PICKLE_STACK"); // so would BINPUT
});

Deno.test("unpickle() checks a shared value once: 64 levels of a list holding the level below twice pass when maxExpanded allows", () => {
  // x0 = [0]; x(i) = [x(i-1), x(i-1)]: 64 levels, 3 * 2^64 - 1 items as a tree but 65 lists. A
  // check that walked the tree instead of its distinct values would not end.
  let p = "\x80\x02]K\x00aq\x00";
  for (let i = 1; i <= 64; i++) {
    p += `(h${String.fromCharCode(i - 1)}h${String.fromCharCode(i - 1)}lq${
      String.fromCharCode(i)
    }0`;
  }
  const v = outcome(`${p}h\x40.`, { maxExpanded: Infinity });
  // (no String(v) as the message: it would write out 2^64 items)
  assert.ok(Array.isArray(v) && v.length === 2 && v[0] === v[1], typeof v);
  assert.equal(outcome(`${p}h\x40.`), "PICKLE_LIMIT"); // the default maxExpanded
});
