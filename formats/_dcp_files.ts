/**
 * The `.distcp` files of a DCP checkpoint, opened on demand and kept in a small LRU pool so that a
 * checkpoint written one file per item (`single_file_per_rank=False`: thousands of files) never
 * holds more than a bounded number of descriptors. A file in use is never closed under a reader.
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../errors.ts";
import { RandomAccessFile } from "./_io.ts";

/** Default number of files kept open. */
export const DCP_OPEN_FILES = 64;

interface Slot {
  file: RandomAccessFile;
  users: number;
}

/** A file being opened and the callers waiting for it. */
interface Opening {
  waiters: number;
  slot: Promise<Slot>;
}

/** Files of one checkpoint folder: sizes known up front, handles opened lazily. */
export class DcpFilePool {
  readonly #dir: string;
  readonly #max: number;
  readonly #sizes = new Map<string, number>();
  #open = new Map<string, Slot>(); // insertion order = least recently used first
  #opening = new Map<string, Opening>();
  #closed = false;

  /** A pool over files of `dir`, at most `max` open at once (more only while all are in use). */
  constructor(dir: string, max: number = DCP_OPEN_FILES) {
    this.#dir = dir;
    this.#max = Math.max(1, max);
  }

  /** Full path of `rel`. */
  path(rel: string): string {
    return join(this.#dir, rel);
  }

  /** Records the size of `rel` (stat); `DCP_FILE_MISSING` naming `key` when it is not a file. */
  async stat(rel: string, key: string): Promise<number> {
    const known = this.#sizes.get(rel);
    if (known !== undefined) return known;
    const path = this.path(rel);
    let size: number;
    try {
      const st = await Deno.stat(path);
      if (!st.isFile) throw new Error("not a file");
      size = st.size;
    } catch (cause) {
      throw new CkptError(
        "DCP_FILE_MISSING",
        `Cannot read "${key}": its file "${path}" cannot be opened`,
        { tensor: key, file: path, cause },
      );
    }
    this.#sizes.set(rel, size);
    return size;
  }

  /** Size of `rel` recorded by {@linkcode DcpFilePool.stat}. */
  size(rel: string): number {
    return this.#sizes.get(rel) ?? 0;
  }

  /** Runs `fn` with `rel` open; the handle stays open at least until `fn` settles. */
  async use<T>(rel: string, fn: (file: RandomAccessFile) => Promise<T>): Promise<T> {
    const slot = await this.#acquire(rel);
    try {
      return await fn(slot.file);
    } finally {
      slot.users--;
      await this.#evict();
    }
  }

  async #acquire(rel: string): Promise<Slot> {
    if (this.#closed) {
      throw new CkptError(
        "FILE_CLOSED",
        `Cannot read "${this.path(rel)}": the checkpoint is closed`,
        {
          file: this.path(rel),
        },
      );
    }
    const hit = this.#open.get(rel);
    if (hit) {
      this.#open.delete(rel);
      this.#open.set(rel, hit);
      hit.users++;
      return hit;
    }
    // Every caller waiting for the file to open is counted before it opens, so the slot enters
    // the pool already in use: an eviction between the open and a waiter's turn cannot close it.
    let opening = this.#opening.get(rel);
    if (!opening) {
      const counted = { waiters: 0 };
      opening = Object.assign(counted, { slot: this.#openSlot(rel, counted) });
      this.#opening.set(rel, opening);
      opening.slot.finally(() => this.#opening.delete(rel)).catch(() => {});
    }
    opening.waiters++;
    return await opening.slot;
  }

  /** Opens `rel` into a slot held by everyone who waited for it. */
  async #openSlot(rel: string, counted: { waiters: number }): Promise<Slot> {
    const file = await RandomAccessFile.open(this.path(rel));
    const slot = { file, users: counted.waiters };
    this.#open.set(rel, slot);
    return slot;
  }

  async #evict(): Promise<void> {
    if (this.#open.size <= this.#max) return;
    for (const [rel, slot] of this.#open) {
      if (this.#open.size <= this.#max) break;
      if (slot.users > 0) continue;
      this.#open.delete(rel);
      await slot.file.close();
    }
  }

  /** Number of files open now (for tests). */
  get openCount(): number {
    return this.#open.size;
  }

  /** Closes every open file; later reads fail with `FILE_CLOSED`. */
  async close(): Promise<void> {
    this.#closed = true;
    const slots = [...this.#open.values()];
    this.#open.clear();
    for (const s of slots) await s.file.close();
  }
}
