/**
 * Private: where the streaming writers (safetensors, torch zip) put their bytes, in file order.
 *
 * A large file (at least {@linkcode DIRECT_MIN_BYTES}) is written with direct I/O (`O_DIRECT`)
 * by a worker thread from a ring of page-aligned blocks in a shared memory: the worker writes each
 * full block by position while the next ones fill. The page cache is not involved, so there is no
 * per-page copy and allocation in the kernel for every byte written (which costs more CPU than
 * the copy here, and varies a lot on virtual machines) and nothing is left dirty in it. The last
 * block is padded to the alignment and the file truncated to its exact size. Where the file system
 * refuses direct I/O, on systems other than Linux, with `CKPT_DIRECT_IO=0`, and for small files,
 * the bytes are written through the page cache.
 *
 * Either way an `fdatasync` starts in the background every `syncEvery` bytes written: a direct
 * write is done when the device has the bytes, not when they are durable. A disk with a volatile
 * write cache (a virtual machine's disk with the host's cache behind it, most SSDs) holds them
 * there until a flush, and the fsync before the rename would otherwise wait for all of them at
 * once, after the CPU work, instead of while it runs. The direct sink starts one only while at most
 * half its ring is queued for the disk: when the disk is what the export waits for (a gather), a
 * flush would hold up the writes queued behind it, and the final fsync costs less than the flushes.
 * Measured on this project's VM, alternating runs against no early sync and an unconditional one:
 * `ckpt gather` 1.99 s against 2.02 and 2.27 s, `ckpt merge` 2.43 s against 2.75 and 2.61 s,
 * halos-final 2.55 s against 2.76 and 2.67 s (medians).
 *
 * No copy on the way: a writer may {@linkcode FileSink.reserve} the ring's memory for its next
 * bytes and produce them there (a positional read, a merge's output), and `onBytes` (the output
 * hash) reads each block from the same memory while the worker writes it; a block is reused once
 * both are done. Bytes written from the caller's own buffer are copied into the ring once.
 * @module
 */
import { phaseClock } from "./phase_clock.ts";
import { Writeback } from "./_writeback.ts";

/** Files at least this large are written with direct I/O (smaller ones are not worth a worker). */
export const DIRECT_MIN_BYTES = 64 * 2 ** 20;
/** Bytes per direct write; a multiple of every block size direct I/O asks for. */
export const DIRECT_BLOCK_BYTES = 4 * 2 ** 20;
/** Blocks in the direct sink's ring: writes and hashes in flight while the next blocks fill. */
const RING_BLOCKS = 8;
/** Bytes in the direct sink's ring. */
export const DIRECT_RING_BYTES = RING_BLOCKS * DIRECT_BLOCK_BYTES;
/**
 * The largest {@linkcode FileSink.reserve}: a reservation that runs past the ring's end continues
 * in a spill area this large, copied to the ring's start when it is written.
 */
export const RESERVE_MAX_BYTES = 8 * 2 ** 20;
/** Alignment of direct writes' memory, offsets and lengths (4 KiB covers 512-byte devices). */
const ALIGN = 4096;
const WASM_PAGE = 65536;

/** A file being written front to back. */
export interface FileSink {
  /**
   * True when the bytes bypass the page cache (direct I/O). A direct sink says true until its
   * worker finds that the file system refuses direct I/O, which is known by `finish` at the latest.
   */
  readonly direct: boolean;
  /**
   * Writes `bytes` after those written before. The caller may reuse `bytes` once this resolves.
   * An error of an earlier write may surface here or in {@linkcode FileSink.finish}. `bytes` may
   * be the oldest view {@linkcode FileSink.reserve} returned and not yet written, filled: then
   * nothing is copied. Other bytes may be written only while no reservation is outstanding.
   */
  write(bytes: Uint8Array): Promise<void>;
  /**
   * The sink's own memory for the `n` bytes that follow the bytes written and reserved so far,
   * once it is free, or undefined when the sink has none to give (page-cache writes, `n` over
   * {@linkcode RESERVE_MAX_BYTES} or 0): fill it, then pass it to {@linkcode FileSink.write}.
   * Reservations are written in the order they were made. What is reserved and not written, with
   * what was written since the last full 4 MiB block, must fit the 32 MiB ring: two reservations of
   * the largest size always do.
   */
  reserve(n: number): Promise<Uint8Array | undefined>;
  /** Writes what is left, waits for every write, closes; throws any write's error. */
  finish(): Promise<void>;
  /**
   * Waits for the writes in flight (not for `onBytes`) and closes, ignoring errors (the caller
   * removes the file).
   */
  abandon(): Promise<void>;
}

