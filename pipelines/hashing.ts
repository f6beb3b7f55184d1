/**
 * sha256 for the manifest: {@linkcode hashFile} streams a file (never whole in memory),
 * {@linkcode HashWorker} hashes files and byte streams on a worker thread so hashing overlaps
 * other work, {@linkcode sha256Hex} hashes bytes in memory.
 *
 * @example Streaming bytes as they are written
 * ```ts
 * import { HashWorker, sha256Hex } from "./hashing.ts";
 * import assert from "node:assert/strict";
 *
 * const worker = new HashWorker();
 * const stream = worker.stream();
 * const buf = new Uint8Array(4);
 * for (const v of [1, 2]) {
 *   buf.fill(v);
 *   await stream.update(buf); // copied: the buffer may be reused at once
 * }
 * const { size, sha256 } = await stream.digest();
 * assert.equal(size, 8);
 * assert.equal(sha256, sha256Hex(new Uint8Array([1, 1, 1, 1, 2, 2, 2, 2])));
 * worker.close();
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { hashFile } from "./hash_file.ts";
import { phaseClock } from "../formats/phase_clock.ts";

export { hashFile };

/**
 * A sha256 over bytes fed in order (a file's bytes as they are written), computed on the hash
 * worker; see {@linkcode HashWorker.stream}.
 */
export interface HashStream {
  /** Bytes fed so far. */
  readonly size: number;
  /**
   * Feeds `bytes`. They are copied before this returns, so the caller may reuse its buffer, and a
   * promise is returned while more than the stream's queue limit waits on the worker: await it
   * before feeding more, to keep memory bounded. Bytes in shared memory (a `SharedArrayBuffer`)
   * are not copied: the worker reads them where they are, and the returned promise settles once
   * it has; they must not change before then.
   */
  update(bytes: Uint8Array): Promise<void> | void;
  /** Ends the stream: the size and sha256 of everything fed. */
  digest(): Promise<{ size: number; sha256: string }>;
  /** Discards the stream (no digest); a pending {@linkcode HashStream.update} promise resolves. */
  abort(): void;
}

/** Bytes a {@linkcode HashStream} lets wait on the worker before `update` asks the caller to wait. */
const STREAM_QUEUE_BYTES = 32 * 2 ** 20;

/** Block buffers a {@linkcode HashWorker} keeps for reuse. */
const SPARE_BUFFERS = 6;

/** A {@linkcode HashStream} hashing on the calling thread (when no worker can be started). */
function localHashStream(): HashStream {
  let hash: ReturnType<typeof createHash> | undefined = createHash("sha256");
  let size = 0;
  return {
    get size() {
      return size;
    },
    update(bytes: Uint8Array): void {
      if (!hash) throw new Error("hash stream already ended");
      hash.update(bytes);
      size += bytes.length;
    },
    digest(): Promise<{ size: number; sha256: string }> {
      if (!hash) return Promise.reject(new Error("hash stream already ended"));
      const sha256 = hash.digest("hex");
      hash = undefined;
      return Promise.resolve({ size, sha256 });
    },
    abort(): void {
      hash = undefined;
    },
  };
}

interface StreamState {
  queued: number;
  max: number;
  waiters: Array<() => void>;
  /** Updates of shared memory the worker has not hashed yet, oldest first. */
  shared: Array<() => void>;
}

/** Resolves the updates waiting for the copy queue to drain. */
function release(s: StreamState): void {
  const w = s.waiters;
  s.waiters = [];
  for (const r of w) r();
}

/** Resolves every waiting update, shared ones too: the stream ended, or its worker did. */
function releaseAll(s: StreamState): void {
  release(s);
  const w = s.shared;
  s.shared = [];
  for (const r of w) r();
}

/**
 * Hashes files, and streams of bytes, on a worker thread (one, created on first use), so hashing
 * overlaps other work. Falls back to hashing on the calling thread when workers are unavailable.
 *
 * @example Streaming bytes as they are written
 * ```ts
 * import { HashWorker, sha256Hex } from "./hashing.ts";
 * import assert from "node:assert/strict";
 *
 * const worker = new HashWorker();
 * const stream = worker.stream();
 * const buf = new Uint8Array(4);
 * for (const v of [1, 2]) {
 *   buf.fill(v);
 *   await stream.update(buf); // copied: the buffer may be reused at once
 * }
 * const { size, sha256 } = await stream.digest();
 * assert.equal(size, 8);
 * assert.equal(sha256, sha256Hex(new Uint8Array([1, 1, 1, 1, 2, 2, 2, 2])));
 * worker.close();
 * ```
 */
export class HashWorker {
  #worker: Worker | undefined;
  #failed = false;
  #next = 0;
  #pending = new Map<
    number,
    { resolve: (v: { size: number; sha256: string }) => void; reject: (e: Error) => void }
  >();
  #streams = new Map<number, StreamState>();
  /** Buffers the worker gave back after hashing a streamed block. */
  #spare: ArrayBuffer[] = [];

