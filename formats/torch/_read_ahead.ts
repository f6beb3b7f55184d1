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
/** Reads in flight at most (a state of many tiny tensors is not read all at once). */
export const READS_AT_ONCE = 256;

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
  /**
   * Reads started and not released, oldest first from `#head`: the storage's index, its byte
   * count, where in the slab and how many of its bytes (0 for a source that gives its own).
   */
  #live: { i: number; n: number; at: number; size: number; bytes: Promise<Uint8Array> }[] = [];
  #head = 0;
  /** Bytes of the live reads. */
  #liveBytes = 0;
  /** Reads not settled yet. */
  #reading = 0;
  /** Whether the newest live read sits before the oldest in the slab (the ring wrapped). */
  #wrapped = false;
  #next = 0;
  readonly #budget: number;

  /**
   * Reads ahead among `storages` (each with the byte count to write) in their order, at most
   * `budget` bytes ahead (default {@linkcode READ_AHEAD_BUDGET}).
   */
  constructor(
    storages: readonly (readonly [TorchStorage, number])[],
    signal: AbortSignal | undefined,
    budget: number = READ_AHEAD_BUDGET,
  ) {
    this.#storages = storages;
    this.#signal = signal;
    this.#budget = budget;
    // room for the budget and one more storage (the last read may go over it), or for all
    let wanted = 0, largest = 0;
    for (const [s, n] of storages) {
      if (!readsAhead(s, n) || !s.source.readInto) continue;
      wanted += n;
      largest = Math.max(largest, n);
    }
    this.#slab = new Uint8Array(Math.min(wanted, budget + largest));
    this.#fill();
  }

  /** The bytes of storage `i` (valid until `release(i)`). */
  async take(i: number): Promise<Uint8Array> {
    if (this.#oldest()?.i !== i) {
      // not started: nothing after it is either, and everything before it was released
      this.#next = i;
      this.#fill();
    }
    const oldest = this.#oldest();
    if (oldest?.i !== i) throw new Error(`read-ahead: storage ${i} taken out of order`);
    return await oldest.bytes;
  }

  /** Gives storage `i`'s memory back (after its bytes were written) and reads further ahead. */
  release(i: number): void {
    const oldest = this.#oldest();
    if (oldest?.i === i) {
      this.#head++;
      this.#liveBytes -= oldest.n;
      const now = this.#oldest();
      // the oldest read now lies at the slab's start: the ring no longer wraps
      if (!now || now.at < oldest.at) this.#wrapped = false;
      if (this.#head > 1024 && this.#head * 2 > this.#live.length) {
        this.#live = this.#live.slice(this.#head);
        this.#head = 0;
      }
    }
    this.#fill();
  }

  /** Starts nothing more and waits for the reads in flight (after a failed write). */
  async close(): Promise<void> {
    this.#next = this.#storages.length;
    const live = this.#live.slice(this.#head);
    this.#live = [];
    this.#head = 0;
    this.#liveBytes = 0;
    this.#wrapped = false;
    await Promise.allSettled(live.map((r) => r.bytes));
  }

  #oldest() {
    return this.#head < this.#live.length ? this.#live[this.#head] : undefined;
  }

  #fill(): void {
    while (this.#next < this.#storages.length && !this.#signal?.aborted) {
      if (this.#reading >= READS_AT_ONCE) return;
      const [s, n] = this.#storages[this.#next]!;
      if (!readsAhead(s, n)) {
        this.#next++;
        continue;
      }
      if (this.#liveBytes >= this.#budget) return;
      // a source without readInto returns bytes of its own: no room in the slab
      const size = s.source.readInto ? n : 0;
      const at = this.#room(size);
      if (at === undefined) return;
      const i = this.#next++;
      const bytes = this.#read(s, n, this.#slab.subarray(at, at + size));
      bytes.catch(() => {}); // awaited by take(), or dropped with a failed write
      this.#live.push({ i, n, at, size, bytes });
      this.#liveBytes += n;
    }
  }

  /** Where `n` more bytes fit in the slab after the live ones (a ring). */
  #room(n: number): number | undefined {
    const oldest = this.#oldest();
    if (!oldest) {
      this.#wrapped = false;
      return 0;
    }
    const first = oldest.at, newest = this.#live[this.#live.length - 1]!;
    const end = newest.at + newest.size;
    if (this.#wrapped) return end + n <= first ? end : undefined;
    if (end + n <= this.#slab.length || n === 0) return end;
    if (n > first) return undefined;
    this.#wrapped = true;
    return 0;
  }

  async #read(s: TorchStorage, n: number, into: Uint8Array): Promise<Uint8Array> {
    const src = s.source;
    this.#reading++;
    let bytes: Uint8Array;
    try {
      bytes = src.readInto ? await src.readInto(0, n, into) : await src.read(0, n);
    } finally {
      this.#reading--;
    }
    if (bytes.length !== n) {
      throw new CkptError(
        "TORCH_WRITE",
        `Cannot write storage: its source returned ${bytes.length} bytes for [0, ${n})`,
      );
    }
    return bytes;
  }
}
