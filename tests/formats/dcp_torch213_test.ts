/**
 * The DCP layouts torch 2.13 writes besides torch.save items (fixtures st_w3 and hf_w3 by
 * tests/fixtures/dcp/generate_torch213.py: FSDP2, 3 gloo ranks, uneven and zero-size shards):
 * `SerializationFormat.SAFETENSORS` folders and `HuggingFaceStorageWriter` shards without
 * `.metadata` (and, pt_w3, torch 2.13's default layout), compared byte for byte with the full state dicts torch assembled in the same run.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DcpCheckpoint, openDcpStateDict } from "../../formats/dcp.ts";
import { openDcpHf, openDcpHfStateDict, readDcpHfMetadata } from "../../formats/dcp_hf.ts";
import { readDcpOptimizer } from "../../formats/dcp_optim.ts";
import { openHfShards } from "../../formats/safetensors.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import { loadTorch } from "../../formats/torch/load.ts";
import { type PyDict, toJSONish } from "../../formats/torch/values.ts";
import { isCkptError } from "../../errors.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { flatTensors, withBytes } from "../_helpers/torch.ts";

const FIX = new URL("../fixtures/dcp/", import.meta.url).pathname;
const ST = join(FIX, "st_w3");
const HF = join(FIX, "hf_w3");
const NAMES = ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias"];

async function assertEqualsReference(sd: StateDict, what: string): Promise<void> {
  await using ref = await loadTorch(join(ST, "reference.pt"));
  const want = flatTensors(ref.dict().get("model")!);
  assert.deepEqual([...sd.keys()], [...want.keys()], what);
  for (const [name, t] of sd) {
    const w = want.get(name)!;
    assert.equal(t.dtype, w.dtype, `${what} ${name}`);
    assert.deepEqual(t.shape, w.shape, `${what} ${name}`);
    const whole = await t.read();
    assert.deepEqual(whole, await w.read(), `${what} ${name}`);
    // Every row block, across the rank boundaries (3 + 3 + 1, 3 + 3 + 2, 1 + 0 + 0 rows).
    const rows = t.shape[0]!;
    const rowBytes = whole.byteLength / rows;
    for (let a = 0; a <= rows; a++) {
      for (let b = a; b <= rows; b++) {
        assert.deepEqual(await t.read(a, b), whole.subarray(a * rowBytes, b * rowBytes));
      }
    }
  }
}

Deno.test("a SAFETENSORS-format DCP model equals the full state dict torch gathered", async () => {
  await using sd = await openDcpStateDict(join(ST, "model"));
  assert.deepEqual([...sd.keys()], NAMES);
  await assertEqualsReference(sd, "st_w3");
});

Deno.test("torch 2.13's default (torch.save item) layout under accelerate's {model} root equals it too", async () => {
  await using sd = await openDcpStateDict(join(FIX, "pt_w3", "pytorch_model_fsdp_0"));
  await assertEqualsReference(sd, "pt_w3");
  await using ckpt = await DcpCheckpoint.open(join(FIX, "pt_w3", "pytorch_model_fsdp_0"));
  assert.equal(ckpt.metadata.version, "1.0.0");
});

Deno.test("HuggingFaceStorageWriter shards equal torch's gathered state dict and its own consolidation", async () => {
  await using sd = await openDcpHfStateDict(join(HF, "model"));
  await assertEqualsReference(sd, "hf_w3");
  // torch's consolidate_safetensors_files of the same folder: the same tensors, the same bytes.
  await using cons = await openHfShards(join(HF, "consolidated"));
  assert.deepEqual([...cons.keys()].sort(), [...sd.keys()].sort());
  for (const [name, t] of cons) {
    assert.deepEqual(await sd.require(name).read(), await t.read(), name);
  }
});

Deno.test("HuggingFaceStorageWriter shards: chunks from each file's DCP_SHARDING_INFO, shapes from their extent", async () => {
  const md = await readDcpHfMetadata(join(HF, "model"));
  assert.equal(md.layout, "huggingface");
  const w = md.entries.find((e) => e.key === "1.weight");
  assert.ok(w?.kind === "tensor");
  assert.deepEqual(w.shape, [8, 5]);
  assert.deepEqual(w.chunks.map((c) => [c.offsets, c.sizes, c.file]), [
    [[0, 0], [3, 5], "shard-00001-model-00001-of-00002.safetensors"],
    [[3, 0], [3, 5], "shard-00002-model-00001-of-00002.safetensors"],
    [[6, 0], [2, 5], "shard-00003-model-00001-of-00002.safetensors"],
  ]);
  // The 1-row weight: rank 0 holds the row, rank 2 an empty chunk (torch dropped rank 1's
  // identical empty chunk as a duplicate).
  const last = md.entries.find((e) => e.key === "3.weight");
  assert.ok(last?.kind === "tensor");
  assert.deepEqual(last.shape, [1, 8]);
  assert.deepEqual(last.chunks.map((c) => [c.offsets, c.sizes]), [[[0, 0], [1, 8]], [[1, 0], [
    0,
    8,
  ]]]);
});

Deno.test("SAFETENSORS-format DCP optimizer state equals torch's full optimizer state dict", async () => {
  await using ref = await loadTorch(join(ST, "reference.pt"));
  const named = await readDcpOptimizer(join(ST, "optim"), { keyed: "name" });
  try {
    const theirs = ref.dict().get("optim") as PyDict;
    const os = named.value.get("state") as PyDict, ts = theirs.get("state") as PyDict;
    assert.deepEqual([...os.keys()].sort(), [...ts.keys()].sort());
    for (const [k, v] of ts) {
      assert.deepEqual(await withBytes(os.get(k)!, true), await withBytes(v, true), String(k));
    }
    const og = (named.value.get("param_groups") as PyDict[])[0]!;
    const tg = (theirs.get("param_groups") as PyDict[])[0]!;
    for (const [k, v] of tg) assert.deepEqual(toJSONish(og.get(k)!), toJSONish(v), String(k));
    assert.equal(og.size, tg.size);
  } finally {
    await named.close();
  }
  // Int-keyed: the unsharded twin's optimizer.state_dict(), torch 2.13's keys
  // (decoupled_weight_decay) included, in its order.
  const keyed = await readDcpOptimizer(join(ST, "optim"));
  try {
    assert.deepEqual(keyed.paramNames, ref.dict().get("param_names"));
    assert.deepEqual(await withBytes(keyed.value), await withBytes(ref.dict().get("twin")!));
  } finally {
    await keyed.close();
  }
});

Deno.test("HuggingFaceStorageWriter optimizer shards are refused: their values have no names", async () => {
  await assert.rejects(
    openDcpHfStateDict(join(HF, "optim")),
    (e) =>
      isCkptError(e, "DCP_UNSUPPORTED") && e.file!.endsWith(".safetensors") &&
      /torch\.save record/.test(e.message),
  );
});

/** A copy of a fixture folder to break. */
async function copy(from: string, to: string): Promise<string> {
  await Deno.mkdir(to, { recursive: true });
  for (const e of Deno.readDirSync(from)) await Deno.copyFile(join(from, e.name), join(to, e.name));
  return to;
}