  /** `bytes` copied into a spare buffer (fresh pages for every block cost more than the copy). */
  #copy(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
    const i = this.#spare.findIndex((b) => b.byteLength >= bytes.length);
    const buffer = i >= 0 ? this.#spare.splice(i, 1)[0]! : new ArrayBuffer(bytes.length);
    const copy = new Uint8Array(buffer, 0, bytes.length);
    copy.set(bytes);
    return copy;
  }

  /** Starts the worker now (it takes some milliseconds), so that the first hash does not wait. */
  start(): void {
    this.#start();
  }

  /** Size and sha256 of `path`. */
  hash(path: string): Promise<{ size: number; sha256: string }> {
    const worker = this.#start();
    if (!worker) return hashFile(path);
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      worker.postMessage({ id, path });
    });
  }

  /**
   * Starts a sha256 over bytes fed in order, hashed on the worker while the caller goes on (one
   * worker serves any number of streams). At most `maxQueuedBytes` (default 32 MiB) wait on the
   * worker before {@linkcode HashStream.update} returns a promise to await.
   */
  stream(maxQueuedBytes: number = STREAM_QUEUE_BYTES): HashStream {
    const worker = this.#start();
    if (!worker) return localHashStream();
    const id = this.#next++;
    const state: StreamState = { queued: 0, max: maxQueuedBytes, waiters: [], shared: [] };
    this.#streams.set(id, state);
    let size = 0;
    let ended = false;
    const end = (): void => {
      ended = true;
      this.#streams.delete(id);
      releaseAll(state);
    };
    return {
      get size() {
        return size;
      },
      update: (bytes: Uint8Array): Promise<void> | void => {
        if (ended) throw new Error("hash stream already ended");
        if (bytes.length === 0) return;
        if (bytes.buffer instanceof SharedArrayBuffer) {
          size += bytes.length;
          // a worker closed or failed hashes nothing more: nothing to wait for (the digest fails)
          if (this.#worker !== worker || !this.#streams.has(id)) return;
          return new Promise<void>((r) => {
            state.shared.push(r);
            worker.postMessage({ id, op: "update", bytes, shared: true });
          });
        }
        const copy = this.#copy(bytes);
        size += copy.length;
        state.queued += copy.length;
        worker.postMessage({ id, op: "update", bytes: copy }, [copy.buffer]);
        if (state.queued > state.max && this.#streams.has(id)) {
          return new Promise<void>((r) => state.waiters.push(r));
        }
      },
      digest: (): Promise<{ size: number; sha256: string }> => {
        if (ended) return Promise.reject(new Error("hash stream already ended"));
        end();
        if (this.#worker !== worker) return Promise.reject(new Error("hash worker closed"));
        return new Promise((resolve, reject) => {
          this.#pending.set(id, { resolve, reject });
          worker.postMessage({ id, op: "digest" });
        });
      },
      abort: (): void => {
        if (ended) return;
        end();
        if (this.#worker === worker) worker.postMessage({ id, op: "abort" });
      },
    };
  }

  #start(): Worker | undefined {
    if (this.#worker || this.#failed) return this.#worker;
    try {
      const w = new Worker(new URL("./_hash_worker.ts", import.meta.url), { type: "module" });
      w.onmessage = (
        e: MessageEvent<
          {
            id: number;
            size?: number;
            sha256?: string;
            error?: string;
            ack?: number;
            shared?: boolean;
            buffer?: ArrayBuffer;
            ms?: number;
          }
        >,
      ) => {
        if (e.data.ack !== undefined) {
          if (e.data.buffer && this.#spare.length < SPARE_BUFFERS) this.#spare.push(e.data.buffer);
          const s = this.#streams.get(e.data.id);
          if (!s) return;
          if (e.data.shared) return s.shared.shift()?.();
          s.queued -= e.data.ack;
          if (s.queued <= s.max) release(s);
          return;
        }
        const p = this.#pending.get(e.data.id);
        if (!p) return;
        this.#pending.delete(e.data.id);
        if (e.data.error !== undefined) p.reject(new Error(e.data.error));
        else {
          if (e.data.ms !== undefined) phaseClock.add("hash", e.data.ms, e.data.size!);
          p.resolve({ size: e.data.size!, sha256: e.data.sha256! });
        }
      };
      w.onerror = (e) => {
        e.preventDefault();
        this.#fail(new Error(`hash worker failed: ${e.message}`));
        this.#failed = true;
      };
      this.#worker = w;
    } catch {
      this.#failed = true;
    }
    return this.#worker;
  }

  #fail(err: Error): void {
    this.#spare = [];
    this.#worker?.terminate();
    this.#worker = undefined;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    for (const s of this.#streams.values()) releaseAll(s);
    this.#streams.clear();
  }

  /**
   * Stops the worker for good (later hashes run on the calling thread); pending hashes and digests
   * reject, streams' waiting updates resolve.
   */
  close(): void {
    this.#fail(new Error("hash worker closed"));
    this.#failed = true;
  }
}

/** sha256 hex of bytes in memory. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}
