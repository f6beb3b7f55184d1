/** The restricted pickle machine and the protocol-2 writer: opcodes, types, records mode, limits. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { RandomAccessFile } from "../../../formats/_io.ts";
import { loadTorchSlice } from "../../../formats/torch/load.ts";
import { encodeLong, pickleValue } from "../../../formats/torch/pickle.ts";
import {
  isAllowedGlobal,
  storageClassDType,
  StorageHandle,
  unpickle,
} from "../../../formats/torch/unpickle.ts";
import {
  bytesSource,
  PyDict,
  pyDict,
  PyFloat,
  pyFloat,
  type PyGlobal,
  type PyKey,
  type PyRecord,
  type PyTuple,
  pyTuple,
  type PyValue,
  toJSONish,
  torchSize,
  TorchTensor,
} from "../../../formats/torch/values.ts";
import { REPO_ROOT } from "../../_helpers/peer.ts";
import { floatStorage } from "./_float_storage.ts";

const bytes = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

Deno.test("encodeLong() matches Python's pickle.encode_long", () => {
  const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const cases: [bigint, string][] = [
    [-1n, "ff"],
    [128n, "8000"],
    [-128n, "80"],
    [-129n, "7fff"],
    [2n ** 31n, "0000008000"],
    [-(2n ** 31n) - 1n, "ffffff7fff"],
    [2n ** 64n, "000000000000000001"],
    [-(2n ** 70n), "0000000000000000c0"],
  ];
  for (const [x, want] of cases) assert.equal(hex(encodeLong(x)), want, String(x));
});

Deno.test("pickleValue() then unpickle() round-trips random value trees with their Python types", () => {
  let s = 7;
  const rnd = () => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const leaf = (): PyValue => {
    const k = Math.floor(rnd() * 9);
    switch (k) {
      case 0:
        return null;
      case 1:
        return rnd() < 0.5;
      case 2:
        return Math.floor((rnd() - 0.5) * 2 ** 40);
      case 3:
        return BigInt(Math.floor(rnd() * 1e9)) * 2n ** 60n * (rnd() < 0.5 ? -1n : 1n);
      case 4:
        return rnd() * 100 + 0.5;
      case 5:
        return pyFloat(Math.floor(rnd() * 10));
      case 6:
        return "s" + Math.floor(rnd() * 1000) + (rnd() < 0.2 ? "ü☃" : "");
      case 7:
        return new Uint8Array([Math.floor(rnd() * 256), 0, 255]);
      default:
        return torchSize([Math.floor(rnd() * 5), 3]);
    }
  };
  const tree = (depth: number): PyValue => {
    if (depth > 3 || rnd() < 0.3) return leaf();
    const n = Math.floor(rnd() * 5);
    const k = Math.floor(rnd() * 4);
    const kids = Array.from({ length: n }, () => tree(depth + 1));
    if (k === 0) return kids;
    if (k === 1) return pyTuple(kids);
    return pyDict(
      kids.map((v, i): [PyKey, PyValue] => [rnd() < 0.5 ? i : `k${i}`, v]),
      k === 2 ? "dict" : "OrderedDict",
    );
  };
  for (let i = 0; i < 200; i++) {
    const v = tree(0);
    const back = unpickle(pickleValue(v));
    assert.deepEqual(toJSONish(back, { exactKeys: true }), toJSONish(v, { exactKeys: true }));
  }
});

Deno.test("unpickle() reads protocol 4/5 opcodes: FRAME, MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE, bytes", () => {
  // pickle.dumps({'a': b'xy', 'b': (1.5,), 'c': OrderedDict()}, protocol=5) from CPython 3.11
  const p5 = bytes(
    "\x80\x05\x95:\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94C\x02xy\x94\x8c\x01b\x94G?\xf8\x00\x00\x00\x00\x00\x00\x85\x94\x8c\x01c\x94\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94u.",
  );
  const v = unpickle(p5) as PyDict;
  assert.deepEqual([...(v.get("a") as Uint8Array)], [0x78, 0x79]);
  assert.deepEqual((v.get("b") as PyTuple).items, [1.5]);
  assert.equal((v.get("c") as PyDict).kind, "OrderedDict");
});

Deno.test("unpickle() refuses globals outside the weights-only allowlist, naming them", () => {
  for (
    const g of [
      "os\nsystem",
      "builtins\neval",
      "__builtin__\ngetattr",
      "functools\npartial",
      "numpy\nndarray",
    ]
  ) {
    assert.throws(
      () => unpickle(bytes(`\x80\x02c${g}\n.`)),
      (e) =>
        isCkptError(e, "PICKLE_GLOBAL") &&
        e.message.includes(g.replace("\n", ".").replace("__builtin__", "builtins")),
    );
  }
  assert.ok(isAllowedGlobal("torch._utils._rebuild_tensor_v2"));
  assert.ok(isAllowedGlobal("torch.bfloat16"));
  assert.ok(!isAllowedGlobal("torch.load"));
});

Deno.test("unpickle() builds torch.Size, dtypes, layouts, devices, sets and bytes from allowed globals", () => {
  const v = unpickle(
    bytes(
      "\x80\x02(ctorch\nSize\n(K\x02K\x03t\x85Rctorch\nbfloat16\nctorch.serialization\n_get_layout\nX\x0d\x00\x00\x00torch.strided\x85Rctorch\ndevice\nX\x06\x00\x00\x00cuda:1\x85Rc__builtin__\nset\n]K\x01a\x85Rc_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86Rl.",
    ),
  ) as PyValue[];
  assert.equal((v[0] as PyTuple).kind, "torch.Size");
  assert.deepEqual((v[0] as PyTuple).items, [2, 3]);
  assert.equal((v[1] as PyGlobal).qualname, "torch.bfloat16");
  assert.equal((v[2] as PyGlobal).qualname, "torch.strided");
  assert.deepEqual([(v[3] as PyRecord).className, (v[3] as PyRecord).args], ["torch.device", [
    "cuda:1",
  ]]);
  assert.deepEqual((v[4] as PyRecord).args, [[1]]);
  assert.deepEqual([...(v[5] as Uint8Array)], [0xff]);
});

Deno.test("unpickle() keeps whole floats as PyFloat and big ints as bigint", () => {
  const v = unpickle(pickleValue([pyFloat(2), 2, 0.25, 2n ** 80n, -(2 ** 40)])) as PyValue[];
  assert.ok(v[0] instanceof PyFloat);
  assert.equal(v[1], 2);
  assert.equal(v[2], 0.25);
  assert.equal(v[3], 2n ** 80n);
  assert.equal(v[4], -(2 ** 40));
});

Deno.test("unpickle() in records mode turns real DCP metadata into inert records", async () => {
  const dir = join(REPO_ROOT, "tests", "fixtures", "dcp", "f32_w2", "model");
  const meta = await Deno.readFile(join(dir, ".metadata"));
  assert.throws(
    () => unpickle(meta),
    (e) =>
      isCkptError(e, "PICKLE_GLOBAL") &&
      e.message.includes("torch.distributed.checkpoint.metadata.Metadata"),
  );
  const M = "torch.distributed.checkpoint.metadata.";
  const records = [
    `${M}Metadata`,
    `${M}TensorStorageMetadata`,
    `${M}TensorProperties`,
    `${M}ChunkStorageMetadata`,
    `${M}MetadataIndex`,
    `${M}BytesStorageMetadata`,
    `${M}StorageMeta`,
    `${M}_MEM_FORMAT_ENCODING`,
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "pathlib._local.PosixPath",
    "pathlib.PosixPath",
  ];
  const md = unpickle(meta, { records }) as PyRecord;
  assert.equal(md.className, `${M}Metadata`);
  const sdm = md.field("state_dict_metadata") as PyDict;
  const [, first] = [...sdm][0]!;
  const tsm = first as PyRecord;
  assert.equal(tsm.className, `${M}TensorStorageMetadata`);
  assert.equal((tsm.field("size") as PyTuple).kind, "torch.Size");
  const props = tsm.field("properties") as PyRecord;
  const state = props.state as PyTuple; // (dtype, layout, requires_grad, memory_format, pin_memory)
  assert.equal(state.items.length, 5);
  assert.equal((state.items[0] as PyGlobal).qualname, "torch.float32");
  assert.equal((state.items[1] as PyGlobal).qualname, "torch.strided");
  assert.deepEqual((state.items[3] as PyRecord).args, [0]);
  // storage_data: MetadataIndex -> _StorageInfo; each item is a torch.save archive slice
  const storage = md.field("storage_data") as PyDict;
  const [idx, info] = [...storage][0]!;
  assert.equal((idx as unknown as PyRecord).className, `${M}MetadataIndex`);
  const si = info as PyRecord;
  const file = await RandomAccessFile.open(join(dir, si.field("relative_path") as string));
  try {
    const t = await loadTorchSlice(
      file,
      si.field("offset") as number,
      si.field("length") as number,
    );
    assert.ok(t instanceof TorchTensor);
    assert.equal((await t.read()).length, t.shape.reduce((a, b) => a * b, 1) * 4);
  } finally {
    await file.close();
  }
});

Deno.test("unpickle() enforces depth, memo, int-size and tree-size limits", () => {
  const deep = bytes("\x80\x02" + "]".repeat(50) + "a".repeat(49) + ".");
  assert.throws(() => unpickle(deep, { maxDepth: 10 }), (e) => isCkptError(e, "PICKLE_LIMIT"));
  assert.ok(Array.isArray(unpickle(deep)));
  assert.throws(
    () => unpickle(bytes("\x80\x02Nq\x00q\x01q\x02."), { maxMemo: 2 }),
    (e) => isCkptError(e, "PICKLE_LIMIT"),
  );
  assert.throws(
    () =>
      unpickle(bytes("\x80\x02\x8b\x10\x00\x00\x00" + "\x01".repeat(16) + "."), {
        maxLongBytes: 8,
      }),
    (e) => isCkptError(e, "PICKLE_LIMIT"),
  );
  // [[x, x], [x, x]] ... shares references: fine at small depth, refused when it expands too far
  let p = "\x80\x02]K\x00aq\x00";
  for (let i = 1; i < 20; i++) {
    p += `(h${String.fromCharCode(i - 1)}h${String.fromCharCode(i - 1)}lq${
      String.fromCharCode(i)
    }0`;
  }
  p += "h\x13.";
  assert.throws(
    () => unpickle(bytes(p), { maxExpanded: 1000 }),
    (e) => isCkptError(e, "PICKLE_LIMIT"),
  );
  assert.ok(Array.isArray(unpickle(bytes(p))));
});

Deno.test("pickleValue() writes the same tensor object once and memoizes it", () => {
  const d = new PyDict();
  d.set("x", [1]);
  d.set("y", d.get("x")!);
  const back = unpickle(pickleValue(d)) as PyDict;
  assert.equal(back.get("x"), back.get("y"));
});

Deno.test("unpickle() rebuilds plain tensors and parameters through _rebuild_from_type_v2 and refuses subclasses", () => {
  const storages: StorageHandle[] = [];
  const persistentLoad = (pid: PyValue) => {
    const [, cls, key, , n] = (pid as PyTuple).items;
    const h = new StorageHandle({
      key: key as string,
      storageClass: (cls as PyGlobal).qualname,
      location: "cpu",
      numel: n as number,
      dtype: storageClassDType((cls as PyGlobal).qualname),
      source: bytesSource(new Uint8Array(new Float32Array([1.5, -2]).buffer)),
      file: "x",
    });
    storages.push(h);
    return h;
  };
  // What torch.save writes for a tensor of class `type`:
  // _rebuild_from_type_v2(_rebuild_tensor_v2, type, (storage, 0, (2,), (1,), False, OrderedDict()), {})
  const pickleOf = (type: string) =>
    bytes(
      "\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._utils\n_rebuild_tensor_v2\n" +
        `c${type}\n` +
        "((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQ" +
        "K\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rt}tR.",
    );
  const plain = unpickle(pickleOf("torch\nTensor"), { persistentLoad });
  assert.ok(plain instanceof TorchTensor);
  assert.deepEqual([plain.dtype, plain.shape, plain.parameter], ["F32", [2], false]);
  const param = unpickle(pickleOf("torch.nn.parameter\nParameter"), { persistentLoad });
  assert.ok(param instanceof TorchTensor);
  assert.deepEqual([param.shape, param.parameter], [[2], true]);
  assert.equal(storages.length, 2);
  // An allowed global other than torch.Tensor or Parameter names a subclass: refused, named.
  for (const sub of ["torch\nFloatTensor", "torch.cuda\nFloatTensor", "torch\nSize"]) {
    const qualname = sub.replace("\n", ".");
    assert.throws(
      () => unpickle(pickleOf(sub), { persistentLoad }),
      (e) =>
        isCkptError(e, "PICKLE_REDUCE") && e.message.includes(`tensor subclass ${qualname}`) &&
        e.details?.global === qualname,
      qualname,
    );
  }
  // A class outside the allowlist stops at the GLOBAL itself.
  assert.throws(
    () => unpickle(pickleOf("my_lib\nQuantTensor"), { persistentLoad }),
    (e) => isCkptError(e, "PICKLE_GLOBAL") && e.message.includes("my_lib.QuantTensor"),
  );
});

Deno.test("unpickle() counts marks in the stack limit: maxStack entries fit, one more is refused", () => {
  const outcome = (p: string) => {
    try {
      unpickle(bytes(`\x80\x02${p}.`), { maxStack: 3 });
      return "ok";
    } catch (e) {
      return isCkptError(e) ? e.code : String(e);
    }
  };
  assert.deepEqual(
    [
      outcome("NN(t"), // two values and a mark: three entries
      outcome("NNN(t"), // the mark would be the fourth
      outcome("NN(Nt"), // a value pushed as the fourth
    ],
    ["ok", "PICKLE_LIMIT", "PICKLE_LIMIT"],
  );
});

Deno.test("unpickle() takes requires_grad from _rebuild_tensor_v2 and defaults it to False for the 4-argument _rebuild_tensor", () => {
  const { persistentLoad, storage } = floatStorage(2);
  const v1 = unpickle(
    bytes(`\x80\x02ctorch._utils\n_rebuild_tensor\n(${storage}K\x00K\x02\x85K\x01\x85tR.`),
    { persistentLoad },
  );
  const v2 = unpickle(
    bytes(
      `\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(${storage}K\x00K\x02\x85K\x01\x85\x88` +
        "ccollections\nOrderedDict\n)RtR.",
    ),
    { persistentLoad },
  );
  assert.ok(v1 instanceof TorchTensor && v2 instanceof TorchTensor);
  assert.deepEqual([v1.shape, v1.requiresGrad], [[2], false]);
  assert.deepEqual([v2.shape, v2.requiresGrad], [[2], true]);
});

Deno.test("unpickle() applies BUILD to an OrderedDict only with a dict or None state", () => {
  const od = "\x80\x02ccollections\nOrderedDict\n)R";
  const withDict = unpickle(bytes(`${od}}X\x01\x00\x00\x00aK\x01sb.`)) as PyDict;
  assert.equal(withDict.kind, "OrderedDict");
  assert.equal(withDict.attrs?.get("a"), 1);
  assert.equal((unpickle(bytes(`${od}Nb.`)) as PyDict).attrs, undefined);
  assert.throws(
    () => unpickle(bytes(`${od}]b.`)),
    (e) => isCkptError(e, "PICKLE_BUILD") && e.message.includes("not a dict"),
  );
});

Deno.test("unpickle() builds DICT from pairs and refuses an odd count", () => {
  const d = unpickle(bytes("\x80\x02(K\x01K\x02K\x03K\x04d.")) as PyDict;
  assert.deepEqual([...d], [[1, 2], [3, 4]]);
  assert.throws(
    () => unpickle(bytes("\x80\x02(K\x01K\x02K\x03d.")),
    (e) => isCkptError(e, "PICKLE_MALFORMED") && e.message.includes("odd number"),
  );
});

Deno.test("unpickle() calls bytearray with nothing, bytes or a string, and refuses anything else", () => {
  const ba = (args: string) => unpickle(bytes(`\x80\x02cbuiltins\nbytearray\n${args}R.`));
  assert.deepEqual([...(ba(")") as Uint8Array)], []);
  assert.deepEqual([...(ba("C\x02xy\x85") as Uint8Array)], [0x78, 0x79]);
  assert.throws(
    () => ba("G?\xf8\x00\x00\x00\x00\x00\x00\x85"),
    (e) => isCkptError(e, "PICKLE_ARGS") && e.message.includes("needs bytes or a string"),
  );
});

Deno.test("unpickle() keeps NEWOBJ_EX keyword arguments on a record, one is enough", () => {
  const rec = unpickle(
    bytes("\x80\x04\x8c\x01m\x8c\x01R\x93)}\x8c\x01kK\x07s\x92."),
    { records: ["m.R"] },
  ) as PyRecord;
  assert.equal(rec.className, "m.R");
  assert.equal(rec.args.length, 1);
  assert.deepEqual([...(rec.args[0] as PyDict)], [["k", 7]]);
  const none = unpickle(bytes("\x80\x04\x8c\x01m\x8c\x01R\x93)}\x92."), { records: ["m.R"] });
  assert.deepEqual((none as PyRecord).args, []);
});

Deno.test("unpickle() reads a text line of 4096 bytes and refuses 4097 or one without its newline", () => {
  const outcome = (p: string) => {
    try {
      unpickle(bytes(`\x80\x02${p}`));
      return "ok";
    } catch (e) {
      return isCkptError(e) ? e.code : String(e);
    }
  };
  const module = (n: number) => "m".repeat(n);
  // A 4096-byte module name is read (then refused as a global); 4097 bytes is not a line.
  assert.deepEqual(
    [outcome(`c${module(4096)}\nx\n.`), outcome(`c${module(4097)}\nx\n.`), outcome("cmod")],
    ["PICKLE_GLOBAL", "PICKLE_TRUNCATED", "PICKLE_TRUNCATED"],
  );
});

Deno.test("unpickle() refuses to pop across a mark or from an empty stack", () => {
  // TUPLE1 pops one value: above a fresh mark there is none, nor on an empty stack.
  assert.equal(unpickle(bytes("\x80\x02N(0.")), null); // POP on a fresh mark drops the mark
  for (const p of ["N(\x85.", "\x85."]) {
    assert.throws(
      () => unpickle(bytes(`\x80\x02${p}`)),
      (e) => isCkptError(e, "PICKLE_STACK"),
      JSON.stringify(p),
    );
  }
});

Deno.test("unpickle() refuses a tensor whose size or stride is not all ints", () => {
  const { persistentLoad, storage } = floatStorage(2);
  const rebuild = (size: string, stride: string) =>
    unpickle(
      bytes(`\x80\x02ctorch._utils\n_rebuild_tensor\n(${storage}K\x00${size}${stride}tR.`),
      { persistentLoad },
    );
  assert.ok(rebuild("K\x02\x85", "K\x01\x85") instanceof TorchTensor);
  for (
    const [size, stride] of [["G@\x00\x00\x00\x00\x00\x00\x00\x85", "K\x01\x85"], [
      "K\x02\x85",
      "N\x85",
    ]]
  ) {
    assert.throws(
      () => rebuild(size!, stride!),
      (e) => isCkptError(e, "PICKLE_ARGS") && e.message.includes("int tuples for size and stride"),
    );
  }
});

Deno.test("unpickle() refuses the rebuild functions of quantized, sparse and nested tensors as unsupported", () => {
  for (const fn of ["_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor"]) {
    assert.throws(
      () => unpickle(bytes(`\x80\x02ctorch._utils\n${fn}\n)R.`)),
      (e) => isCkptError(e, "PICKLE_UNSUPPORTED") && e.details?.global === `torch._utils.${fn}`,
      fn,
    );
  }
});

Deno.test("unpickle() encodes _codecs.encode strings as Latin-1 or UTF-8 and refuses a character Latin-1 lacks", () => {
  const enc = (
    s: string,
    e: string,
  ) => [
    ...(unpickle(bytes(`\x80\x02c_codecs\nencode\nX${le32(s)}X${le32(e)}\x86R.`)) as Uint8Array),
  ];
  assert.deepEqual(enc("\xe9", "latin1"), [0xe9]);
  assert.deepEqual(enc("\xe9", "utf-8"), [0xc3, 0xa9]);
  assert.throws(
    () => enc("\u0100", "latin-1"),
    (e) => isCkptError(e, "PICKLE_ARGS") && e.message.includes("outside latin-1"),
  );
});

Deno.test("unpickle() refuses _codecs.encode to an encoding other than Latin-1 or UTF-8", () => {
  const pickle = `\x80\x02c_codecs\nencode\nX${le32("e")}X${le32("utf-16")}\x86R.`;
  assert.throws(
    () => unpickle(bytes(pickle)),
    (e) => isCkptError(e, "PICKLE_ARGS") && e.message.includes('uses encoding "utf-16"'),
  );
});

/** A pickle BINUNICODE operand: the UTF-8 length as 4 little-endian bytes, then the bytes. */
function le32(s: string): string {
  const b = new TextEncoder().encode(s);
  const n = b.length;
  return String.fromCharCode(n & 0xff, (n >> 8) & 0xff, 0, 0, ...b);
}