/** Options of {@linkcode createFileSink}. */
export interface FileSinkOptions {
  /** Expected size of the file in bytes (chooses direct I/O for large files). */
  expectedBytes: number;
  /** An `fdatasync` in the background after every this many bytes written (0: none). */
  syncEvery?: number | undefined;
  /** Truncate `path` when it exists instead of failing (always written buffered). */
  replace?: boolean | undefined;
  /**
   * Called with every byte written, in file order (the output hash). The bytes stay valid until
   * a promise it returns settles (it may keep a view of them until then, without copying);
   * without a promise they may change as soon as it returns.
   */
  onBytes?: ((bytes: Uint8Array) => void | Promise<void>) | undefined;
}

/**
 * Whether to try direct I/O: on Linux (the `O_DIRECT` flag is Linux's), unless `CKPT_DIRECT_IO=0`
 * turns it off (an environment we may not read keeps it on).
 */
function directAllowed(): boolean {
  if (Deno.build.os !== "linux") return false;
  try {
    return Deno.env.get("CKPT_DIRECT_IO") !== "0";
  } catch {
    return true;
  }
}

/**
 * Creates `path`, which must not exist (`EEXIST` otherwise) unless `replace` is set, and returns
 * the sink its bytes go through. Errors are the OS errors of the creation (an errno name in
 * `code`).
 */
export async function createFileSink(path: string, options: FileSinkOptions): Promise<FileSink> {
  if (!options.replace && options.expectedBytes >= DIRECT_MIN_BYTES && directAllowed()) {
    return await DirectSink.create(path, options.syncEvery ?? 0, options.onBytes);
  }
  const file = await Deno.open(
    path,
    options.replace
      ? { write: true, create: true, truncate: true }
      : { write: true, createNew: true },
  );
  return new BufferedSink(path, file, options.syncEvery ?? 0, options.onBytes);
}

/** Through the page cache, with optional early writeback. */
class BufferedSink implements FileSink {
  readonly direct = false;
  readonly #file: Deno.FsFile;
  readonly #writeback: Writeback | undefined;
  readonly #onBytes: FileSinkOptions["onBytes"];
  #closed = false;

  constructor(
    path: string,
    file: Deno.FsFile,
    syncEvery: number,
    onBytes: FileSinkOptions["onBytes"],
  ) {
    this.#file = file;
    this.#writeback = syncEvery > 0 ? new Writeback(path, syncEvery) : undefined;
    this.#onBytes = onBytes;
  }

  async write(bytes: Uint8Array): Promise<void> {
    const t0 = phaseClock.start();
    let done = 0;
    while (done < bytes.length) done += await this.#file.write(bytes.subarray(done));
    this.#writeback?.wrote(bytes.length);
    phaseClock.stop("write", t0, bytes.length);
    if (!this.#onBytes || bytes.length === 0) return;
    const hashWait = phaseClock.start();
    await this.#onBytes(bytes);
    phaseClock.stop("wait-hash", hashWait);
  }

  reserve(): Promise<undefined> {
    return Promise.resolve(undefined);
  }

  async finish(): Promise<void> {
    try {
      await this.#writeback?.finish();
    } finally {
      this.#close();
    }
  }

  async abandon(): Promise<void> {
    await this.#writeback?.abandon();
    this.#close();
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#file.close();
    } catch { /* closed */ }
  }
}

interface Reply {
  id: number;
  ok?: boolean;
  direct?: boolean;
  error?: { message: string; code?: string };
}

/** What a ring block is waiting for: its direct write and its `onBytes` (the hash). */
interface BlockInFlight {
  write: Promise<void>;
  hash: Promise<void> | undefined;
}

/**
 * Direct I/O from a ring of aligned blocks of a shared memory, written by a worker; see the module
 * doc. Stream positions count the file's bytes from 0; position `p` lives at `p % RING` in the
 * memory (the spill area after the ring only holds a reservation's tail until it is written).
 */
class DirectSink implements FileSink {
  #direct = true;
  readonly #worker: Worker;
  readonly #memory: Uint8Array;
  readonly #onBytes: FileSinkOptions["onBytes"];
  readonly #writeback: Writeback | undefined;
  readonly #pending = new Map<
    number,
    { resolve: (r: Reply) => void; reject: (e: Error) => void }
  >();
  #nextId = 0;
  /** What each ring block still waits for, if anything. */
  readonly #inFlight: (BlockInFlight | undefined)[] = new Array(RING_BLOCKS).fill(undefined);
  /** Writes sent to the worker and not answered yet. */
  #writesQueued = 0;
  /** Bytes sent to the worker (whole blocks until the last). */
  #sent = 0;
  /** Bytes written (sent, or waiting in the current block). */
  #written = 0;
  /** The lengths of the reservations not yet written, oldest first; they end at `#reserved`. */
  readonly #reservations: number[] = [];
  #reserved = 0;
  #done = false;
  #failed: Error | undefined;

