import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { hashFile, HashWorker } from "../../pipelines/hashing.ts";
import { withTempDir } from "../_helpers/tmp.ts";

Deno.test("`hashFile()` streams files larger than its block and matches node:crypto", async () => {
  await withTempDir(async (dir) => {
    const bytes = new Uint8Array(9 * 1024 * 1024 + 7);
    for (let i = 0; i < bytes.length; i += 4096) bytes[i] = i & 0xff;
    await Deno.writeFile(join(dir, "big"), bytes);
    const got = await hashFile(join(dir, "big"));
    assert.equal(got.size, bytes.length);
    assert.equal(got.sha256, createHash("sha256").update(bytes).digest("hex"));
    await Deno.writeFile(join(dir, "empty"), new Uint8Array());
    assert.equal(
      (await hashFile(join(dir, "empty"))).sha256,
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    );
  });
});

Deno.test("`HashWorker.stream()` digests chunked input as hashFile does the whole file", async () => {
  await withTempDir(async (dir) => {
    const bytes = new Uint8Array(5 * 1024 * 1024 + 13);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 12)) & 0xff;
    await Deno.writeFile(join(dir, "f"), bytes);
    const worker = new HashWorker();
    try {
      // a small queue limit, so updates wait on the worker; one reused buffer, as writers do
      const stream = worker.stream(1024 * 1024);
      const buf = new Uint8Array(700_001);
      for (let off = 0; off < bytes.length; off += buf.length) {
        const n = Math.min(buf.length, bytes.length - off);
        buf.set(bytes.subarray(off, off + n));
        await stream.update(buf.subarray(0, n));
        buf.fill(0xee); // the stream copied the block: overwriting it changes nothing
      }
      assert.equal(stream.size, bytes.length);
      // two streams at once on the same worker stay apart
      const other = worker.stream();
      await other.update(new TextEncoder().encode("abc"));
      assert.deepEqual(await stream.digest(), await hashFile(join(dir, "f")));
      assert.equal(
        (await other.digest()).sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      );
      // the file request of the older protocol still works beside streams
      assert.deepEqual(await worker.hash(join(dir, "f")), await hashFile(join(dir, "f")));
    } finally {
      worker.close();
    }
  });
});

Deno.test("`HashWorker.stream()` digests an empty stream; abort discards a stream", async () => {
  const worker = new HashWorker();
  try {
    const empty = worker.stream();
    await empty.update(new Uint8Array());
    assert.deepEqual(await empty.digest(), {
      size: 0,
      sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    });
    const aborted = worker.stream();
    await aborted.update(new Uint8Array([1, 2, 3]));
    aborted.abort();
    await assert.rejects(aborted.digest());
    assert.throws(() => aborted.update(new Uint8Array([4])));
    // a stream started after an abort is not affected by it
    const next = worker.stream();
    await next.update(new TextEncoder().encode("abc"));
    assert.equal(
      (await next.digest()).sha256,
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
    await assert.rejects(next.digest());
  } finally {
    worker.close();
  }
});

Deno.test("`HashWorker.close()` rejects a pending digest and releases a waiting update", async () => {
  const worker = new HashWorker();
  const stream = worker.stream(1);
  const waiting = stream.update(new Uint8Array(1024));
  assert.ok(waiting instanceof Promise, "over the queue limit, update asks the caller to wait");
  const digest = stream.digest();
  worker.close();
  await waiting;
  await assert.rejects(digest);
});

Deno.test("`HashWorker.stream()` hashes bytes in shared memory where they are, and settles once it has", async () => {
  const worker = new HashWorker();
  try {
    const shared = new Uint8Array(new SharedArrayBuffer(3 * 1024 * 1024));
    for (let i = 0; i < shared.length; i++) shared[i] = (i * 13 + (i >> 10)) & 0xff;
    const expected = createHash("sha256").update(shared).digest("hex");
    const stream = worker.stream(1024); // a tiny copy queue: shared updates do not count in it
    const third = shared.length / 3;
    const updates = [0, 1, 2].map((k) =>
      stream.update(shared.subarray(k * third, (k + 1) * third))
    );
    assert.ok(updates.every((u) => u instanceof Promise), "each shared update is a promise");
    await Promise.all(updates);
    shared.fill(0xee); // hashed before the promises settled: changing the memory now changes nothing
    assert.deepEqual(await stream.digest(), { size: 3 * third, sha256: expected });
  } finally {
    worker.close();
  }
});

Deno.test("an update of shared memory after its hash worker was closed does not wait, and the digest fails", async () => {
  const worker = new HashWorker();
  const stream = worker.stream();
  await stream.update(new Uint8Array(new SharedArrayBuffer(8)));
  worker.close();
  assert.equal(
    stream.update(new Uint8Array(new SharedArrayBuffer(8))),
    undefined,
    "nothing to wait for",
  );
  await assert.rejects(() => stream.digest(), /closed/);
});
