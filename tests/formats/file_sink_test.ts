import assert from "node:assert/strict";
import { join } from "node:path";
import { CkptError } from "../../errors.ts";
import {
  createFileSink,
  DIRECT_BLOCK_BYTES,
  DIRECT_MIN_BYTES,
  DIRECT_RING_BYTES,
  RESERVE_MAX_BYTES,
} from "../../formats/_file_sink.ts";
import {
  openSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
} from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { saveTorchStateDict } from "../../formats/torch/save.ts";
import { openTorchStateDict } from "../../formats/torch/state_dict.ts";
import { withTempDir } from "../_helpers/tmp.ts";

/** Deterministic bytes that differ at every offset of a block (a shifted block would show). */
function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Runs `fn` with `CKPT_DIRECT_IO` set to `value` (or unset), restoring it afterwards. */
async function withDirectIo<T>(value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const before = Deno.env.get("CKPT_DIRECT_IO");
  if (value === undefined) Deno.env.delete("CKPT_DIRECT_IO");
  else Deno.env.set("CKPT_DIRECT_IO", value);
  try {
    return await fn();
  } finally {
    if (before === undefined) Deno.env.delete("CKPT_DIRECT_IO");
    else Deno.env.set("CKPT_DIRECT_IO", before);
  }
}

Deno.test("a large file is written with direct I/O, byte for byte, whatever sizes the chunks have", async () => {
  await withTempDir(async (dir) => {
    await withDirectIo(undefined, async () => {
      const path = join(dir, "big");
      const sink = await createFileSink(path, { expectedBytes: DIRECT_MIN_BYTES });
      assert.equal(sink.direct, true, "this machine's temporary folder takes O_DIRECT");
      // around every edge: one byte, the alignment, a block, blocks plus a tail
      const sizes = [1, 4095, 4097, DIRECT_BLOCK_BYTES - 3, 2 * DIRECT_BLOCK_BYTES + 5, 12_345];
      const expected = pattern(sizes.reduce((a, b) => a + b, 0), 7);
      const scratch = new Uint8Array(Math.max(...sizes)); // reused at once, as the writers do
      let at = 0;
      for (const n of sizes) {
        scratch.set(expected.subarray(at, at + n));
        await sink.write(scratch.subarray(0, n));
        scratch.fill(0xee, 0, n);
        at += n;
      }
      await sink.finish();
      const got = await Deno.readFile(path);
      assert.equal(got.length, expected.length, "truncated to the exact size, not the padding");
      assert.ok(got.every((v, i) => v === expected[i]), "the same bytes in the same places");
    });
  });
});

/** Sizes that reserve around every edge of the ring: odd ones, whole blocks, the largest. */
const RESERVATIONS = [4093, RESERVE_MAX_BYTES, DIRECT_BLOCK_BYTES, 1, RESERVE_MAX_BYTES - 7];

Deno.test("bytes produced in reserved memory land in order, across the ring's end several times, with nothing copied", async () => {
  await withTempDir(async (dir) => {
    await withDirectIo(undefined, async () => {
      const path = join(dir, "reserved");
      const hashed: Uint8Array[] = [];
      const sink = await createFileSink(path, {
        expectedBytes: DIRECT_MIN_BYTES,
        onBytes: (bytes) => {
          assert.ok(bytes.buffer instanceof SharedArrayBuffer, "onBytes reads the sink's memory");
          hashed.push(bytes.slice());
        },
      });
      const header = pattern(777, 5);
      await sink.write(header); // a plain write first, as the writers' headers are
      const sizes = Array.from({ length: 30 }, (_, i) => RESERVATIONS[i % RESERVATIONS.length]!);
      const total = header.length + sizes.reduce((a, b) => a + b, 0);
      assert.ok(total > 3 * DIRECT_RING_BYTES, "wraps the ring more than three times");
      const expected = pattern(total, 9);
      expected.set(header);
      let at = header.length;
      // two reservations outstanding, as the safetensors writer keeps them
      let ahead = await sink.reserve(sizes[0]!);
      for (let i = 0; i < sizes.length; i++) {
        const view = ahead!;
        assert.ok(view.buffer instanceof SharedArrayBuffer);
        view.set(expected.subarray(at, at + sizes[i]!));
        ahead = i + 1 < sizes.length ? await sink.reserve(sizes[i + 1]!) : undefined;
        await sink.write(view);
        at += sizes[i]!;
      }
      await sink.finish();
      const got = await Deno.readFile(path);
      assert.equal(got.length, total);
      assert.ok(got.every((v, i) => v === expected[i]), "the same bytes in the same places");
      const fed = new Uint8Array(total);
      let off = 0;
      for (const h of hashed) fed.set(h, (off += h.length) - h.length);
      assert.equal(off, total, "onBytes saw every byte once, not the padding");
      assert.ok(fed.every((v, i) => v === expected[i]), "and in file order");
    });
  });
});

