import assert from "node:assert/strict";
import { join } from "node:path";
import {
  createFileSink,
  DIRECT_BLOCK_BYTES,
  DIRECT_MIN_BYTES,
  type FileSink,
} from "../../formats/_file_sink.ts";
import { Writeback } from "../../formats/_writeback.ts";
import { phaseClock } from "../../formats/phase_clock.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict } from "../../formats/state_dict.ts";
import { saveTorchStateDict } from "../../formats/torch/save.ts";
import { openTorchStateDict } from "../../formats/torch/state_dict.ts";
import { t } from "../merge/_lora_helpers.ts";

Deno.test("`writeSafetensors()` with syncEvery syncs while writing and writes the same bytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sd = new StateDict([
      ["a", t("F32", [300, 64], Array.from({ length: 300 * 64 }, (_, i) => i))],
      ["b", t("BF16", [7], [1, 2, 3, 4, 5, 6, 7])],
    ]);
    await writeSafetensors(join(dir, "plain.safetensors"), sd);
    phaseClock.enable();
    await writeSafetensors(join(dir, "synced.safetensors"), sd, { syncEvery: 4096 });
    const fsync = phaseClock.snapshot().fsync;
    phaseClock.disable();
    assert.ok(fsync && fsync.calls >= 1, "at least one background sync ran");
    assert.deepEqual(
      await Deno.readFile(join(dir, "synced.safetensors")),
      await Deno.readFile(join(dir, "plain.safetensors")),
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "plain.safetensors",
      "synced.safetensors",
    ]);
  } finally {
    phaseClock.disable();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`Writeback` keeps a failed sync's error for finish(), starts one sync at a time, and none while the writer is busy", async () => {
  const missing = new Writeback("/nonexistent-ckpt-dir/file", 10);
  missing.wrote(9); // below the threshold: nothing starts
  await missing.finish();
  missing.wrote(1);
  await assert.rejects(missing.finish(), Deno.errors.NotFound);

  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    await Deno.writeFile(path, new Uint8Array(100));
    const wb = new Writeback(path, 1);
    phaseClock.enable();
    for (let i = 0; i < 50; i++) wb.wrote(1); // one sync in flight: the others are skipped
    await wb.finish();
    const calls = phaseClock.snapshot().fsync?.calls ?? 0;
    phaseClock.disable();
    assert.equal(calls, 1);
    const busy = new Writeback(path, 1);
    phaseClock.enable();
    for (let i = 0; i < 5; i++) busy.wrote(1, true); // writes queued behind each: no flush
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(phaseClock.snapshot().fsync?.calls ?? 0, 0, "no sync while the writer is busy");
    busy.wrote(0); // the first report of a writer not busy starts the sync the bytes wait for
    await busy.finish();
    assert.equal(phaseClock.snapshot().fsync?.calls ?? 0, 1);
    phaseClock.disable();
    const quiet = new Writeback(join(dir, "gone"), 1);
    quiet.wrote(1);
    await quiet.abandon(); // the write failed anyway: no second error
    await quiet.settled();
  } finally {
    phaseClock.disable();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`Writeback.abandon()` does not wait for a sync in flight, and no sync runs after it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    await Deno.writeFile(path, new Uint8Array(100));
    const openFds = () => [...Deno.readDirSync("/proc/self/fd")].length;
    const before = openFds();
    phaseClock.enable();
    const wb = new Writeback(path, 1);
    wb.wrote(1); // a sync starts: its open is in flight
    await wb.abandon();
    assert.equal(phaseClock.snapshot().fsync?.calls ?? 0, 0, "abandon returned before the sync");
    await wb.settled();
    assert.equal(phaseClock.snapshot().fsync?.calls ?? 0, 0, "the sync stopped at its open");
    assert.equal(openFds(), before, "the descriptor the sync opened is closed");
    wb.wrote(1); // abandoned, and no sync in flight any more: nothing starts
    await wb.settled();
    assert.equal(phaseClock.snapshot().fsync?.calls ?? 0, 0, "no sync after abandon");
    assert.equal(openFds(), before);
  } finally {
    phaseClock.disable();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`saveTorchStateDict()` with syncEvery syncs while writing and writes the same bytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sd = new StateDict([
      ["w", t("F32", [200, 50], Array.from({ length: 200 * 50 }, (_, i) => i / 7))],
      ["b", t("BF16", [3], [1, 2, 3])],
    ]);
    // the same file name in two folders: torch names the archive's folder after the file
    await Deno.mkdir(join(dir, "plain"));
    await Deno.mkdir(join(dir, "synced"));
    await saveTorchStateDict(join(dir, "plain", "model.bin"), sd);
    phaseClock.enable();
    await saveTorchStateDict(join(dir, "synced", "model.bin"), sd, { syncEvery: 4096 });
    const fsync = phaseClock.snapshot().fsync;
    phaseClock.disable();
    assert.ok(fsync && fsync.calls >= 1, "at least one background sync ran");
    // the archives differ only in torch's random serialization id: compare what they hold
    const plain = await Deno.readFile(join(dir, "plain", "model.bin"));
    const synced = await Deno.readFile(join(dir, "synced", "model.bin"));
    assert.equal(synced.byteLength, plain.byteLength);
    await using a = await openTorchStateDict(join(dir, "plain", "model.bin"));
    await using b = await openTorchStateDict(join(dir, "synced", "model.bin"));
    assert.deepEqual([...b.keys()], [...a.keys()]);
    for (const k of a.keys()) {
      assert.deepEqual(await b.require(k).read(), await a.require(k).read(), k);
    }
  } finally {
    phaseClock.disable();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a direct I/O sink with syncEvery syncs while writing too: a direct write is not yet durable on a disk with a write cache", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "big");
    phaseClock.enable();
    const sink = await createFileSink(path, {
      expectedBytes: DIRECT_MIN_BYTES,
      syncEvery: DIRECT_BLOCK_BYTES,
    });
    const block = new Uint8Array(DIRECT_BLOCK_BYTES);
    for (let i = 0; i < 6; i++) await sink.write(block.fill(i + 1));
    await sink.write(new Uint8Array([42]));
    await sink.finish();
    assert.equal(sink.direct, true, "this machine's temporary folder takes O_DIRECT");
    const calls = phaseClock.snapshot().fsync?.calls ?? 0;
    phaseClock.disable();
    assert.ok(calls >= 1, `background syncs ran while the blocks were written (${calls})`);
    const got = await Deno.readFile(path);
    assert.equal(got.length, 6 * DIRECT_BLOCK_BYTES + 1);
    for (let i = 0; i < 6; i++) assert.equal(got[i * DIRECT_BLOCK_BYTES], i + 1);
    assert.equal(got[got.length - 1], 42);
  } finally {
    phaseClock.disable();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Runs `fn` with a direct sink (syncing every block, the phase clock on) whose worker is the
 * slow-disk test worker (`_slow_disk_sink_worker.ts`: five writes always unanswered), and with that
 * worker, to tell it when the disk catches up (`{ op: "drain" }`).
 */
async function withSlowDisk(fn: (sink: FileSink, disk: Worker) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  const Real = globalThis.Worker;
  let disk: Worker | undefined;
  globalThis.Worker = class extends Real {
    constructor(url: string | URL, options?: WorkerOptions) {
      const ours = String(url).endsWith("/formats/_direct_file_worker.ts");
      super(ours ? new URL("./_slow_disk_sink_worker.ts", import.meta.url) : url, options);
      if (ours) disk = this;
    }
  };
  try {
    phaseClock.enable();
    const sink = await createFileSink(join(dir, "slow"), {
      expectedBytes: DIRECT_MIN_BYTES,
      syncEvery: DIRECT_BLOCK_BYTES,
    });
    assert.ok(disk, "the sink started the slow-disk worker");
    await fn(sink, disk);
  } finally {
    globalThis.Worker = Real;
    phaseClock.disable();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a direct I/O sink starts no background sync while more than half its ring waits for the disk, and syncs once the disk catches up", async () => {
  await withSlowDisk(async (sink, disk) => {
    const block = new Uint8Array(DIRECT_BLOCK_BYTES);
    for (let i = 0; i < 24; i++) await sink.write(block); // 19 writes answered, 5 always queued
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(phaseClock.snapshot().fsync?.calls ?? 0, 0, "no flush held up the queued writes");
    disk.postMessage({ op: "drain" });
    await sink.finish(); // waits for the sync the drained writes started
    assert.ok((phaseClock.snapshot().fsync?.calls ?? 0) >= 1, "a sync ran once the disk caught up");
  });
});

Deno.test("an abandoned direct I/O sink starts no background sync for the writes that end after it gave up", async () => {
  await withSlowDisk(async (sink, disk) => {
    const block = new Uint8Array(DIRECT_BLOCK_BYTES);
    for (let i = 0; i < 12; i++) await sink.write(block); // 5 writes still queued
    const abandoned = sink.abandon();
    disk.postMessage({ op: "drain" }); // the queued writes end now, the disk no longer behind
    await abandoned;
    await new Promise((r) => setTimeout(r, 100)); // a sync started by them would have ended
    assert.equal(phaseClock.snapshot().fsync?.calls ?? 0, 0, "no sync of a file given up");
  });
});
