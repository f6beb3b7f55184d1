import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import { rowCount, StateDict, type TensorRef } from "../../formats/state_dict.ts";
import { createCpuBackend } from "../../kernels/cpu/backend.ts";
import type { MergeBackend } from "../../kernels/types.ts";
import { mergeLora } from "../../merge/lora.ts";
import {
  LORA_CASES,
  LORA_FIXTURES,
  openCase,
  referenceBackend,
  runCase,
} from "./_lora_fixtures.ts";
import { adapter, P, recording, seq, t, values } from "./_lora_helpers.ts";

Deno.test("`mergeLora()` gives the same bytes for any block size", async () => {
  const a = await runCase("dora", undefined, 64);
  const b = await runCase("dora", undefined, 1 << 20);
  assert.deepEqual([...a.bytes.keys()], [...b.bytes.keys()]);
  for (const [k, v] of a.bytes) assert.deepEqual(v, b.bytes.get(k), k);
});

Deno.test("every folder of tests/fixtures/lora is a case of LORA_CASES, and each has its expectations", async () => {
  const folders: string[] = [];
  for await (const e of Deno.readDir(LORA_FIXTURES)) if (e.isDirectory) folders.push(e.name);
  assert.deepEqual([...LORA_CASES].sort(), folders.sort());
  for (const name of LORA_CASES) {
    for (const f of ["case.json", "expected.safetensors", "exact.safetensors"]) {
      assert.ok((await Deno.stat(join(LORA_FIXTURES, name, f))).isFile, `${name}/${f}`);
    }
  }
});

Deno.test("`mergeLora()` reads nothing before a tensor is read, and splits reads into blocks", async () => {
  let reads = 0;
  const w = t("BF16", [8, 4], seq(32, 1));
  const counted: TensorRef = {
    dtype: w.dtype,
    shape: w.shape,
    read(s, e) {
      reads++;
      return w.read(s, e);
    },
  };
  const base = new StateDict([["m.weight", counted]]);
  const { backend, reqs } = recording();
  const ad = adapter([
    [`${P}m.lora_A.weight`, t("F32", [2, 4], seq(8, 2))],
    [`${P}m.lora_B.weight`, t("F32", [8, 2], seq(16, 3))],
  ]);
  const { stateDict } = await mergeLora(base, [ad], { backend, blockBytes: 16, prefetch: false });
  assert.equal(reads, 0);
  const rows = await stateDict.require("m.weight").read(1, 7);
  assert.equal(rows.byteLength, 6 * 4 * 2);
  assert.equal(reqs.length, 3); // 2 rows (16 bytes) per block
  assert.deepEqual(reqs.map((r) => r.rows), [2, 2, 2]);
  assert.equal(reqs[0]!.scale, 2);
  const whole = await stateDict.require("m.weight").read();
  assert.deepEqual(whole.subarray(8, 56), rows);
  await stateDict.close();
  await backend.dispose();
});

Deno.test("`mergeLora()` folds weights and scales of several adapters into one rounding", async () => {
  const W = seq(6, 9);
  const base = new StateDict([["m.weight", t("F32", [2, 3], W)]]);
  const a1 = adapter(
    [
      [`${P}m.lora_A.weight`, t("F32", [1, 3], [1, 2, 3])],
      [`${P}m.lora_B.weight`, t("F32", [2, 1], [1, -1])],
    ],
    { r: 1, lora_alpha: 2 },
    "one",
  );
  const a2 = adapter(
    [
      [`${P}m.lora_A.weight`, t("F32", [2, 3], [1, 0, 0, 0, 0, 1])],
      [`${P}m.lora_B.weight`, t("F32", [2, 2], [1, 2, 3, 4])],
    ],
    { r: 2, lora_alpha: 2 },
    "two",
  );
  const { stateDict, report } = await mergeLora(
    base,
    [{ ...a1, weight: 0.5 }, { ...a2, weight: 2 }],
    { backend: referenceBackend() },
  );
  const got = await values(stateDict.require("m.weight"));
  const d1 = [[1, 2, 3], [-1, -2, -3]].map((r) => r.map((v) => v * 2 * 0.5));
  const d2 = [[1, 0, 2], [3, 0, 4]].map((r) => r.map((v) => v * 1 * 2));
  const want = W.map((w, i) =>
    Math.fround(w + d1[Math.floor(i / 3)]![i % 3]! + d2[Math.floor(i / 3)]![i % 3]!)
  );
  assert.deepEqual(got, want);
  assert.deepEqual(report.adapters.map((a) => [a.name, a.weight, a.tensors, a.useDora]), [
    ["one", 0.5, 2, false],
    ["two", 2, 2, false],
  ]);
  assert.deepEqual(report.modules[0]!.adapters.map((a) => [a.name, a.weight, a.scale]), [
    ["one", 0.5, 2],
    ["two", 2, 1],
  ]);
  await stateDict.close();
});

Deno.test("`mergeLora()` with safe refuses a non-finite result when the block is read", async () => {
  const base = new StateDict([["m.weight", t("F16", [2, 2], [60000, 1, 2, 3])]]);
  const ad = adapter([
    [`${P}m.lora_A.weight`, t("F32", [1, 2], [1, 0])],
    [`${P}m.lora_B.weight`, t("F32", [2, 1], [10000, 0])],
  ], { r: 1, lora_alpha: 1 });
  const { stateDict } = await mergeLora(base, [ad], { backend: referenceBackend(), safe: true });
  await assert.rejects(stateDict.require("m.weight").read(), (e) => {
    assert.ok(isCkptError(e, "LORA_NONFINITE"));
    assert.equal(e.tensor, "m.weight");
    assert.deepEqual(e.details, { row: 0, column: 0 });
    return true;
  });
  assert.equal((await stateDict.require("m.weight").read(1, 2)).byteLength, 4);
  await stateDict.close();
});

