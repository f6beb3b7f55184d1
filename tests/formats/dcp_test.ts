import assert from "node:assert/strict";
import { join } from "node:path";
import {
  DcpCheckpoint,
  dcpTensorNames,
  defaultDcpRoot,
  isDcpFolder,
  openDcpStateDict,
  stripWrapperSegments,
} from "../../formats/dcp.ts";
import { readDcpOptimizer } from "../../formats/dcp_optim.ts";
import { loadTorch } from "../../formats/torch/load.ts";
import { type PyDict, toJSONish } from "../../formats/torch/values.ts";
import { type ErrorCode, isCkptError } from "../../errors.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { flatTensors, withBytes } from "../_helpers/torch.ts";

const FIX = new URL("../fixtures/dcp/", import.meta.url).pathname;
const CASES = ["f32_w2", "bf16_w4", "dtensor_w4", "lora_w2", "files_w2"];

Deno.test("openDcpStateDict() equals torch's dcp_to_torch_save byte for byte on every fixture", async () => {
  for (const c of CASES) {
    await using sd = await openDcpStateDict(join(FIX, c, "model"));
    await using full = await loadTorch(join(FIX, c, "model_full.pt"));
    const want = flatTensors(full.value);
    assert.deepEqual([...sd.keys()], [...want.keys()], c);
    for (const [name, ref] of sd) {
      const t = want.get(name)!;
      assert.equal(ref.dtype, t.dtype, `${c} ${name}`);
      assert.deepEqual(ref.shape, t.shape, `${c} ${name}`);
      assert.deepEqual(await ref.read(), await t.read(), `${c} ${name}`);
    }
  }
});

Deno.test("DcpCheckpoint.tensor() reads any row range across chunk boundaries", async () => {
  for (const c of ["bf16_w4", "dtensor_w4", "f32_w2"]) {
    await using ckpt = await DcpCheckpoint.open(join(FIX, c, "model"));
    for (const e of ckpt.metadata.entries) {
      if (e.kind !== "tensor") continue;
      const ref = ckpt.tensor(e);
      const whole = await ref.read();
      const rows = e.shape.length === 0 ? 1 : e.shape[0]!;
      const rowBytes = rows === 0 ? 0 : whole.byteLength / rows;
      for (let a = 0; a <= rows; a++) {
        for (let b = a; b <= rows; b++) {
          assert.deepEqual(await ref.read(a, b), whole.subarray(a * rowBytes, b * rowBytes));
        }
      }
    }
  }
});

Deno.test("DcpCheckpoint.tensor().readInto() fills a reused, dirty buffer with the rows read() gives", async () => {
  for (const c of ["bf16_w4", "dtensor_w4", "f32_w2"]) {
    await using ckpt = await DcpCheckpoint.open(join(FIX, c, "model"));
    for (const e of ckpt.metadata.entries) {
      if (e.kind !== "tensor") continue;
      const ref = ckpt.tensor(e);
      assert.ok(ref.readInto, "DCP tensors read straight into a caller's buffer");
      const whole = await ref.read();
      const rows = e.shape.length === 0 ? 1 : e.shape[0]!;
      const rowBytes = rows === 0 ? 0 : whole.byteLength / rows;
      const buffer = new Uint8Array(whole.byteLength + 16);
      for (let a = 0; a < rows; a++) {
        buffer.fill(0xaa);
        const got: Uint8Array = await ref.readInto!(a, rows, buffer);
        assert.equal(got.buffer, buffer.buffer);
        assert.deepEqual(got, whole.subarray(a * rowBytes));
      }
    }
  }
});

