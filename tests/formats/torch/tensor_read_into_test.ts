import assert from "node:assert/strict";
import { join } from "node:path";
import { StateDict, type TensorRef } from "../../../formats/state_dict.ts";
import { saveTorchStateDict } from "../../../formats/torch/save.ts";
import { openTorchStateDict } from "../../../formats/torch/state_dict.ts";
import { torchTensor } from "../../../formats/torch/tensor.ts";
import { t } from "../../merge/_lora_helpers.ts";

/** `ref` with a readInto that counts its calls and fills the caller's buffer. */
function withReadInto(ref: TensorRef, calls: { n: number }): TensorRef {
  return {
    dtype: ref.dtype,
    shape: ref.shape,
    read: (s, e) => ref.read(s, e),
    async readInto(s, e, into) {
      calls.n++;
      const bytes = await ref.read(s, e);
      into.set(bytes);
      return into.subarray(0, bytes.byteLength);
    },
  };
}

Deno.test("`torchTensor()` storages read whole rows through the ref's readInto, other ranges through read", async () => {
  const calls = { n: 0 };
  const base = t("F32", [6, 4], Array.from({ length: 24 }, (_, i) => i));
  const src = torchTensor(withReadInto(base, calls)).storage.source;
  const buf = new Uint8Array(64).fill(0xee);
  const rows = await src.readInto!(16, 48, buf); // rows 1 and 2
  assert.equal(calls.n, 1);
  assert.equal(rows.buffer, buf.buffer);
  assert.deepEqual(rows, await base.read(1, 3));
  const part = await src.readInto!(20, 40, buf); // not whole rows: read() and a slice
  assert.equal(calls.n, 1);
  assert.deepEqual(part, (await base.read()).subarray(20, 40));
  assert.equal(torchTensor(base).storage.source.readInto, undefined);
});

Deno.test("`saveTorchStateDict()` streams refs with readInto into its block buffers and writes the same tensors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const calls = { n: 0 };
    const w = t("BF16", [300, 40], Array.from({ length: 12000 }, (_, i) => (i % 97) / 8));
    const sd = new StateDict([["w", withReadInto(w, calls)], ["b", t("F32", [3], [1, 2, 3])]]);
    await saveTorchStateDict(join(dir, "model.bin"), sd, { blockSize: 4096 });
    assert.ok(calls.n >= 300 * 40 * 2 / 4096, `${calls.n} blocks read in place`);
    await using back = await openTorchStateDict(join(dir, "model.bin"));
    assert.deepEqual(await back.require("w").read(), await w.read());
    assert.deepEqual(
      await back.require("b").read(),
      new Uint8Array(new Float32Array([1, 2, 3]).buffer),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
