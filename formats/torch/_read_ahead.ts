/**
 * Reads small storages whole ahead of the writer, several at once, within a byte budget: a state
 * of many small tensors (an optimizer's moments) is written at the speed of its bytes rather than
 * at one read's latency per record. Only sources that say their reads may overlap
 * (`StorageSource.independentReads`) are read ahead. The bytes land in one reused slab (fresh
 * memory per storage costs a page fault per 4 KiB). Private to `save.ts`.
 * @module
 */
import { CkptError } from "../../errors.ts";
import type { TorchStorage } from "./values.ts";

/** Storages of at most this many bytes are read ahead whole. */
export const READ_AHEAD_MAX_STORAGE = 1 << 20;
/** Bytes read ahead and not yet released, at most. */
export const READ_AHEAD_BUDGET = 16 << 20;

/** Whether {@linkcode ReadAhead} reads `s` ahead (`bytes`: the byte count to write). */
export function readsAhead(s: TorchStorage, bytes: number): boolean {
  return s.source.independentReads === true && bytes <= READ_AHEAD_MAX_STORAGE &&
    bytes <= s.source.byteLength;
}

/**
 * The bytes of the storages of a fixed order that {@linkcode readsAhead} accepts, read before they
 * are asked for. For each such index, in increasing order: `take(i)`, use the bytes, `release(i)`.
 */
export class ReadAhead {
  readonly #storages: readonly (readonly [TorchStorage, number])[];
  readonly #signal: AbortSignal | undefined;
  readonly #slab: Uint8Array;
  /** Reads started and not released, oldest first: index, bytes, where in the slab. */
  readonly #live: { i: number; at: number; n: number; bytes: Promise<Uint8Array> }[] = [];
  /** Bytes of the live reads. */
  #liveBytes = 0;
  #next = 0;

  /** Reads ahead among `storages` (each with the byte count to write) in their order. */
  constructor(
    storages: readonly (readonly [TorchStorage, number])[],
    signal: AbortSignal | undefined,
  ) {
    this.#storages = storages;
    this.#signal = signal;
    const wanted = storages.reduce((t, [s, n]) => t + (readsAhead(s, n) ? n : 0), 0);
    this.#slab = new Uint8Array(Math.min(wanted, READ_AHEAD_BUDGET + READ_AHEAD_MAX_STORAGE));
    this.#fill();
  }

  /** The bytes of storage `i` (valid until `release(i)`). */
  async take(i: number): Promise<Uint8Array> {
    if (this.#live[0]?.i !== i) {
      // not started: nothing after it is either, and everything before it was released
      this.#next = i;
      this.#fill();
    }
    const head = this.#live[0];
    if (head?.i !== i) throw new Error(`read-ahead: storage ${i} taken out of order`);
    return await head.bytes;
  }

  /** Gives storage `i`'s memory back (after its bytes were written) and reads further ahead. */
  release(i: number): void {
    if (this.#live[0]?.i === i) this.#liveBytes -= this.#live.shift()!.n;
    this.#fill();
  }

  /** Starts nothing more and waits for the reads in flight (after a failed write). */
  async close(): Promise<void> {
    this.#next = this.#storages.length;
    this.#liveBytes = 0;
    await Promise.allSettled(this.#live.splice(0).map((r) => r.bytes));
  }

  #fill(): void {
    while (this.#next < this.#storages.length && !this.#signal?.aborted) {
      const [s, n] = this.#storages[this.#next]!;
      if (!readsAhead(s, n)) {
        this.#next++;
        continue;
      }
      const at = this.#room(n);
      if (at === undefined) return;
      const i = this.#next++;
      const bytes = this.#read(s, n, this.#slab.subarray(at, at + n));
      bytes.catch(() => {}); // awaited by take(), or dropped with a failed write
      this.#live.push({ i, at, n, bytes });
      this.#liveBytes += n;
    }
  }

  /** Where `n` more bytes fit in the slab after the live ones (a ring), within the budget. */
  #room(n: number): number | undefined {
    const live = this.#live;
    if (live.length === 0) return 0;
    if (this.#liveBytes >= READ_AHEAD_BUDGET) return undefined;
    const first = live[0]!.at, last = live[live.length - 1]!;
    const end = last.at + last.n;
    if (end >= first) {
      if (end + n <= this.#slab.length) return end;
      return n <= first ? 0 : undefined;
    }
    return end + n <= first ? end : undefined;
  }

  async #read(s: TorchStorage, n: number, into: Uint8Array): Promise<Uint8Array> {
    const src = s.source;
    const bytes = src.readInto ? await src.readInto(0, n, into) : await src.read(0, n);
    if (bytes.length !== n) {
      throw new CkptError(
        "TORCH_WRITE",
        `Cannot write storage: its source returned ${bytes.length} bytes for [0, ${n})`,
      );
    }
    return bytes;
  }
}