Deno.test("a block is reused only once the promise onBytes returned for it settled", async () => {
  await withTempDir(async (dir) => {
    await withDirectIo(undefined, async () => {
      const held: { view: Uint8Array; copy: Uint8Array; release: () => void }[] = [];
      const sink = await createFileSink(join(dir, "held"), {
        expectedBytes: DIRECT_MIN_BYTES,
        onBytes: (view) =>
          new Promise<void>((release) => held.push({ view, copy: view.slice(), release })),
      });
      const blocks = DIRECT_RING_BYTES / DIRECT_BLOCK_BYTES;
      for (let k = 0; k < blocks; k++) await sink.write(new Uint8Array(DIRECT_BLOCK_BYTES).fill(k));
      assert.equal(held.length, blocks, "every block of the ring is held by its hash");
      // the next block needs the first one again: its write waits for that hash, however long
      let done = false;
      const next = sink.write(new Uint8Array(DIRECT_BLOCK_BYTES).fill(0xee)).then(() =>
        done = true
      );
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(done, false, "the write waits while the first block is held");
      const first = held[0]!;
      assert.ok(first.view.every((v, i) => v === first.copy[i]), "the held block did not change");
      first.release();
      await next;
      for (const h of held) h.release();
      await sink.finish();
      assert.equal(held.length, blocks + 1);
    });
  });
});

Deno.test("a direct sink refuses a plain write while a reservation is outstanding, a reservation past the ring, and a finish before it is written", async () => {
  await withTempDir(async (dir) => {
    await withDirectIo(undefined, async () => {
      const sink = await createFileSink(join(dir, "misused"), { expectedBytes: DIRECT_MIN_BYTES });
      assert.equal(await sink.reserve(0), undefined);
      assert.equal(await sink.reserve(RESERVE_MAX_BYTES + 1), undefined, "too large: not ours");
      const view = (await sink.reserve(10))!;
      await assert.rejects(() => sink.write(new Uint8Array(10)), /must be that reservation/);
      await assert.rejects(() => sink.write(view.subarray(1)), /must be that reservation/);
      for (let i = 0; i < 3; i++) await sink.reserve(RESERVE_MAX_BYTES);
      await assert.rejects(() => sink.reserve(RESERVE_MAX_BYTES), /would run .* ahead/);
      await assert.rejects(() => sink.finish(), /reservation not written/);
      await sink.abandon();
    });
  });
});

Deno.test("a page-cache sink gives no memory to reserve and feeds onBytes the bytes written", async () => {
  await withTempDir(async (dir) => {
    const fed: number[] = [];
    const sink = await createFileSink(join(dir, "small"), {
      expectedBytes: 10,
      onBytes: (bytes) => void fed.push(...bytes),
    });
    assert.equal(await sink.reserve(4), undefined);
    await sink.write(new Uint8Array([1, 2]));
    await sink.write(new Uint8Array([3]));
    await sink.finish();
    assert.deepEqual(fed, [1, 2, 3]);
    assert.deepEqual([...await Deno.readFile(join(dir, "small"))], [1, 2, 3]);
  });
});

Deno.test("small files, and every file with CKPT_DIRECT_IO=0, go through the page cache", async () => {
  await withTempDir(async (dir) => {
    const small = await createFileSink(join(dir, "small"), { expectedBytes: DIRECT_MIN_BYTES - 1 });
    assert.equal(small.direct, false);
    await small.write(new Uint8Array([1, 2, 3]));
    await small.finish();
    assert.deepEqual([...await Deno.readFile(join(dir, "small"))], [1, 2, 3]);
    await withDirectIo("0", async () => {
      const off = await createFileSink(join(dir, "off"), { expectedBytes: DIRECT_MIN_BYTES });
      assert.equal(off.direct, false);
      await off.finish();
    });
  });
});