Deno.test("DcpCheckpoint.open() types the metadata: chunks per rank, uneven and zero-size", async () => {
  await using ckpt = await DcpCheckpoint.open(join(FIX, "bf16_w4", "model"));
  const w = ckpt.metadata.entries.find((e) => e.key === "2.weight");
  assert.ok(w?.kind === "tensor");
  assert.equal(w.dtype, "BF16");
  assert.deepEqual(w.shape, [3, 7]);
  assert.deepEqual(w.chunks.map((c) => [c.offsets, c.sizes, c.file]), [
    [[0, 0], [1, 7], "__0_0.distcp"],
    [[1, 0], [1, 7], "__1_0.distcp"],
    [[2, 0], [1, 7], "__2_0.distcp"],
    [[3, 0], [0, 7], "__3_0.distcp"],
  ]);
  assert.deepEqual(ckpt.sharding(w), {
    files: ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"],
    chunks: 4,
    emptyChunks: 1,
  });
  const dim1 = ckpt.metadata.entries.find((e) => e.key === "1.weight");
  assert.ok(dim1?.kind === "tensor");
  assert.deepEqual(dim1.chunks.map((c) => c.offsets), [[0, 0], [0, 2], [0, 4], [0, 6]]);
  assert.equal(ckpt.metadata.checkpointId, "tests/fixtures/dcp/bf16_w4/model");
});

Deno.test("DcpCheckpoint.value() decodes bytes items with the restricted unpickler", async () => {
  await using ckpt = await DcpCheckpoint.open(join(FIX, "dtensor_w4", "model"));
  assert.equal(await ckpt.value("extra.epoch"), 3);
  assert.equal(await ckpt.value("extra.name"), "run-a");
  assert.deepEqual(toJSONish(await ckpt.value("extra.betas")), { __tuple__: [0.9, 0.95] });
  assert.deepEqual(await ckpt.value("extra.ids"), [1, 2, 3]);
  const extra = ckpt.metadata.entries.find((e) => e.key === "extra.ids")!;
  assert.deepEqual(extra.path, ["extra", "ids"]);
  assert.throws(() => ckpt.tensor("extra.ids"), (e) => isCkptError(e, "DCP_NOT_TENSOR"));
  await assert.rejects(ckpt.value("grid"), (e) => isCkptError(e, "DCP_NOT_BYTES"));
  assert.throws(() => ckpt.entry("nope"), (e) => isCkptError(e, "DCP_KEY_MISSING"));
});

Deno.test("openDcpStateDict() keeps PEFT-wrapped names for mergeLora", async () => {
  await using sd = await openDcpStateDict(join(FIX, "lora_w2", "model"));
  assert.ok(sd.has("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"));
  assert.ok(sd.has("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"));
  assert.ok(sd.has("base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight"));
});

Deno.test("dcpTensorNames() maps planner paths, drops a shared root and wrapper segments", () => {
  const entry = (key: string, path: (string | number)[]) => ({
    kind: "tensor" as const,
    key,
    path,
    dtype: "F32" as const,
    shape: [1],
    requiresGrad: false,
    chunks: [],
  });
  // accelerate: {"model": state_dict}; FQNs with dots stay one path item.
  const acc = {
    entries: [
      entry("model.a.b.weight", ["model", "a.b.weight"]),
      entry("model.c._fsdp_wrapped_module.d", ["model", "c._fsdp_wrapped_module.d"]),
    ],
  };
  assert.deepEqual(dcpTensorNames(acc).map(([n]) => n), ["a.b.weight", "c.d"]);
  assert.deepEqual(dcpTensorNames(acc, { root: null }).map(([n]) => n), [
    "model.a.b.weight",
    "model.c.d",
  ]);
  // {"model": ..., "optim": ...} saved together: the model part is chosen.
  const both = {
    entries: [
      entry("model.w", ["model", "w"]),
      entry("optim.state.w.exp_avg", ["optim", "state", "w", "exp_avg"]),
    ],
  };
  assert.deepEqual(dcpTensorNames(both).map(([n]) => n), ["w"]);
  assert.equal(defaultDcpRoot([["w"], ["v"]]), null);
  // torchtitan-style: model FQNs and optimizer state flattened side by side at the top level.
  const titan = {
    entries: [
      entry("tok.weight", ["tok.weight"]),
      entry("state.tok.weight.exp_avg", ["state", "tok.weight", "exp_avg"]),
      entry("state.x", ["state.x"]),
    ],
  };
  assert.deepEqual(dcpTensorNames(titan).map(([n]) => n), ["tok.weight", "state.x"]);
  assert.equal(
    stripWrapperSegments("module._orig_mod.layers.0._checkpoint_wrapped_module.w"),
    "layers.0.w",
  );
  assert.throws(
    () => dcpTensorNames({ entries: [entry("a", ["_orig_mod.w"]), entry("b", ["w"])] }),
    (e) => isCkptError(e, "DCP_NAME_CLASH"),
  );
});

