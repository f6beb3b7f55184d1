/**
 * torch.distributed.checkpoint (DCP) folders, read directly and streaming: `.metadata` plus
 * `__<rank>_<n>.distcp` files, as FSDP (`SHARDED_STATE_DICT`), FSDP2/DTensor and accelerate's
 * `pytorch_model_fsdp_0/` / `optimizer_0/` leave them.
 *
 * - `.metadata` is decoded by the restricted unpickler in records mode (DCP's dataclasses become
 *   plain records, nothing is run) and turned into typed {@linkcode DcpMetadata}.
 * - Each tensor chunk inside a `.distcp` file is a complete `torch.save` zip at an offset and length;
 *   chunks are placed at their offsets along any dimension (uneven and zero-size chunks included).
 * - A full tensor is produced row block by row block straight from the chunk records
 *   ({@linkcode DcpCheckpoint.tensor}), so memory is bounded by the block asked for.
 * - {@linkcode DcpCheckpoint.open} checks everything before anything can be written: every file
 *   present, every item inside its file, every chunk record's dtype and shape equal to the metadata,
 *   chunks covering every element exactly once.
 *
 * @example Gathering a sharded model as a lazy state dict
 * ```ts
 * import { openDcpStateDict } from "./dcp.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL("../tests/fixtures/dcp/f32_w2/model", import.meta.url).pathname;
 * await using sd = await openDcpStateDict(dir);
 * assert.deepEqual([...sd.keys()], ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias"]);
 * assert.deepEqual(sd.get("1.weight")!.shape, [9, 5]);
 * const rows = await sd.get("1.weight")!.read(3, 6); // crosses the rank 0 / rank 1 boundary
 * assert.equal(rows.byteLength, 3 * 5 * 4);
 * ```
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../errors.ts";
import { DTYPES } from "./dtype.ts";
import { DCP_OPEN_FILES, DcpFilePool } from "./_dcp_files.ts";
import { checkRowRange, numel, StateDict, type TensorRef } from "./state_dict.ts";
import {
  assembleRows,
  checkChunkCoverage,
  type ChunkRows,
  type ResolvedChunk,
} from "./_dcp_assemble.ts";
import type { PyValue } from "./torch/values.ts";
import { decodeDcpMetadata, openChunkRecord, readBytesRecord } from "./_dcp_records.ts";
import type {
  DcpBytesEntry,
  DcpChunk,
  DcpEntry,
  DcpMetadata,
  DcpTensorEntry,
} from "./_dcp_types.ts";
import { type DcpNameOptions, dcpTensorNames } from "./_dcp_names.ts";

export type {
  DcpBytesEntry,
  DcpChunk,
  DcpEntry,
  DcpMetadata,
  DcpPathItem,
  DcpTensorEntry,
} from "./_dcp_types.ts";
export { DCP_METADATA_CLASSES } from "./_dcp_records.ts";
export {
  DCP_WRAPPER_SEGMENTS,
  type DcpNameOptions,
  dcpTensorNames,
  defaultDcpRoot,
  stripWrapperSegments,
} from "./_dcp_names.ts";

/** True when `path` is a folder with a `.metadata` file (a DCP checkpoint). Never throws. */
export async function isDcpFolder(path: string): Promise<boolean> {
  try {
    if (!(await Deno.stat(path)).isDirectory) return false;
    return (await Deno.stat(join(path, ".metadata"))).isFile;
  } catch {
    return false;
  }
}

/** Options of {@linkcode DcpCheckpoint.open}. */
export interface DcpOpenOptions {
  /**
   * Check every chunk record (zip, dtype, shape) when opening. Default true; with false the records
   * are checked on first read instead (coverage and file bounds are always checked).
   */
  verifyRecords?: boolean;
  /** Most `.distcp` files kept open at once (a folder may hold one file per item). Default 64. */
  maxOpenFiles?: number;
  /** Aborts a long open. */
  signal?: AbortSignal;
}

/**
 * An open DCP checkpoint: its metadata, lazy full tensors and decoded bytes values. Close it (or
 * `await using`) to release the chunk files.
 */
export class DcpCheckpoint implements AsyncDisposable {
  /** Folder of the checkpoint. */
  readonly dir: string;
  /** Typed metadata. */
  readonly metadata: DcpMetadata;
  #files: DcpFilePool;
  #resolved = new Map<DcpChunk, Promise<ResolvedChunk>>();

  private constructor(dir: string, metadata: DcpMetadata, files: DcpFilePool) {
    this.dir = dir;
    this.metadata = metadata;
    this.#files = files;
  }

