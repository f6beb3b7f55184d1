/**
 * The restricted unpickler at edges a held-out mutation sample (seed 3) found unguarded: the text
 * memo opcodes, NEWOBJ of the two classes it allows, BUILD on a tensor, a MARK past the stack
 * limit, LONG4's length, reads of an empty stack, ints at 2^53 − 1, OrderedDict pairs and the int
 * tuples of a tensor rebuild.
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