Deno.test("readDcpOptimizer() name-keyed equals torch's dcp_to_torch_save", async () => {
  for (const c of ["f32_w2", "bf16_w4", "lora_w2"]) {
    const optim = await readDcpOptimizer(join(FIX, c, "optim"), { keyed: "name" });
    try {
      await using full = await loadTorch(join(FIX, c, "optim_full.pt"));
      const ours = optim.value;
      const theirs = full.dict();
      // Same state (per-parameter dicts, same keys, same bytes); same param group values. Key
      // order differs: dcp_to_torch_save follows the metadata, we follow torch's optimizers.
      const os = ours.get("state") as PyDict, ts = theirs.get("state") as PyDict;
      assert.deepEqual([...os.keys()].sort(), [...ts.keys()].sort(), c);
      for (const [k, v] of ts) {
        assert.deepEqual(await withBytes(os.get(k)!, true), await withBytes(v, true), `${c} ${k}`);
      }
      const og = (ours.get("param_groups") as PyDict[])[0]!,
        tg = (theirs.get("param_groups") as PyDict[])[0]!;
      for (const [k, v] of tg) assert.deepEqual(toJSONish(og.get(k)!), toJSONish(v), `${c} ${k}`);
      assert.equal(og.size, tg.size);
      assert.equal([...og.keys()].at(-1), "params");
    } finally {
      await optim.close();
    }
  }
});

Deno.test("readDcpOptimizer() int-keyed equals the unsharded optimizer.state_dict()", async () => {
  for (const c of ["f32_w2", "bf16_w4", "lora_w2"]) {
    const optim = await readDcpOptimizer(join(FIX, c, "optim"));
    try {
      await using ref = await loadTorch(join(FIX, c, "reference.pt"));
      const want = ref.dict().get("optimizer") as PyDict;
      assert.deepEqual(optim.paramNames, ref.dict().get("param_names"));
      assert.deepEqual(await withBytes(optim.value), await withBytes(want), c);
    } finally {
      await optim.close();
    }
  }
});

Deno.test("readDcpOptimizer() checks parameters against the model", async () => {
  await assert.rejects(
    readDcpOptimizer(join(FIX, "f32_w2", "optim"), { modelParams: ["0.weight"] }),
    (e) => isCkptError(e, "DCP_OPTIM_PARAM") && e.tensor === "1.weight",
  );
  await assert.rejects(
    readDcpOptimizer(join(FIX, "f32_w2", "model")),
    (e) => isCkptError(e, "DCP_OPTIM_LAYOUT"),
  );
});

Deno.test("isDcpFolder() recognises checkpoint folders only", async () => {
  assert.equal(await isDcpFolder(join(FIX, "f32_w2", "model")), true);
  assert.equal(await isDcpFolder(join(FIX, "f32_w2")), false);
  assert.equal(await isDcpFolder(join(FIX, "f32_w2", "model", ".metadata")), false);
  assert.equal(await isDcpFolder("/nonexistent/dir"), false);
});

/** A copy of f32_w2/model in a temp folder, optionally with a broken .metadata. */
async function brokenCopy(dir: string, metadata?: string): Promise<string> {
  const src = join(FIX, "f32_w2", "model");
  const dst = join(dir, "model");
  await Deno.mkdir(dst);
  for await (const e of Deno.readDir(src)) {
    await Deno.copyFile(join(src, e.name), join(dst, e.name));
  }
  if (metadata) {
    await Deno.copyFile(join(FIX, "bad", `${metadata}.metadata`), join(dst, ".metadata"));
  }
  return dst;
}