Deno.test("a direct sink refuses a path that exists and a folder that does not, with the OS error", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "taken"), "someone's file");
    await assert.rejects(
      () => createFileSink(join(dir, "taken"), { expectedBytes: DIRECT_MIN_BYTES }),
      (e) => (e as { code?: string }).code === "EEXIST",
    );
    assert.equal(await Deno.readTextFile(join(dir, "taken")), "someone's file");
    await assert.rejects(
      () => createFileSink(join(dir, "no", "such"), { expectedBytes: DIRECT_MIN_BYTES }),
      (e) => (e as { code?: string }).code === "ENOENT",
    );
  });
});

Deno.test("an abandoned direct sink ends its writes and its worker, and leaves the file to remove", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "partial");
    const sink = await createFileSink(path, { expectedBytes: DIRECT_MIN_BYTES });
    await sink.write(pattern(DIRECT_BLOCK_BYTES + 10, 3));
    await sink.abandon();
    await Deno.remove(path); // the test's sanitizers fail on a worker or file left open
  });
});

/** A state dict of `mib` MiB of BF16 rows with distinct bytes, in three tensors. */
function bigStateDict(mib: number): StateDict {
  const cols = 4096, rows = (mib * 2 ** 20) / (2 * cols);
  const third = Math.floor(rows / 3);
  return new StateDict(
    [third, third, rows - 2 * third].map((r, i) => [
      `layer.${i}.weight`,
      tensorFromBytes("BF16", [r + i, cols], pattern((r + i) * cols * 2, 11 + i)),
    ]),
  );
}

Deno.test("safetensors and torch files above the direct I/O size are the same bytes as written through the page cache", async () => {
  await withTempDir(async (dir) => {
    const sd = bigStateDict(Math.ceil(DIRECT_MIN_BYTES / 2 ** 20) + 1);
    // small tensors between the large ones (a norm, a bias): blocks of a few bytes
    sd.set("layer.1.norm", tensorFromBytes("F32", [7], pattern(28, 31)));
    sd.set("layer.1.bias", tensorFromBytes("BF16", [4096], pattern(8192, 32)));
    for (const env of [undefined, "0"]) {
      await withDirectIo(env, async () => {
        // the same names in two folders (torch's record prefix comes from the file name)
        const out = join(dir, env ?? "direct");
        await Deno.mkdir(out);
        await writeSafetensors(join(out, "model.safetensors"), sd);
        await saveTorchStateDict(join(out, "model.bin"), sd);
        // refs that read into a buffer: the .bin writer reads them into the sink's memory
        await using st = await openSafetensors(join(out, "model.safetensors"));
        await saveTorchStateDict(join(out, "model.from-st"), st);
      });
    }
    for (const ext of ["safetensors", "bin", "from-st"]) {
      const [a, b] = await Promise.all([
        Deno.readFile(join(dir, "direct", `model.${ext}`)),
        Deno.readFile(join(dir, "0", `model.${ext}`)),
      ]);
      assert.ok(a.length > DIRECT_MIN_BYTES);
      assert.equal(a.length, b.length, `${ext}: same size`);
      assert.ok(a.every((v, i) => v === b[i]), `${ext}: same bytes`);
    }
    const header = await readSafetensorsHeader(join(dir, "direct", "model.safetensors"));
    assert.equal(header.tensors.length, 5);
    await using back = await openTorchStateDict(join(dir, "direct", "model.bin"));
    const last = await back.require("layer.2.weight").read();
    assert.deepEqual(last, await sd.require("layer.2.weight").read());
  });
});

Deno.test("a safetensors tensor whose single row is larger than a reservation is written byte for byte by a direct sink", async () => {
  await withTempDir(async (dir) => {
    const sd = bigStateDict(Math.ceil(DIRECT_MIN_BYTES / 2 ** 20) + 1);
    const wide = RESERVE_MAX_BYTES + 4096;
    sd.set("wide", tensorFromBytes("U8", [2, wide], pattern(2 * wide, 21)));
    sd.set("z.after", tensorFromBytes("U8", [3, 5000], pattern(15000, 22)));
    for (const env of [undefined, "0"]) {
      await withDirectIo(env, () => writeSafetensors(join(dir, `${env ?? "direct"}.st`), sd));
    }
    const [a, b] = await Promise.all([
      Deno.readFile(join(dir, "direct.st")),
      Deno.readFile(join(dir, "0.st")),
    ]);
    assert.equal(a.length, b.length);
    assert.ok(a.every((v, i) => v === b[i]), "the same bytes as through the page cache");
  });
});

