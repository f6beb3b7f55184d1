/**
 * `torch.save` for ckpt: writes a value tree as the zip archive torch 2.6 writes: records
 * `data.pkl` (protocol 2), `byteorder`, `data/<key>` (keys by first appearance, records in string
 * order as 2.6 sorts them), `version` (`3\n`) and `.data/serialization_id`, laid out by
 * {@linkcode TorchZipWriter}. Tensor bytes stream from their storages in bounded blocks; small
 * storages whose reads may overlap (a loaded torch file's) are read ahead, several at once, within
 * 16 MiB; the file is written as a temp file and renamed into place when complete. Output is
 * deterministic.
 *
 * Tensors that share a {@linkcode TorchStorage} (views, tied weights loaded from a torch file) are
 * written as one storage; every other tensor gets its own, and the whole storage is written (as
 * torch does).
 *
 * @example Writing a state dict
 * ```ts
 * import { saveTorchStateDict } from "./save.ts";
 * import { openTorchStateDict } from "./state_dict.ts";
 * import { StateDict, tensorFromBytes } from "../state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".bin" });
 * const sd = new StateDict([["w", tensorFromBytes("BF16", [1, 2], new Uint8Array([1, 2, 3, 4]))]]);
 * await saveTorchStateDict(path, sd);
 * await using back = await openTorchStateDict(path);
 * assert.deepEqual([...await back.require("w").read()], [1, 2, 3, 4]);
 * await Deno.remove(path);
 * ```
 * @module
 */
import { basename, dirname, join } from "node:path";
import { CkptError } from "../../errors.ts";
import { osError } from "../../errors/os.ts";
import { DTYPES } from "../dtype.ts";
import type { StateDict } from "../state_dict.ts";
import { pickleValue } from "./pickle.ts";
import { PyDict, type PyValue, type TorchStorage, torchTensor } from "./values.ts";
import { TorchZipWriter } from "./zip_writer.ts";
import { ReadAhead, readsAhead } from "./_read_ahead.ts";
import { RESERVE_MAX_BYTES } from "../_file_sink.ts";

/** Options of {@linkcode saveTorch}. */
export interface SaveTorchOptions {
  /** Stops the write (the temp file is removed) when aborted. */
  signal?: AbortSignal;
  /** Called after each block with bytes of tensor data written and the total. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** Bytes read and written per block. Default 8 MiB (the most a writer reads in place). */
  blockSize?: number;
  /** Archive folder name. Default: the file name without its last extension, as torch does. */
  prefix?: string;
  /**
   * Called with every byte written, in file order (`path` is the final path, not the temporary
   * file's), right after it is written. The writer reuses its buffers: copy the bytes before
   * returning if they are kept. A returned promise is awaited before the writer goes on.
   */
  onBytes?: (path: string, bytes: Uint8Array) => void | Promise<void>;
  /** Background `fdatasync` of the file after every this many bytes (default 0: never). */
  syncEvery?: number;
}

/** What {@linkcode saveTorch} wrote. */
export interface SaveTorchResult {
  /** File size in bytes. */
  bytes: number;
  /** Number of storage records. */
  storages: number;
}

/** The archive folder torch 2.6 uses for a path: basename without its last extension (`archive` when not ASCII or empty). */
export function torchArchivePrefix(path: string): string {
  const base = basename(path);
  const dot = base.lastIndexOf(".");
  const stem = dot > 0 ? base.slice(0, dot) : dot === 0 ? "" : base;
  // deno-lint-ignore no-control-regex
  if (stem === "" || !/^[\x00-\x7f]*$/.test(stem)) return "archive";
  return stem;
}