Deno.test("DcpCheckpoint.open() refuses bad input with coded errors naming tensor and file", async (t) => {
  const cases: [string, string, ErrorCode | undefined, string | undefined][] = [
    ["overlapping chunks", "overlap", "DCP_CHUNK_OVERLAP", "1.weight"],
    ["a hole", "hole", "DCP_CHUNK_HOLE", "1.weight"],
    ["a record whose size disagrees", "record_size", "DCP_RECORD_MISMATCH", "0.weight"],
    ["an item past the end of its file", "item_past_end", "DCP_ITEM_BOUNDS", "1.bias"],
    ["a class outside the record list", "foreign_class", "DCP_METADATA_CLASS", undefined],
    ["a chunk without an item", "chunk_missing", "DCP_CHUNK_MISSING", "3.bias"],
    ["2.7+ transform descriptors", "transform", "DCP_UNSUPPORTED", "1.bias"],
  ];
  for (const [name, file, code, tensor] of cases) {
    await t.step(name, () =>
      withTempDir(async (dir) => {
        const path = await brokenCopy(dir, file);
        await assert.rejects(DcpCheckpoint.open(path), (e) => {
          assert.ok(isCkptError(e, code), `${name}: ${e}`);
          if (tensor) assert.equal(e.tensor, tensor);
          assert.ok(e.file, "names a file");
          return true;
        });
      }));
  }
  await t.step("a missing .distcp file", () =>
    withTempDir(async (dir) => {
      const path = await brokenCopy(dir);
      await Deno.remove(join(path, "__1_0.distcp"));
      await assert.rejects(
        DcpCheckpoint.open(path),
        (e) => isCkptError(e, "DCP_FILE_MISSING") && e.file!.endsWith("__1_0.distcp") && !!e.tensor,
      );
    }));
  await t.step("a truncated .distcp file", () =>
    withTempDir(async (dir) => {
      const path = await brokenCopy(dir);
      await Deno.truncate(join(path, "__0_0.distcp"), 3000);
      await assert.rejects(
        DcpCheckpoint.open(path),
        (e) => isCkptError(e, "DCP_ITEM_BOUNDS") && e.file!.endsWith("__0_0.distcp") && !!e.tensor,
      );
    }));
  await t.step("a corrupted record", () =>
    withTempDir(async (dir) => {
      const path = await brokenCopy(dir);
      const f = await Deno.open(join(path, "__0_0.distcp"), { write: true, read: true });
      // Wipe the end-of-central-directory records of the last item (the file's tail).
      const size = (await f.stat()).size;
      await f.seek(size - 60, Deno.SeekMode.Start);
      await f.write(new Uint8Array(60));
      f.close();
      await assert.rejects(
        DcpCheckpoint.open(path),
        (e) => isCkptError(e, "DCP_RECORD") && e.file!.endsWith("__0_0.distcp") && !!e.tensor,
      );
    }));
  await t.step("no .metadata", () =>
    withTempDir(async (dir) => {
      const path = await brokenCopy(dir);
      await Deno.remove(join(path, ".metadata"));
      await assert.rejects(DcpCheckpoint.open(path), (e) => isCkptError(e, "DCP_METADATA_MISSING"));
    }));
});

Deno.test("DcpCheckpoint.open() reads .metadata pickled with protocols 2, 3, 5 and a 2.7 version field", async () => {
  await using base = await openDcpStateDict(join(FIX, "f32_w2", "model"));
  const want = new Map<string, Uint8Array>();
  for (const [k, t] of base) want.set(k, await t.read());
  for (const variant of ["proto2", "proto3", "proto5", "version"]) {
    await withTempDir(async (dir) => {
      const path = await brokenCopy(dir, variant);
      await using ckpt = await DcpCheckpoint.open(path);
      if (variant === "version") assert.equal(ckpt.metadata.version, "1.0.0");
      await using sd = await openDcpStateDict(path);
      assert.deepEqual([...sd.keys()], [...want.keys()], variant);
      for (const [k, t] of sd) assert.deepEqual(await t.read(), want.get(k), `${variant} ${k}`);
    });
  }
});