  /**
   * Opens the checkpoint in `dir`: decodes `.metadata`, opens every `.distcp` file it names and
   * checks the layout. Errors (`DCP_*`) name the tensor and the file; nothing is left open on error.
   */
  static async open(dir: string, options: DcpOpenOptions = {}): Promise<DcpCheckpoint> {
    const metaPath = join(dir, ".metadata");
    let metaBytes: Uint8Array;
    try {
      metaBytes = await Deno.readFile(metaPath);
    } catch (cause) {
      throw new CkptError(
        "DCP_METADATA_MISSING",
        `Cannot open DCP checkpoint "${dir}": no readable .metadata (${(cause as Error).message})`,
        { file: metaPath, cause },
      );
    }
    return await DcpCheckpoint.fromMetadata(dir, decodeDcpMetadata(metaBytes, metaPath), options);
  }

  /**
   * Opens the checkpoint in `dir` described by `metadata` (decoded from `.metadata`, or put together
   * from the files of a layout that has none, such as `HuggingFaceStorageWriter` shards) with the
   * checks of {@linkcode DcpCheckpoint.open}.
   */
  static async fromMetadata(
    dir: string,
    metadata: DcpMetadata,
    options: DcpOpenOptions = {},
  ): Promise<DcpCheckpoint> {
    const files = new DcpFilePool(dir, options.maxOpenFiles ?? DCP_OPEN_FILES);
    const ckpt = new DcpCheckpoint(dir, metadata, files);
    try {
      await ckpt.#openFiles();
      ckpt.#checkLayout();
      if (options.verifyRecords ?? true) await ckpt.#verifyRecords(options.signal);
    } catch (err) {
      await ckpt.close();
      throw err;
    }
    return ckpt;
  }