function randomSuffix(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(6)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

/** Two reusable buffers for sources that can read into a buffer (the writer holds at most one while the next is read). */
class BufferPair {
  #bufs: Uint8Array[] = [];
  #next = 0;
  constructor(readonly size: number) {}
  take(n: number): Uint8Array {
    if (this.#bufs.length < 2) this.#bufs.push(new Uint8Array(this.size));
    const b = this.#bufs[this.#next % this.#bufs.length]!;
    this.#next++;
    return b.subarray(0, n);
  }
}

/**
 * A storage's bytes in blocks of about `blockSize`. A source that reads into a buffer reads into
 * the file's own memory where the writer gives some (no copy), else into the pool's buffers.
 */
async function* blocks(
  storage: TorchStorage,
  blockSize: number,
  signal: AbortSignal | undefined,
  progress: (n: number) => void,
  pool: BufferPair,
  writer: TorchZipWriter,
): AsyncGenerator<Uint8Array> {
  const total = storage.byteLength;
  const src = storage.source;
  const align = Math.max(1, src.blockAlign ?? 1);
  const step = Math.max(align, Math.floor(blockSize / align) * align);
  const reuse = src.readInto !== undefined && step <= pool.size;
  // every block of the storage reserved, or none (a reservation is written before the next)
  const reserve = reuse && step <= RESERVE_MAX_BYTES;
  const target = async (n: number) =>
    (reserve ? await writer.reserve(n) : undefined) ?? pool.take(n);
  for (let s = 0; s < total; s += step) {
    signal?.throwIfAborted();
    const e = Math.min(total, s + step);
    const bytes = reuse ? await src.readInto!(s, e, await target(e - s)) : await src.read(s, e);
    if (bytes.length !== e - s) {
      throw new CkptError(
        "TORCH_WRITE",
        `Cannot write storage: its source returned ${bytes.length} bytes for [${s}, ${e})`,
      );
    }
    yield bytes;
    progress(e - s);
  }
}

/**
 * Writes `value` to `path` as torch 2.6's `torch.save` does, loadable with
 * `torch.load(path, weights_only=True)`. Returns the file size.
 */
export async function saveTorch(
  path: string,
  value: PyValue,
  options: SaveTorchOptions = {},
): Promise<SaveTorchResult> {
  const { signal } = options;
  signal?.throwIfAborted();
  const storages: TorchStorage[] = [];
  const keys = new Map<TorchStorage, string>();
  const pickle = pickleValue(value, {
    storageKey: (s) => {
      let k = keys.get(s);
      if (k === undefined) {
        k = String(keys.size);
        keys.set(s, k);
        storages.push(s);
      }
      return k;
    },
  });
  const total = storages.reduce((n, s) => n + s.byteLength, 0);
  let done = 0;
  const progress = (n: number) => {
    done += n;
    options.onProgress?.(done, total);
  };
  const blockSize = options.blockSize ?? RESERVE_MAX_BYTES;
  const pool = new BufferPair(
    Math.min(blockSize, storages.reduce((m, s) => Math.max(m, s.byteLength), 1)),
  );
  const prefix = options.prefix ?? torchArchivePrefix(path);
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${randomSuffix()}`);
  let w: TorchZipWriter;
  try {
    const onBytes = options.onBytes;
    w = await TorchZipWriter.create(
      tmp,
      prefix,
      onBytes && ((b) => onBytes(path, b)),
      options.syncEvery,
      total + pickle.length, // about the file's size: large ones are written with direct I/O
    );
  } catch (cause) {
    throw osError(cause, "create", tmp, { code: "FILE_WRITE" });
  }
  let ahead: ReadAhead | undefined;
  try {
    await w.add("data.pkl", pickle);
    await w.add("byteorder", new TextEncoder().encode("little"));
    const ordered = storages.map((s, i) => [String(i), s] as const).sort((a, b) =>
      a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0
    );
    ahead = new ReadAhead(ordered.map(([, s]) => [s, s.byteLength] as const), signal);
    for (const [i, [key, s]] of ordered.entries()) {
      const need = s.byteLength;
      if (s.source.byteLength < need) {
        throw new CkptError(
          "TORCH_STORAGE_SIZE",
          `Cannot write storage ${key}: ${s.numel} ${s.dtype} elements need ${need} bytes, its source has ${s.source.byteLength}`,
          { file: path },
        );
      }
      if (readsAhead(s, need)) {
        signal?.throwIfAborted();
        await w.add(`data/${key}`, await ahead.take(i));
        ahead.release(i);
        progress(need);
      } else await w.add(`data/${key}`, blocks(s, blockSize, signal, progress, pool, w), need);
    }
    await w.add("version", new TextEncoder().encode("3\n"));
    await w.add(".data/serialization_id", new TextEncoder().encode(w.serializationId()));
    const bytes = await w.finish();
    signal?.throwIfAborted();
    await Deno.rename(tmp, path);
    return { bytes, storages: storages.length };
  } catch (err) {
    await ahead?.close();
    await w.abort();
    await Deno.remove(tmp).catch(() => {});
    if (err instanceof CkptError || (signal?.aborted && err === signal.reason)) throw err;
    throw osError(err, "write", path, { code: "FILE_WRITE" });
  }
}

/**
 * Writes a {@linkcode StateDict} as a torch state dict (an `OrderedDict` of tensors, what
 * `torch.save(model.state_dict())` and `save_pretrained(safe_serialization=False)` write).
 * Tensors loaded from torch files keep their storage sharing; other refs get one storage each.
 */
export function saveTorchStateDict(
  path: string,
  sd: StateDict,
  options: SaveTorchOptions = {},
): Promise<SaveTorchResult> {
  const d = new PyDict([], "OrderedDict");
  for (const [name, ref] of sd) d.set(name, torchTensor(ref));
  return saveTorch(path, d, options);
}

/** Bytes of tensor data {@linkcode saveTorchStateDict} writes for `sd` (one storage per distinct storage). */
export function torchStateDictBytes(sd: StateDict): number {
  const seen = new Set<TorchStorage>();
  let n = 0;
  for (const [, ref] of sd) {
    const t = torchTensor(ref);
    if (seen.has(t.storage)) continue;
    seen.add(t.storage);
    n += t.storage.numel * DTYPES[t.dtype].size;
  }
  return n;
}