/** Rewrites the safetensors header at `base` of `file` with `edit` (same length, space-padded). */
async function editHeader(file: string, base: number, edit: (h: string) => string) {
  const bytes = await Deno.readFile(file);
  const n = Number(new DataView(bytes.buffer, base, 8).getBigUint64(0, true));
  const text = new TextDecoder().decode(bytes.subarray(base + 8, base + 8 + n));
  const changed = edit(text);
  assert.notEqual(changed, text);
  assert.ok(changed.length <= n);
  bytes.set(new TextEncoder().encode(changed.padEnd(n, " ")), base + 8);
  await Deno.writeFile(file, bytes);
}

Deno.test("blob-encoded DCP items that disagree with the metadata are refused naming tensor and file", async (t) => {
  await t.step("saved_offsets differ from the chunk's offsets", () =>
    withTempDir(async (dir) => {
      const path = await copy(join(ST, "model"), join(dir, "m"));
      await editHeader(join(path, "__1_0.distcp"), 0, (h) => h.replace("[3, 0]", "[4, 0]"));
      await assert.rejects(
        DcpCheckpoint.open(path),
        (e) =>
          isCkptError(e, "DCP_RECORD_MISMATCH") && e.file!.endsWith("__1_0.distcp") &&
          e.tensor === "0.weight",
      );
    }));
  await t.step("the blob lacks the tensor", () =>
    withTempDir(async (dir) => {
      const path = await copy(join(ST, "model"), join(dir, "m"));
      await editHeader(join(path, "__2_0.distcp"), 0, (h) => h.replaceAll('"1.bias"', '"1.bXas"'));
      await assert.rejects(
        DcpCheckpoint.open(path),
        (e) => isCkptError(e, "DCP_RECORD") && e.tensor === "1.bias" && /no tensor/.test(e.message),
      );
    }));
  await t.step("a truncated blob", () =>
    withTempDir(async (dir) => {
      const path = await copy(join(ST, "model"), join(dir, "m"));
      const f = join(path, "__0_0.distcp");
      await Deno.truncate(f, (await Deno.stat(f)).size - 2);
      await assert.rejects(
        DcpCheckpoint.open(path),
        (e) => isCkptError(e, "DCP_RECORD") && /truncated/.test(e.message) && !!e.tensor,
      );
    }));
  await t.step("HF shards whose chunks overlap", () =>
    withTempDir(async (dir) => {
      const path = await copy(join(HF, "model"), join(dir, "m"));
      await editHeader(
        join(path, "shard-00002-model-00001-of-00002.safetensors"),
        0,
        (h) =>
          h.replace(
            '\\"1.weight\\": {\\"saved_offsets\\": [3, 0]',
            '\\"1.weight\\": {\\"saved_offsets\\": [2, 0]',
          ),
      );
      await assert.rejects(
        openDcpHf(path),
        (e) => isCkptError(e, "DCP_CHUNK_OVERLAP") && e.tensor === "1.weight",
      );
    }));
  await t.step("HF shards that disagree on the file count", () =>
    withTempDir(async (dir) => {
      const path = await copy(join(HF, "model"), join(dir, "m"));
      await Deno.rename(
        join(path, "shard-00003-model-00002-of-00002.safetensors"),
        join(path, "shard-00003-model-00002-of-00003.safetensors"),
      );
      await assert.rejects(openDcpHf(path), (e) => isCkptError(e, "DCP_METADATA") && !!e.file);
    }));
});