  async #openFiles(): Promise<void> {
    const users = new Map<string, string>(); // file -> first key using it
    for (const e of this.metadata.entries) {
      const files = e.kind === "tensor" ? e.chunks.map((c) => c.file) : [e.file];
      for (const f of files) if (!users.has(f)) users.set(f, e.key);
    }
    for (const [rel, key] of users) {
      if (rel.split(/[\\/]/).includes("..") || rel.startsWith("/")) {
        throw new CkptError(
          "DCP_FILE_PATH",
          `Cannot read "${key}": its file "${rel}" lies outside the checkpoint folder`,
          { tensor: key, file: rel },
        );
      }
      await this.#files.stat(rel, key);
    }
  }

  #checkLayout(): void {
    for (const e of this.metadata.entries) {
      const items = e.kind === "tensor" ? e.chunks : [e];
      for (const item of items) {
        const size = this.#files.size(item.file);
        if (item.offset + item.length > size) {
          const path = this.#files.path(item.file);
          throw new CkptError(
            "DCP_ITEM_BOUNDS",
            `Cannot read "${e.key}": its record at offset ${item.offset} (${item.length} bytes) ends past the end of "${path}" (${size} bytes)`,
            { tensor: e.key, file: path, offset: item.offset },
          );
        }
      }
      if (e.kind === "tensor") {
        checkChunkCoverage(e.shape, e.chunks, {
          tensor: e.key,
          fileOf: (i) => this.#fileOf(e.chunks[i]!),
          metadataFile: this.metadata.layout === "huggingface"
            ? this.dir
            : join(this.dir, ".metadata"),
        });
      }
    }
  }

  #fileOf(chunk: DcpChunk): string {
    return join(this.dir, chunk.file);
  }

  async #verifyRecords(signal?: AbortSignal): Promise<void> {
    const tensors = this.metadata.entries.filter((e): e is DcpTensorEntry => e.kind === "tensor");
    const jobs: (() => Promise<unknown>)[] = [];
    for (const t of tensors) for (const c of t.chunks) jobs.push(() => this.#resolve(t, c));
    // A few records at a time: each is a small header read.
    let next = 0;
    const worker = async () => {
      while (next < jobs.length) {
        signal?.throwIfAborted();
        await jobs[next++]!();
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, jobs.length) }, worker));
  }

  /** The resolved record of `chunk` (parsed once, then cached). */
  #resolve(entry: DcpTensorEntry, chunk: DcpChunk): Promise<ResolvedChunk> {
    let p = this.#resolved.get(chunk);
    if (!p) {
      p = (async () => {
        const r = await openChunkRecord({ pool: this.#files, ...chunk }, entry.key);
        const file = { path: this.#files.path(chunk.file) };
        if (
          r.dtype !== entry.dtype || r.shape.length !== chunk.sizes.length ||
          r.shape.some((d, i) => d !== chunk.sizes[i])
        ) {
          throw new CkptError(
            "DCP_RECORD_MISMATCH",
            `Cannot read "${entry.key}": the record at offset ${chunk.offset} of "${file.path}" holds ${r.dtype}[${
              r.shape.join(", ")
            }], the metadata says ${entry.dtype}[${chunk.sizes.join(", ")}] at (${
              chunk.offsets.join(", ")
            })`,
            { tensor: entry.key, file: file.path, offset: chunk.offset },
          );
        }
        return r;
      })();
      this.#resolved.set(chunk, p);
    }
    return p;
  }

  /** The entry with flat key `key`, or `DCP_KEY_MISSING`. */
  entry(key: string): DcpEntry {
    const e = this.metadata.entries.find((x) => x.key === key);
    if (!e) {
      throw new CkptError(
        "DCP_KEY_MISSING",
        `Cannot find "${key}" in DCP checkpoint "${this.dir}"`,
        {
          tensor: key,
        },
      );
    }
    return e;
  }

  /**
   * The full tensor of a tensor entry as a lazy {@linkcode TensorRef}: `read(a, b)` assembles rows
   * `[a, b)` from the chunks that hold them, reading only those rows.
   */
  tensor(keyOrEntry: string | DcpTensorEntry): TensorRef {
    const e = typeof keyOrEntry === "string" ? this.entry(keyOrEntry) : keyOrEntry;
    if (e.kind !== "tensor") {
      throw new CkptError(
        "DCP_NOT_TENSOR",
        `Cannot read "${e.key}" as a tensor: it is a bytes value`,
        {
          tensor: e.key,
        },
      );
    }
    const elem = DTYPES[e.dtype].size;
    const source = `${this.dir} (DCP, ${e.chunks.length} chunks)`;
    const sources: ChunkRows[] = e.chunks.map((c) => ({
      readRows: async (r0: number, r1: number, into?: Uint8Array) =>
        (await this.#resolve(e, c)).rows.readRows(r0, r1, into),
    }));
    const assemble = async (rowStart?: number, rowEnd?: number, into?: Uint8Array) => {
      const [a, b] = checkRowRange(e.shape, rowStart, rowEnd, e.key);
      if (numel(e.shape) === 0 || a === b) return new Uint8Array(0);
      return await assembleRows(e.shape, elem, e.chunks, sources, a, b, into);
    };
    return {
      dtype: e.dtype,
      shape: [...e.shape],
      source,
      read: (rowStart?: number, rowEnd?: number): Promise<Uint8Array> =>
        assemble(rowStart, rowEnd, undefined),
      readInto: (rowStart: number, rowEnd: number, into: Uint8Array): Promise<Uint8Array> =>
        assemble(rowStart, rowEnd, into),
    };
  }

  /** Decodes a bytes entry (a `torch.save`d Python value) with the restricted unpickler. */
  async value(keyOrEntry: string | DcpBytesEntry): Promise<PyValue> {
    const e = typeof keyOrEntry === "string" ? this.entry(keyOrEntry) : keyOrEntry;
    if (e.kind !== "bytes") {
      throw new CkptError("DCP_NOT_BYTES", `Cannot read "${e.key}" as a value: it is a tensor`, {
        tensor: e.key,
      });
    }
    return await readBytesRecord({ pool: this.#files, ...e }, e.key);
  }

  /** How each tensor is sharded: files (ranks) and chunks, for reports. */
  sharding(entry: DcpTensorEntry): { files: string[]; chunks: number; emptyChunks: number } {
    const files = [...new Set(entry.chunks.map((c) => c.file))];
    const emptyChunks = entry.chunks.filter((c) => c.sizes.some((s) => s === 0)).length;
    return { files, chunks: entry.chunks.length, emptyChunks };
  }

  /** Closes every chunk file; safe to call twice. Later reads fail with `FILE_CLOSED`. */
  async close(): Promise<void> {
    await this.#files.close();
  }

  /** `await using` support. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Options of {@linkcode openDcpStateDict}. */
export interface DcpStateDictOptions extends DcpNameOptions, DcpOpenOptions {}

/**
 * Opens a DCP model checkpoint as a lazy {@linkcode StateDict} (tensors only; bytes values such as
 * an `epoch` counter are left out). The state dict owns the open files: close it when done.
 */
export async function openDcpStateDict(
  dir: string,
  options: DcpStateDictOptions = {},
): Promise<StateDict> {
  return dcpStateDict(await DcpCheckpoint.open(dir, options), options);
}

/**
 * The tensors of an open checkpoint as a lazy {@linkcode StateDict} that owns it (see
 * {@linkcode openDcpStateDict}); the checkpoint is closed when this throws (`DCP_NO_TENSORS`).
 */
export async function dcpStateDict(
  ckpt: DcpCheckpoint,
  options: DcpNameOptions = {},
): Promise<StateDict> {
  try {
    const sd = new StateDict();
    for (const [name, entry] of dcpTensorNames(ckpt.metadata, options)) {
      sd.set(name, ckpt.tensor(entry));
    }
    if (sd.size === 0) {
      throw new CkptError(
        "DCP_NO_TENSORS",
        `Cannot gather "${ckpt.dir}": it holds no tensors${
          options.root ? ` under "${options.root}"` : ""
        }`,
        { file: ckpt.dir },
      );
    }
    sd.own(ckpt);
    return sd;
  } catch (err) {
    await ckpt.close();
    throw err;
  }
}