  private constructor(
    worker: Worker,
    memory: Uint8Array,
    writeback: Writeback | undefined,
    onBytes: FileSinkOptions["onBytes"],
  ) {
    this.#worker = worker;
    this.#memory = memory;
    this.#writeback = writeback;
    this.#onBytes = onBytes;
    worker.onmessage = (e: MessageEvent<Reply>) => {
      const p = this.#pending.get(e.data.id);
      this.#pending.delete(e.data.id);
      if (!p) return;
      if (e.data.error) {
        p.reject(Object.assign(new Error(e.data.error.message), { code: e.data.error.code }));
      } else p.resolve(e.data);
    };
    worker.onerror = (e) => {
      e.preventDefault();
      this.#failed = new Error(`the direct I/O worker failed: ${e.message}`);
      for (const p of this.#pending.values()) p.reject(this.#failed);
      this.#pending.clear();
    };
  }

  get direct(): boolean {
    return this.#direct;
  }

  /**
   * Creates `path` (the OS error when it exists or its folder does not) and the sink. The worker
   * starts and opens the file while the first blocks fill: nothing waits for it here. Where the
   * file system refuses direct I/O, the worker writes through the page cache instead.
   */
  static async create(
    path: string,
    syncEvery: number,
    onBytes: FileSinkOptions["onBytes"],
  ): Promise<DirectSink> {
    const pages = Math.ceil((DIRECT_RING_BYTES + RESERVE_MAX_BYTES) / WASM_PAGE);
    // a wasm memory's buffer starts on a page boundary: every block is aligned for direct I/O
    const wasm = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    const worker = new Worker(new URL("./_direct_file_worker.ts", import.meta.url), {
      type: "module",
    });
    try {
      (await Deno.open(path, { write: true, createNew: true })).close();
    } catch (err) {
      worker.terminate();
      throw err;
    }
    const writeback = syncEvery > 0 ? new Writeback(path, syncEvery) : undefined;
    const sink = new DirectSink(worker, new Uint8Array(wasm.buffer), writeback, onBytes);
    // a failed open fails every later request, so it surfaces at the next wait or at finish
    sink.#call({ op: "open", path, buffer: wasm.buffer })
      .then((reply) => sink.#direct = reply.direct ?? sink.#direct, () => {});
    return sink;
  }

  #call(message: Record<string, unknown>): Promise<Reply> {
    // a worker that failed or was ended answers nothing more: fail at once, never wait forever
    if (this.#failed) return Promise.reject(this.#failed);
    if (this.#done) return Promise.reject(new Error("direct sink: already finished or abandoned"));
    const id = this.#nextId++;
    return new Promise<Reply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...message, id });
    });
  }

  /** Waits until ring block `b` is written and hashed (an error of its write is thrown here). */
  async #free(b: number): Promise<void> {
    const f = this.#inFlight[b];
    if (!f) return;
    try {
      const t0 = phaseClock.start();
      await f.write;
      phaseClock.stop("write", t0);
      const hashWait = phaseClock.start();
      await f.hash;
      phaseClock.stop("wait-hash", hashWait);
    } finally {
      // cleared only once waited for: a second waiter meanwhile waits for the same block
      if (this.#inFlight[b] === f) this.#inFlight[b] = undefined;
    }
  }

  /** Waits until the ring blocks under stream positions [from, to) are free. */
  async #freeRange(from: number, to: number): Promise<void> {
    const last = Math.floor((to - 1) / DIRECT_BLOCK_BYTES);
    for (let k = Math.floor(from / DIRECT_BLOCK_BYTES); k <= last; k++) {
      await this.#free(k % RING_BLOCKS);
    }
  }

  /**
   * Sends the block at `#sent` to the worker: `length` bytes written to the file (the last block
   * padded to the alignment), `real` of them hashed.
   */
  #send(length: number, real: number): void {
    const start = this.#sent % DIRECT_RING_BYTES;
    this.#writesQueued++;
    const write = this.#call({ op: "write", start, length, offset: this.#sent })
      .then(() => this.#writeback?.wrote(length, --this.#writesQueued > RING_BLOCKS / 2));
    write.catch(() => {}); // awaited before the block is reused, and in finish
    let hash: Promise<void> | undefined;
    if (this.#onBytes) {
      const h = this.#onBytes(this.#memory.subarray(start, start + real));
      if (h) hash = h.catch(() => {}); // a failed hash is the hasher's to report
    }
    this.#inFlight[start / DIRECT_BLOCK_BYTES] = { write, hash };
    this.#sent += length;
  }

  /** Sends every block the written bytes have filled. */
  #sendFull(): void {
    while (this.#written - this.#sent >= DIRECT_BLOCK_BYTES) {
      this.#send(DIRECT_BLOCK_BYTES, DIRECT_BLOCK_BYTES);
    }
  }

  async reserve(n: number): Promise<Uint8Array | undefined> {
    if (this.#failed) throw this.#failed;
    if (n <= 0 || n > RESERVE_MAX_BYTES) return undefined;
    const from = this.#reserved;
    // every byte between the oldest block not sent and the reservation's end must fit the ring
    const blockStart = this.#written - (this.#written % DIRECT_BLOCK_BYTES);
    if (from + n - blockStart > DIRECT_RING_BYTES) {
      throw new Error(`direct sink: reserving ${n} bytes would run ${from - blockStart} ahead`);
    }
    this.#reserved += n;
    this.#reservations.push(n);
    await this.#freeRange(from, from + n);
    const at = from % DIRECT_RING_BYTES;
    return this.#memory.subarray(at, at + n);
  }

  async write(bytes: Uint8Array): Promise<void> {
    // not only when a block is sent: bytes copied into a block of a dead worker are lost
    if (this.#failed) throw this.#failed;
    if (this.#reservations.length > 0) return this.#commit(bytes);
    const t0 = phaseClock.start();
    let at = 0;
    while (at < bytes.length) {
      const pos = this.#written % DIRECT_RING_BYTES;
      if (pos % DIRECT_BLOCK_BYTES === 0) await this.#free(pos / DIRECT_BLOCK_BYTES);
      const n = Math.min(DIRECT_BLOCK_BYTES - (pos % DIRECT_BLOCK_BYTES), bytes.length - at);
      this.#memory.set(bytes.subarray(at, at + n), pos);
      this.#written += n;
      at += n;
      this.#sendFull();
    }
    this.#reserved = this.#written;
    phaseClock.stop("write", t0, bytes.length);
  }

  /** Writes the oldest reservation, which `bytes` must be; nothing is copied but a spilled tail. */
  #commit(bytes: Uint8Array): Promise<void> {
    const n = this.#reservations[0]!;
    const at = this.#written % DIRECT_RING_BYTES;
    if (
      bytes.buffer !== this.#memory.buffer || bytes.byteOffset !== at || bytes.length !== n
    ) {
      throw new Error(
        "direct sink: bytes written while a reservation is outstanding must be that reservation",
      );
    }
    this.#reservations.shift();
    // the part past the ring's end belongs at its start (free since the reservation)
    if (at + n > DIRECT_RING_BYTES) this.#memory.copyWithin(0, DIRECT_RING_BYTES, at + n);
    this.#written += n;
    phaseClock.add("write", 0, n);
    this.#sendFull();
    return Promise.resolve();
  }

  async finish(): Promise<void> {
    try {
      if (this.#reservations.length > 0) {
        throw new Error("direct sink: finished with a reservation not written");
      }
      const size = this.#written; // before the last block is padded
      const tail = this.#written - this.#sent;
      if (tail > 0) {
        const padded = Math.ceil(tail / ALIGN) * ALIGN;
        const start = this.#sent % DIRECT_RING_BYTES;
        this.#memory.fill(0, start + tail, start + padded);
        this.#send(padded, tail);
      }
      for (let b = 0; b < RING_BLOCKS; b++) await this.#free(b);
      const reply = await this.#call({ op: "finish", size });
      this.#direct = reply.direct ?? this.#direct;
      await this.#writeback?.finish();
    } finally {
      await this.#writeback?.abandon();
      this.#end();
    }
  }

  async abandon(): Promise<void> {
    // first: the writes that end below must not start a sync of a file being given up
    await this.#writeback?.abandon();
    // the hashes need not end: nothing reuses the memory after this
    for (const f of this.#inFlight) await f?.write.catch(() => {});
    await this.#call({ op: "close" }).catch(() => {});
    this.#end();
  }

  /** Ends the worker; requests it will not answer now fail (a later abandon does not wait). */
  #end(): void {
    if (this.#done) return;
    this.#done = true;
    this.#worker.terminate();
    const ended = new Error("direct sink: already finished or abandoned");
    for (const p of this.#pending.values()) p.reject(ended);
    this.#pending.clear();
  }
}
