/** ReadAhead (saveTorch's reads of small storages ahead of the writer): order, budget, ring, faults. */
import assert from "node:assert/strict";
import { isCkptError } from "../../../errors.ts";
import {
  READ_AHEAD_BUDGET,
  READ_AHEAD_MAX_STORAGE,
  ReadAhead,
  READS_AT_ONCE,
  readsAhead,
} from "../../../formats/torch/_read_ahead.ts";
import { type StorageSource, TorchStorage } from "../../../formats/torch/values.ts";

/** What the test sources saw: bytes and reads in flight, now and at most. */
interface Seen {
  inFlight: number;
  most: number;
  reads?: number;
  mostReads?: number;
}

/**
 * A U8 storage of `n` bytes filled with `seed`, whose reads take a tick and are counted; with
 * `own`, a source without `readInto` that returns bytes of its own.
 */
function storage(
  n: number,
  seed: number,
  seen: Seen,
  options: { independent?: boolean; fail?: boolean; own?: boolean } = {},
): TorchStorage {
  const read = async (s: number, e: number, into: Uint8Array) => {
    seen.inFlight += e - s;
    seen.most = Math.max(seen.most, seen.inFlight);
    seen.reads = (seen.reads ?? 0) + 1;
    seen.mostReads = Math.max(seen.mostReads ?? 0, seen.reads);
    await new Promise((r) => setTimeout(r, 0));
    seen.inFlight -= e - s;
    seen.reads--;
    if (options.fail) throw new Error(`storage ${seed} cannot be read`);
    return into.subarray(0, e - s).fill(seed);
  };
  const source: StorageSource = options.own
    ? {
      byteLength: n,
      independentReads: options.independent ?? true,
      read: (s, e) => read(s, e, new Uint8Array(e - s)),
    }
    : {
      byteLength: n,
      independentReads: options.independent ?? true,
      read: () => Promise.reject(new Error("read() is not used when readInto() exists")),
      readInto: read,
    };
  return new TorchStorage("U8", n, source);
}

Deno.test("readsAhead() takes small storages whose reads may overlap, nothing else", () => {
  const seen = { inFlight: 0, most: 0 };
  assert.equal(readsAhead(storage(10, 1, seen), 10), true);
  assert.equal(readsAhead(storage(10, 1, seen, { independent: false }), 10), false);
  const big = READ_AHEAD_MAX_STORAGE + 1;
  assert.equal(readsAhead(storage(big, 1, seen), big), false);
  assert.equal(readsAhead(storage(10, 1, seen), 11), false, "more bytes than the source has");
});

Deno.test("ReadAhead keeps each storage's bytes until it is released, through a ring that wraps, within its budget", async () => {
  const seen = { inFlight: 0, most: 0 };
  // sizes that do not divide the slab, so the ring wraps at varying places
  const size = (i: number) => READ_AHEAD_MAX_STORAGE - 65536 * (i % 9);
  const list = Array.from({ length: 60 }, (_, i) => {
    const s = i % 7 === 3
      ? storage(100, i, seen, { independent: false })
      : storage(size(i), i, seen, { own: i % 11 === 5 });
    return [s, s.byteLength] as const;
  });
  const ahead = new ReadAhead(list, undefined);
  for (const [i, [s, bytes]] of list.entries()) {
    if (!readsAhead(s, bytes)) continue;
    const got = await ahead.take(i);
    await new Promise((r) => setTimeout(r, 1)); // the reads ahead land meanwhile
    assert.equal(got.length, size(i));
    assert.ok(got.every((b) => b === (i & 255)), `storage ${i} has its own bytes`);
    ahead.release(i);
  }
  assert.ok(seen.most > 2 * size(0), `several reads ran at once (${seen.most} bytes)`);
  assert.ok(
    seen.most <= READ_AHEAD_BUDGET + READ_AHEAD_MAX_STORAGE,
    `at most the budget in flight (${seen.most})`,
  );
});

Deno.test("ReadAhead fails a storage whose read fails at its take, and close() waits for the reads in flight", async () => {
  const seen = { inFlight: 0, most: 0 };
  const list = [0, 1, 2, 3].map((i) => {
    const s = storage(1000, i, seen, { fail: i === 1 });
    return [s, 1000] as const;
  });
  const ahead = new ReadAhead(list, undefined);
  assert.equal((await ahead.take(0))[0], 0);
  ahead.release(0);
  await assert.rejects(ahead.take(1), /storage 1 cannot be read/);
  await ahead.close();
  assert.equal(seen.inFlight, 0, "no read left running");
});

Deno.test("ReadAhead refuses a source that returns the wrong number of bytes", async () => {
  const source: StorageSource = {
    byteLength: 8,
    independentReads: true,
    read: () => Promise.resolve(new Uint8Array(3)),
  };
  const ahead = new ReadAhead([[new TorchStorage("U8", 8, source), 8]], undefined);
  await assert.rejects(ahead.take(0), (e) => isCkptError(e) && e.code === "TORCH_WRITE");
});

Deno.test("ReadAhead starts nothing once its signal is aborted", async () => {
  const seen = { inFlight: 0, most: 0 };
  const ctl = new AbortController();
  ctl.abort();
  const s = storage(10, 1, seen);
  const ahead = new ReadAhead([[s, 10]], ctl.signal);
  assert.equal(seen.most, 0);
  await ahead.close();
});

Deno.test("ReadAhead keeps at most READS_AT_ONCE reads in flight over many tiny storages, and gives each its bytes", async () => {
  const seen: Seen = { inFlight: 0, most: 0 };
  const list = Array.from({ length: 5000 }, (_, i) => {
    const s = storage(1 + (i % 5), i, seen, { own: i % 3 === 0 });
    return [s, s.byteLength] as const;
  });
  const ahead = new ReadAhead(list, undefined);
  for (const [i, [, n]] of list.entries()) {
    const got = await ahead.take(i);
    assert.equal(got.length, n);
    assert.ok(got.every((b) => b === (i & 255)), `storage ${i}`);
    ahead.release(i);
  }
  assert.ok(seen.mostReads! > 1, "reads overlap");
  assert.ok(seen.mostReads! <= READS_AT_ONCE, `at most ${READS_AT_ONCE} (${seen.mostReads})`);
});

Deno.test("ReadAhead's ring never hands out live bytes, with a budget that keeps it full and wrapping at every size", async () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const seen: Seen = { inFlight: 0, most: 0 };
    let x = seed;
    const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31);
    const list = Array.from({ length: 400 }, (_, i) => {
      const s = storage(1 + (next() % 1000), i, seen, { own: next() % 13 === 0 });
      return [s, s.byteLength] as const;
    });
    const ahead = new ReadAhead(list, undefined, 3000);
    for (const [i, [, n]] of list.entries()) {
      const got = await ahead.take(i);
      await new Promise((r) => setTimeout(r, 0)); // the reads ahead land meanwhile
      assert.equal(got.length, n);
      assert.ok(got.every((b) => b === (i & 255)), `seed ${seed}: storage ${i} kept its bytes`);
      ahead.release(i);
    }
  }
});