Deno.test("unpickle() result check walks tuples and lists: a storage outside a tensor is refused there too", () => {
  const { persistentLoad, storage } = floatStorage(1);
  for (const wrap of [`${storage}\x85`, `]${storage}a`, `K\x01${storage}\x86`]) {
    assert.throws(
      () => unpickle(bytes(`\x80\x02${wrap}.`), { persistentLoad }),
      (e) => isCkptError(e, "PICKLE_MALFORMED") && e.message.includes("storage is used outside"),
      JSON.stringify(wrap),
    );
  }
});

Deno.test("unpickle() counts the expanded size exactly: maxExpanded items fit, one fewer allowed is refused", () => {
  const list3 = bytes("\x80\x02](K\x01K\x02K\x03e."); // the list and its 3 ints: 4 items
  assert.deepEqual(unpickle(list3, { maxExpanded: 4 }), [1, 2, 3]);
  assert.throws(() => unpickle(list3, { maxExpanded: 3 }), (e) => isCkptError(e, "PICKLE_LIMIT"));
});

Deno.test("unpickle() counts a shared reference as deep as a copy of it", () => {
  // [x, y, [y]] with x = [[1]] and y = [x] memoized, against [[[1]], [[[1]]], [[[[1]]]]] written
  // out in full: the last y sits a level deeper than the first, and every level below it counts
  // there too, through y into x.
  const shared = bytes("\x80\x02](]]K\x01aaq\x00]h\x00aq\x01]h\x01ae.");
  const copies = bytes("\x80\x02](]]K\x01aa]]]K\x01aaa]]]]K\x01aaaae.");
  const deepest = (p: Uint8Array) => {
    for (let d = 1; d < 10; d++) {
      try {
        unpickle(p, { maxDepth: d });
        return d;
      } catch (e) {
        if (!isCkptError(e, "PICKLE_LIMIT")) throw e;
      }
    }
    return Infinity;
  };
  assert.deepEqual(unpickle(shared), unpickle(copies));
  assert.equal(deepest(copies), 5);
  assert.equal(deepest(shared), 5);
});