/**
 * Runs `fn` with every direct sink it creates driven by the test worker `worker` instead of
 * `formats/_direct_file_worker.ts`. The global `Worker` is replaced for this call only; other
 * workers are left as they are.
 */
async function withSinkWorker<T>(worker: string, fn: () => Promise<T>): Promise<T> {
  const Real = globalThis.Worker;
  const replacement = new URL(worker, import.meta.url);
  globalThis.Worker = class extends Real {
    constructor(url: string | URL, options?: WorkerOptions) {
      super(String(url).endsWith("/formats/_direct_file_worker.ts") ? replacement : url, options);
    }
  };
  try {
    return await withDirectIo(undefined, fn);
  } finally {
    globalThis.Worker = Real;
  }
}

/**
 * Runs `fn` with the failing test worker (`_failing_sink_worker.ts`: the real one, whose first
 * "write" or "finish" throws uncaught). Deno prints the worker's uncaught error on stderr even
 * though the sink handles it.
 */
function withFailingWorker<T>(fn: () => Promise<T>): Promise<T> {
  return withSinkWorker("./_failing_sink_worker.ts", fn);
}

Deno.test("on a file system that refuses O_DIRECT at open, a direct sink writes through the page cache: the bytes land and finish says direct: false", async () => {
  await withTempDir(async (dir) => {
    await withSinkWorker("./_no_direct_open_worker.ts", async () => {
      const path = join(dir, "buffered");
      const hashed: number[] = [];
      const sink = await createFileSink(path, {
        expectedBytes: DIRECT_MIN_BYTES,
        onBytes: (b) => void hashed.push(b.length),
      });
      const bytes = pattern(DIRECT_RING_BYTES + DIRECT_BLOCK_BYTES + 12_345, 9);
      await sink.write(bytes);
      await sink.finish();
      assert.equal(sink.direct, false, "the worker found the file system refuses direct I/O");
      assert.deepEqual(await Deno.readFile(path), bytes);
      assert.equal(hashed.reduce((a, b) => a + b, 0), bytes.length, "every byte hashed once");
    });
  });
});

Deno.test("a direct sink whose worker cannot start leaves no file behind", async () => {
  await withTempDir(async (dir) => {
    const Real = globalThis.Worker;
    globalThis.Worker = class extends Real {
      constructor(url: string | URL, options?: WorkerOptions) {
        if (String(url).endsWith("/formats/_direct_file_worker.ts")) {
          throw new Error("no more threads");
        }
        super(url, options);
      }
    };
    try {
      await withDirectIo(undefined, async () => {
        const path = join(dir, "never");
        await assert.rejects(
          () => createFileSink(path, { expectedBytes: DIRECT_MIN_BYTES }),
          /no more threads/,
        );
      });
    } finally {
      globalThis.Worker = Real;
    }
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
  });
});

Deno.test("a write the disk refuses fails finish with its error, and abandon then ends without waiting for the writes never answered", async () => {
  await withTempDir(async (dir) => {
    await withSinkWorker("./_silent_sink_worker.ts", async () => {
      const path = join(dir, "full");
      const sink = await createFileSink(path, { expectedBytes: DIRECT_MIN_BYTES });
      await sink.write(pattern(DIRECT_RING_BYTES, 4)); // every block sent: the first one fails
      await assert.rejects(() => sink.finish(), /no space left on device/);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ended = await Promise.race([
        sink.abandon().then(() => true),
        new Promise<false>((r) => timer = setTimeout(() => r(false), 2000)),
      ]);
      clearTimeout(timer);
      assert.equal(ended, true, "abandon ended");
      await Deno.remove(path);
    });
  });
});

const WORKER_FAILED = /the direct I\/O worker failed: .*the test worker fails at "(write|finish)"/;

Deno.test("when the direct I/O worker fails, the write waiting on it rejects, later writes fail at once, and abandon still ends", async () => {
  await withTempDir(async (dir) => {
    await withFailingWorker(async () => {
      const path = join(dir, "doomed");
      const sink = await createFileSink(path, { expectedBytes: DIRECT_MIN_BYTES });
      assert.equal(sink.direct, true);
      // fills the ring, then waits on the first block's write, at which the worker dies
      await assert.rejects(() => sink.write(pattern(DIRECT_RING_BYTES + 1, 1)), WORKER_FAILED);
      await assert.rejects(() => sink.write(new Uint8Array(1)), WORKER_FAILED);
      await assert.rejects(() => sink.finish(), WORKER_FAILED);
      await sink.abandon();
      await Deno.remove(path); // the sanitizers fail on a worker or file left open
    });
  });
});