Deno.test("an accelerate FSDP1 checkpoint (ShardedTensor, {model}/{optimizer} roots) equals dcp_to_torch_save", async () => {
  await using sd = await openDcpStateDict(join(FIX, "fsdp1_w2", "pytorch_model_fsdp_0"));
  await using full = await loadTorch(join(FIX, "fsdp1_w2", "pytorch_model_fsdp_0_full.pt"));
  const want = flatTensors(full.value);
  // The "model" root is dropped: names are the model's own.
  assert.deepEqual([...sd.keys()], ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias"]);
  assert.deepEqual([...sd.keys()].map((k) => `model.${k}`), [...want.keys()]);
  for (const [k, t] of sd) {
    assert.deepEqual(await t.read(), await want.get(`model.${k}`)!.read(), k);
  }

  const optim = await readDcpOptimizer(join(FIX, "fsdp1_w2", "optimizer_0"), { keyed: "name" });
  try {
    await using of = await loadTorch(join(FIX, "fsdp1_w2", "optimizer_0_full.pt"));
    const theirs = of.dict().get("optimizer") as PyDict;
    assert.deepEqual(optim.paramNames, ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias"]);
    assert.deepEqual(
      await withBytes(optim.value.get("state")!, true),
      await withBytes(theirs.get("state")!, true),
    );
    const og = (optim.value.get("param_groups") as PyDict[])[0]!;
    for (const [k, v] of (theirs.get("param_groups") as PyDict[])[0]!) {
      assert.deepEqual(toJSONish(og.get(k)!), toJSONish(v), String(k));
    }
  } finally {
    await optim.close();
  }
});

Deno.test("DcpCheckpoint keeps at most maxOpenFiles files open (one file per item)", async () => {
  await using full = await loadTorch(join(FIX, "files_w2", "model_full.pt"));
  const want = flatTensors(full.value);
  await using ckpt = await DcpCheckpoint.open(join(FIX, "files_w2", "model"), { maxOpenFiles: 1 });
  const got = await Promise.all(
    ckpt.metadata.entries.map(async (e) => [e.key, await ckpt.tensor(e.key).read()] as const),
  );
  for (const [k, bytes] of got) assert.deepEqual(bytes, await want.get(k)!.read(), k);
  await ckpt.close();
  await assert.rejects(ckpt.tensor("1.weight").read(), (e) => isCkptError(e, "FILE_CLOSED"));
});

Deno.test("DcpFilePool closes idle files beyond its limit, never one in use", async () => {
  const { DcpFilePool } = await import("../../formats/_dcp_files.ts");
  const dir = join(FIX, "files_w2", "model");
  const pool = new DcpFilePool(dir, 2);
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".distcp"));
  for (const n of names) assert.ok((await pool.stat(n, "t")) > 0);
  let release!: () => void;
  const held = pool.use(names[0]!, () => new Promise<void>((r) => (release = r)));
  for (const n of names.slice(1)) await pool.use(n, (f) => f.readAt(0, 4));
  assert.ok(pool.openCount <= 3, `${pool.openCount} open`);
  release();
  await held;
  assert.ok(pool.openCount <= 2);
  await assert.rejects(pool.stat("nope.distcp", "t"), (e) => isCkptError(e, "DCP_FILE_MISSING"));
  await pool.close();
  assert.equal(pool.openCount, 0);
});

Deno.test("DcpFilePool never closes a file that callers were waiting to open, however reads interleave", async () => {
  const { DcpFilePool } = await import("../../formats/_dcp_files.ts");
  const dir = join(FIX, "files_w2", "model");
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".distcp"));
  assert.ok(names.length >= 3, `${names.length} files`);
  const pool = new DcpFilePool(dir, 1);
  for (const n of names) await pool.stat(n, "t");
  // many readers of every file at once through a one-file pool: each open races the others' evictions
  for (let round = 0; round < 20; round++) {
    const reads = names.flatMap((n) =>
      Array.from({ length: 4 }, () => pool.use(n, (f) => f.readAt(0, 4)))
    );
    for (const bytes of await Promise.all(reads)) assert.equal(bytes.length, 4);
  }
  assert.ok(pool.openCount <= 1, `${pool.openCount} open`);
  await pool.close();
});