Deno.test("unpickle() reads a LONG1 of maxLongBytes bytes and refuses one byte more", () => {
  const long1 = (n: number) => bytes(`\x80\x02\x8a${String.fromCharCode(n)}${"\x01".repeat(n)}.`);
  assert.equal(unpickle(long1(2), { maxLongBytes: 2 }), 0x0101);
  assert.throws(
    () => unpickle(long1(3), { maxLongBytes: 2 }),
    (e) => isCkptError(e, "PICKLE_LIMIT") && e.message.includes("an int of 3 bytes exceeds 2"),
  );
});

Deno.test("unpickle() makes a Parameter of one argument require grad, as torch does", () => {
  const { persistentLoad, storage } = floatStorage(2);
  const tensor = `ctorch._utils\n_rebuild_tensor\n(${storage}K\x00K\x02\x85K\x01\x85tR`;
  const one = unpickle(
    bytes(`\x80\x02ctorch._utils\n_rebuild_parameter\n(${tensor}tR.`),
    { persistentLoad },
  );
  const two = unpickle(
    bytes(`\x80\x02ctorch._utils\n_rebuild_parameter\n(${tensor}\x89tR.`),
    { persistentLoad },
  );
  assert.ok(one instanceof TorchTensor && two instanceof TorchTensor);
  assert.deepEqual([one.parameter, one.requiresGrad, two.requiresGrad], [true, true, false]);
});

Deno.test("unpickle() names the opcode's byte offset when a tensor does not fit its storage", () => {
  const { persistentLoad, storage } = floatStorage(2);
  const p = `\x80\x02ctorch._utils\n_rebuild_tensor\n(${storage}K\x00K\x03\x85K\x01\x85tR.`;
  let err: unknown;
  try {
    unpickle(bytes(p), { persistentLoad });
  } catch (e) {
    err = e;
  }
  assert.ok(isCkptError(err), String(err));
  assert.equal(err.offset, p.length - 2); // the REDUCE opcode
  assert.ok(err.message.endsWith(`(at byte ${p.length - 2})`), err.message);
});