Deno.test("`mergeLora()` casts merged tensors to outDtype and leaves others alone", async () => {
  const base = new StateDict([
    ["m.weight", t("F32", [1, 2], [1, 2])],
    ["n.weight", t("F32", [2], [1, 2])],
  ]);
  const ad = adapter([
    [`${P}m.lora_A.weight`, t("F32", [1, 2], [1, 1])],
    [`${P}m.lora_B.weight`, t("F32", [1, 1], [1])],
  ], { r: 1, lora_alpha: 1 });
  const { stateDict, report } = await mergeLora(base, [ad], {
    backend: referenceBackend(),
    outDtype: "BF16",
  });
  assert.equal(stateDict.require("m.weight").dtype, "BF16");
  assert.equal(stateDict.require("n.weight").dtype, "F32");
  assert.deepEqual(await values(stateDict.require("m.weight")), [2, 3]);
  assert.equal(report.modules[0]!.dtype, "BF16");
  await stateDict.close();
});

Deno.test("`mergeLora()` computes the next row range ahead and serves it to an in-order reader", async () => {
  const w = t("BF16", [64, 8], seq(512, 11));
  const ad = () =>
    adapter([
      [`${P}m.lora_A.weight`, t("F32", [2, 8], seq(16, 12))],
      [`${P}m.lora_B.weight`, t("F32", [64, 2], seq(128, 13))],
    ]);
  const { backend, reqs } = recording();
  const on = await mergeLora(new StateDict([["m.weight", w]]), [ad()], {
    backend,
    blockBytes: 1 << 20,
  });
  const chunks: Uint8Array[] = [];
  for (let s = 0; s < 64; s += 10) {
    chunks.push(await on.stateDict.require("m.weight").read(s, Math.min(64, s + 10)));
  }
  // seven ranges, each computed once (the first on demand, the others ahead)
  assert.deepEqual(reqs.map((r) => r.rows), [10, 10, 10, 10, 10, 10, 4]);
  const off = await mergeLora(new StateDict([["m.weight", w]]), [ad()], {
    backend: referenceBackend(),
    prefetch: false,
  });
  const whole = await off.stateDict.require("m.weight").read();
  const joined = new Uint8Array(whole.length);
  let o = 0;
  for (const c of chunks) {
    joined.set(c, o);
    o += c.length;
  }
  assert.deepEqual(joined, whole);
  // an out-of-order read is computed on demand, and close waits for work computed ahead
  await on.stateDict.require("m.weight").read(3, 5);
  await on.stateDict.close();
  await off.stateDict.close();
});

Deno.test("merged refs' `readInto()` writes `read()`'s bytes into the writer's buffer on every fixture case", async () => {
  const cpu = await createCpuBackend({ workers: 2, inlineBelow: 0, chunkElements: 64 });
  let inPlace = 0;
  const backend: MergeBackend = {
    kind: "cpu",
    description: cpu.description,
    mergeRows: (req) => cpu.mergeRows(req),
    mergeRowsInto: (req, out) => {
      inPlace++;
      return cpu.mergeRowsInto(req, out);
    },
    dispose: () => Promise.resolve(),
  };
  try {
    for (const name of LORA_CASES) {
      const { base, adapters, json } = await openCase(name);
      const { stateDict } = await mergeLora(base, adapters, {
        backend,
        blockBytes: 96,
        safe: true,
        ...(json.wrapped ? { wrapped: json.wrapped } : {}),
        ...(json.outDtype ? { outDtype: json.outDtype } : {}),
      });
      for (const [key, ref] of stateDict) {
        if (!ref.readInto) continue;
        const rows = rowCount(ref.shape);
        const whole = await ref.read();
        const ranges: [number, number][] = [[0, rows]];
        if (rows > 2) ranges.push([1, rows - 1]);
        for (const [s, e] of ranges) {
          const per = whole.byteLength / rows;
          const buffer = new Uint8Array(whole.byteLength + 16).fill(0xa5);
          const got = await ref.readInto(s, e, buffer);
          assert.deepEqual(got, whole.subarray(s * per, e * per), `${name}: ${key} [${s}, ${e})`);
        }
      }
      await stateDict.close();
    }
    assert.ok(inPlace > 0, "some blocks were merged in place");
  } finally {
    await cpu.dispose();
  }
});

Deno.test("a merged ref's `readInto()` refuses rows outside the tensor with ROW_RANGE", async () => {
  const base = new StateDict([["m.weight", t("F32", [4, 3], seq(12, 1))]]);
  const ad = adapter([
    [`${P}m.lora_A.weight`, t("F32", [2, 3], seq(6, 2))],
    [`${P}m.lora_B.weight`, t("F32", [4, 2], seq(8, 3))],
  ]);
  const cpu = await createCpuBackend({ workers: 0 });
  const { stateDict } = await mergeLora(base, [ad], { backend: cpu });
  const ref = stateDict.require("m.weight");
  await assert.rejects(ref.readInto!(2, 5, new Uint8Array(64)), { code: "ROW_RANGE" });
  await assert.rejects(ref.readInto!(3, 2, new Uint8Array(64)), { code: "ROW_RANGE" });
  await stateDict.close();
  await cpu.dispose();
});
