/**
 * Private: where the streaming writers (safetensors, torch zip) put their bytes, in file order.
 *
 * A large file (at least {@linkcode DIRECT_MIN_BYTES}) is written with direct I/O (`O_DIRECT`)
 * by a worker thread: the bytes are copied into one of two page-aligned blocks of a shared memory
 * and the worker writes a full block by position while the next one fills. The page cache is not
 * involved, so there is no per-page copy and allocation in the kernel for every byte written
 * (which costs more CPU than the copy here, and varies a lot on virtual machines) and nothing is
 * left dirty for the fsync before the rename. The last block is padded to the alignment and the
 * file truncated to its exact size. Where the file system refuses direct I/O, on systems other
 * than Linux, with `CKPT_DIRECT_IO=0`, and for small files, the bytes are written through the
 * page cache, with an early background `fdatasync` every `syncEvery` bytes.
 * @module
 */
import { Writeback } from "./_writeback.ts";

/** Files at least this large are written with direct I/O (smaller ones are not worth a worker). */
export const DIRECT_MIN_BYTES = 64 * 2 ** 20;
/** Bytes per direct write; a multiple of every block size direct I/O asks for. */
export const DIRECT_BLOCK_BYTES = 4 * 2 ** 20;
/** Alignment of direct writes' memory, offsets and lengths (4 KiB covers 512-byte devices). */
const ALIGN = 4096;
const WASM_PAGE = 65536;

/** A file being written front to back. */
export interface FileSink {
  /** True when the bytes bypass the page cache (direct I/O). */
  readonly direct: boolean;
  /**
   * Writes `bytes` after those written before. The caller may reuse `bytes` once this resolves.
   * An error of an earlier write may surface here or in {@linkcode FileSink.finish}.
   */
  write(bytes: Uint8Array): Promise<void>;
  /** Writes what is left, waits for every write, closes; throws any write's error. */
  finish(): Promise<void>;
  /** Waits for the writes in flight and closes, ignoring errors (the caller removes the file). */
  abandon(): Promise<void>;
}

/** Options of {@linkcode createFileSink}. */
export interface FileSinkOptions {
  /** Expected size of the file in bytes (chooses direct I/O for large files). */
  expectedBytes: number;
  /** Buffered writes only: an `fdatasync` in the background after every this many bytes. */
  syncEvery?: number | undefined;
  /** Truncate `path` when it exists instead of failing (always written buffered). */
  replace?: boolean | undefined;
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
    const sink = await DirectSink.create(path);
    if (sink) return sink;
  }
  const file = await Deno.open(
    path,
    options.replace
      ? { write: true, create: true, truncate: true }
      : { write: true, createNew: true },
  );
  return new BufferedSink(path, file, options.syncEvery ?? 0);
}

/** Through the page cache, with optional early writeback. */
class BufferedSink implements FileSink {
  readonly direct = false;
  readonly #file: Deno.FsFile;
  readonly #writeback: Writeback | undefined;
  #closed = false;

  constructor(path: string, file: Deno.FsFile, syncEvery: number) {
    this.#file = file;
    this.#writeback = syncEvery > 0 ? new Writeback(path, syncEvery) : undefined;
  }

  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) done += await this.#file.write(bytes.subarray(done));
    this.#writeback?.wrote(bytes.length);
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

/** Direct I/O from two aligned blocks of a shared memory, written by a worker. */
class DirectSink implements FileSink {
  #direct = true;
  readonly #worker: Worker;
  readonly #memory: Uint8Array;
  readonly #pending = new Map<
    number,
    { resolve: (r: Reply) => void; reject: (e: Error) => void }
  >();
  #nextId = 0;
  /** The write in flight from each block, if any. */
  readonly #inFlight: (Promise<void> | undefined)[] = [undefined, undefined];
  #block = 0;
  #fill = 0;
  /** File offset of the current block: the bytes sent to the worker so far. */
  #offset = 0;
  #done = false;
  #failed: Error | undefined;

  private constructor(worker: Worker, memory: Uint8Array) {
    this.#worker = worker;
    this.#memory = memory;
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

  /** The sink, or undefined when the file system refuses direct I/O (nothing is left behind). */
  static async create(path: string): Promise<DirectSink | undefined> {
    const pages = Math.ceil((2 * DIRECT_BLOCK_BYTES) / WASM_PAGE);
    // a wasm memory's buffer starts on a page boundary: every block is aligned for direct I/O
    const wasm = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    const worker = new Worker(new URL("./_direct_file_worker.ts", import.meta.url), {
      type: "module",
    });
    const sink = new DirectSink(worker, new Uint8Array(wasm.buffer));
    try {
      const reply = await sink.#call({ op: "open", path, buffer: wasm.buffer });
      if (reply.direct) return sink;
    } catch (err) {
      worker.terminate();
      throw err;
    }
    worker.terminate();
    return undefined;
  }

  #call(message: Record<string, unknown>): Promise<Reply> {
    // a worker that failed answers nothing more: fail at once instead of waiting forever
    if (this.#failed) return Promise.reject(this.#failed);
    const id = this.#nextId++;
    return new Promise<Reply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...message, id });
    });
  }

  /** Sends the current block's first `length` bytes to the worker and moves to the other block. */
  #send(length: number): void {
    const start = this.#block * DIRECT_BLOCK_BYTES;
    const write = this.#call({ op: "write", start, length, offset: this.#offset }).then(() => {});
    write.catch(() => {}); // awaited before the block is reused, and in finish
    this.#inFlight[this.#block] = write;
    this.#offset += length;
    this.#fill = 0;
    this.#block ^= 1;
  }

  async write(bytes: Uint8Array): Promise<void> {
    // not only when a block is sent: bytes copied into a block of a dead worker are lost
    if (this.#failed) throw this.#failed;
    let at = 0;
    while (at < bytes.length) {
      const busy = this.#inFlight[this.#block];
      if (busy) {
        this.#inFlight[this.#block] = undefined;
        await busy;
      }
      const n = Math.min(DIRECT_BLOCK_BYTES - this.#fill, bytes.length - at);
      this.#memory.set(bytes.subarray(at, at + n), this.#block * DIRECT_BLOCK_BYTES + this.#fill);
      this.#fill += n;
      at += n;
      if (this.#fill === DIRECT_BLOCK_BYTES) this.#send(DIRECT_BLOCK_BYTES);
    }
  }

  async finish(): Promise<void> {
    try {
      const size = this.#offset + this.#fill; // before the last block is padded
      if (this.#fill > 0) {
        const padded = Math.ceil(this.#fill / ALIGN) * ALIGN;
        const start = this.#block * DIRECT_BLOCK_BYTES;
        this.#memory.fill(0, start + this.#fill, start + padded);
        this.#send(padded);
      }
      for (const w of this.#inFlight) await w;
      const reply = await this.#call({ op: "finish", size });
      this.#direct = reply.direct ?? this.#direct;
    } finally {
      this.#end();
    }
  }

  async abandon(): Promise<void> {
    for (const w of this.#inFlight) await w?.catch(() => {});
    await this.#call({ op: "close" }).catch(() => {});
    this.#end();
  }

  #end(): void {
    if (this.#done) return;
    this.#done = true;
    this.#worker.terminate();
  }
}
