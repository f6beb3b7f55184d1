import assert from "node:assert/strict";
import { tensorFromBytes, type TensorRef } from "../../../formats/state_dict.ts";
import { sameTensor } from "../../../pipelines/stages/model/plan.ts";

/** A 4096 × 64 bf16 tensor (128 bytes a row, 512 KiB), with `readBytes` counting the bytes read. */
function counted(bytes: Uint8Array): TensorRef & { readBytes: number } {
  const inner = tensorFromBytes("BF16", [4096, 64], bytes);
  const ref = {
    ...inner,
    readBytes: 0,
    async read(s?: number, e?: number) {
      const got = await inner.read(s, e);
      ref.readBytes += got.byteLength;
      return got;
    },
  };
  return ref;
}

const pattern = () => Uint8Array.from({ length: 4096 * 128 }, (_, i) => (i * 31) % 251);

Deno.test("`sameTensor()` tells an embedding and a head apart from their first rows: 64 KiB of each is read, not 8 MiB", async () => {
  const x = counted(pattern());
  const other = pattern();
  other[5] = other[5]! ^ 1;
  const y = counted(other);
  assert.equal(await sameTensor(x, y), false);
  assert.equal(x.readBytes, 64 << 10);
  assert.equal(y.readBytes, 64 << 10);
});

Deno.test("`sameTensor()` reads equal tensors to the end in doubling blocks, and finds a difference in the last byte", async () => {
  const x = counted(pattern());
  assert.equal(await sameTensor(x, counted(pattern())), true);
  assert.equal(x.readBytes, 4096 * 128);
  const last = pattern();
  last[last.length - 1] = last[last.length - 1]! ^ 0x80;
  assert.equal(await sameTensor(counted(pattern()), counted(last)), false);
});
