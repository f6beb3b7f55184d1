/**
 * Early writeback for the streaming writers: every `every` bytes written, an `fdatasync` of the
 * file starts on a second descriptor (one at a time, never awaited by the writer), so the kernel
 * writes the data to disk, and the disk flushes its write cache (direct writes wait there too),
 * while the next blocks are computed, and the runner's fsync before the rename finds little left
 * to flush. An error of such a sync is kept and thrown by
 * {@linkcode Writeback.finish}: Linux reports a writeback error once per descriptor, and the
 * runner's later fsync on a new descriptor might not see it.
 * @module
 */
import { phaseClock } from "./phase_clock.ts";

/** Syncs a file being written in the background; see the module doc. */
export class Writeback {
  readonly #path: string;
  readonly #every: number;
  #unsynced = 0;
  #inFlight: Promise<void> | undefined;
  #file: Deno.FsFile | undefined;
  #error: unknown;
  #failed = false;
  #abandoned = false;

  /** Syncs `path` (open for writing elsewhere) after every `every` bytes reported written. */
  constructor(path: string, every: number) {
    this.#path = path;
    this.#every = every;
  }

  /**
   * Reports `n` more bytes written; starts a sync when `every` bytes wait, none runs, and the
   * writer is not `busy` (true: writes are queued behind this one, and a flush now would hold
   * them up).
   */
  wrote(n: number, busy = false): void {
    this.#unsynced += n;
    if (this.#unsynced < this.#every || this.#inFlight || this.#abandoned || busy) return;
    this.#unsynced = 0;
    this.#inFlight = this.#sync().finally(() => this.#inFlight = undefined);
  }

  async #sync(): Promise<void> {
    try {
      if (!this.#file) {
        const file = await Deno.open(this.#path, { read: true });
        if (this.#abandoned) return file.close();
        this.#file = file;
      }
      const t0 = phaseClock.start();
      await this.#file.syncData();
      phaseClock.stop("fsync", t0);
    } catch (err) {
      if (!this.#failed) this.#error = err;
      this.#failed = true;
    }
  }

  /** Waits for the sync in flight, closes the descriptor, and throws a sync's error if any. */
  async finish(): Promise<void> {
    await this.#inFlight;
    this.#file?.close();
    this.#file = undefined;
    if (this.#failed) throw this.#error;
  }

  /** Resolves once no sync is in flight (never rejects): what an abandoned one leaves running. */
  async settled(): Promise<void> {
    while (this.#inFlight) await this.#inFlight;
  }

  /**
   * Closes the descriptor at once, ignoring errors (the write failed or was stopped), and starts
   * no more syncs. A sync in flight is not waited for: on a slow disk it can take most of a second,
   * which an abort must not wait out; it ends on its own (the file closes when it does).
   */
  abandon(): Promise<void> {
    this.#abandoned = true;
    try {
      this.#file?.close();
    } catch { /* closed */ }
    this.#file = undefined;
    return Promise.resolve();
  }
}