Deno.test("when the direct I/O worker fails at finish, finish rejects instead of waiting forever", async () => {
  await withTempDir(async (dir) => {
    await withFailingWorker(async () => {
      const path = join(dir, "empty");
      const sink = await createFileSink(path, { expectedBytes: DIRECT_MIN_BYTES });
      await assert.rejects(() => sink.finish(), WORKER_FAILED);
      await sink.abandon();
      await Deno.remove(path);
    });
  });
});

Deno.test("writeSafetensors whose direct I/O worker fails reports a FILE_WRITE error naming the file and leaves no temporary file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    const sd = bigStateDict(Math.ceil(DIRECT_MIN_BYTES / 2 ** 20) + 1);
    const err = await withFailingWorker(() =>
      writeSafetensors(path, sd).then(() => undefined, (e) => e)
    );
    assert.ok(err instanceof CkptError, `a CkptError, not ${err}`);
    assert.equal(err.code, "FILE_WRITE");
    assert.equal(err.file, path);
    assert.match(
      err.message,
      /^Cannot write ".*model\.safetensors": the direct I\/O worker failed: /,
    );
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), [], "no file, no temporary file");
  });
});

Deno.test("a direct write the file system refuses (EINVAL) goes on buffered: the bytes land, finish says direct: false and truncates", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "mixed");
    // one page of shared wasm memory, page-aligned as the direct sink's blocks are
    const wasm = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    const sent = pattern(3 * 4096, 5);
    new Uint8Array(wasm.buffer).set(sent);
    const worker = new Worker(new URL("../../formats/_direct_file_worker.ts", import.meta.url), {
      type: "module",
    });
    let id = 0;
    const ask = (message: Record<string, unknown>) =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        worker.onmessage = (e) =>
          e.data.error ? reject(new Error(e.data.error.message)) : resolve(e.data);
        worker.postMessage({ ...message, id: id++ });
      });
    try {
      await Deno.writeFile(path, new Uint8Array()); // the sink creates the file, the worker opens it
      assert.equal((await ask({ op: "open", path, buffer: wasm.buffer })).direct, true);
      await ask({ op: "write", start: 0, length: 4096, offset: 0 }); // aligned: direct
      // O_DIRECT refuses a length that is not a multiple of 4096 (EINVAL): reopened buffered
      await ask({ op: "write", start: 4096, length: 100, offset: 4096 });
      // and the rest goes buffered, at an offset direct I/O would refuse too
      await ask({ op: "write", start: 4196, length: 2 * 4096 - 100, offset: 4196 });
      const size = 3 * 4096 - 7;
      assert.equal((await ask({ op: "finish", size })).direct, false);
      assert.deepEqual(await Deno.readFile(path), sent.subarray(0, size));
    } finally {
      worker.terminate();
    }
  });
});

Deno.test("a direct I/O worker opens only a file the sink created, and when its open failed it fails every later request with that error, and still closes", async () => {
  await withTempDir(async (dir) => {
    const wasm = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    const worker = new Worker(new URL("../../formats/_direct_file_worker.ts", import.meta.url), {
      type: "module",
    });
    let id = 0;
    const ask = (message: Record<string, unknown>) =>
      new Promise<Record<string, unknown>>((resolve) => {
        worker.onmessage = (e) => resolve(e.data);
        worker.postMessage({ ...message, id: id++ });
      });
    try {
      const path = join(dir, "not-created"); // the sink creates the file; the worker only opens it
      for (
        const m of [{ op: "open", path, buffer: wasm.buffer }, {
          op: "write",
          start: 0,
          length: 4096,
          offset: 0,
        }, { op: "finish", size: 1 }]
      ) {
        const reply = await ask(m);
        assert.equal(
          (reply.error as { code?: string })?.code,
          "ENOENT",
          `${m.op}: the open's error`,
        );
      }
      assert.equal((await ask({ op: "close" })).ok, true);
    } finally {
      worker.terminate();
    }
  });
});
