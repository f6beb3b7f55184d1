/**
 * Private: DCP tensor items stored as safetensors, the layout torch 2.7+ writes with
 * `FileSystemWriter(serialization_format=SerializationFormat.SAFETENSORS)` and with
 * `HuggingFaceStorageWriter`. Each file holds its bytes items (torch.save zips) first, then ONE
 * safetensors blob with all the file's tensor chunks; every tensor item's `_StorageInfo.offset` is
 * the blob's start (its `length` is the chunk's raw size), and the blob header's `__metadata__`
 * key `DCP_SHARDING_INFO` (a JSON string) gives each tensor's `saved_offsets` in the full tensor.
 * The blob runs to the end of the file. Public API in `dcp.ts`.
 * @module
 */
import { CkptError } from "../errors.ts";
import { DTYPES } from "./dtype.ts";
import type { RandomAccessFile } from "./_io.ts";
import {
  checkHeaderLength,
  parseHeader,
  type SafetensorsHeader,
  startsLikeSafetensors,
} from "./_safetensors_header.ts";
import { rowNumel } from "./state_dict.ts";
import type { ChunkRows, ResolvedChunk } from "./_dcp_assemble.ts";
import type { DcpFilePool } from "./_dcp_files.ts";

/** The `__metadata__` key holding the chunk offsets (torch's `CUSTOM_METADATA_KEY`). */
export const DCP_SHARDING_INFO_KEY = "DCP_SHARDING_INFO";

/** A safetensors blob inside a DCP file: its start, its header, the chunk offsets it records. */
export interface DcpBlob {
  /** Byte offset of the blob (its 8-byte header length) in the file. */
  readonly base: number;
  /** The blob's header; `dataStart` is relative to {@linkcode DcpBlob.base}. */
  readonly header: SafetensorsHeader;
  /** `saved_offsets` per tensor name, from `DCP_SHARDING_INFO` (undefined when absent). */
  readonly savedOffsets: ReadonlyMap<string, readonly number[]> | undefined;
}

/** How an item's bytes start: a torch.save zip, a safetensors blob, or neither. */
export type ItemEncoding = "zip" | "safetensors" | "unknown";

/** Looks at the bytes at `offset` of `file` (the first 9 are enough). */
export async function itemEncoding(file: RandomAccessFile, offset: number): Promise<ItemEncoding> {
  const head = await file.readAt(offset, Math.max(0, Math.min(9, file.size - offset)));
  if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 3 && head[3] === 4) {
    return "zip";
  }
  return startsLikeSafetensors(head, file.size - offset) ? "safetensors" : "unknown";
}

/** The name messages use for the blob at `base` of `path`. */
export function blobLabel(path: string, base: number): string {
  return base === 0 ? path : `${path} (the safetensors data at offset ${base})`;
}

function shardingInfo(
  header: SafetensorsHeader,
  label: string,
): Map<string, readonly number[]> | undefined {
  const raw = header.metadata?.[DCP_SHARDING_INFO_KEY];
  if (raw === undefined) return undefined;
  const bad = (what: string) =>
    new CkptError(
      "DCP_METADATA",
      `Cannot read DCP sharding info of "${label}": ${what}`,
      { file: label },
    );
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (err) {
    throw bad(`${DCP_SHARDING_INFO_KEY} is not JSON (${(err as Error).message})`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw bad(`${DCP_SHARDING_INFO_KEY} is not an object`);
  }
  const out = new Map<string, readonly number[]>();
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    const offs = (v as { saved_offsets?: unknown } | null)?.saved_offsets;
    if (
      !Array.isArray(offs) || !offs.every((x) => Number.isSafeInteger(x) && (x as number) >= 0)
    ) {
      throw bad(`the saved_offsets of "${name}" are not a list of non-negative ints`);
    }
    out.set(name, offs as number[]);
  }
  return out;
}

/**
 * Reads and validates the safetensors blob starting at `base` of `file` (it must run exactly to the
 * end of the file, as torch writes it). Safetensors codes for a broken header, `DCP_METADATA` for a
 * broken `DCP_SHARDING_INFO`.
 */
export async function readDcpBlob(file: RandomAccessFile, base: number): Promise<DcpBlob> {
  const label = blobLabel(file.path, base);
  const size = file.size - base;
  const first8 = await file.readAt(base, Math.max(0, Math.min(8, size)));
  const n = checkHeaderLength(label, size, first8);
  const header = parseHeader(label, size, await file.readAt(base + 8, n));
  return { base, header, savedOffsets: shardingInfo(header, label) };
}

const blobs = new WeakMap<DcpFilePool, Map<string, Promise<DcpBlob>>>();

/** The blob at `base` of pool file `rel`, parsed once per pool. */
export function poolBlob(pool: DcpFilePool, rel: string, base: number): Promise<DcpBlob> {
  let perPool = blobs.get(pool);
  if (!perPool) blobs.set(pool, perPool = new Map());
  const id = `${base}:${rel}`;
  let p = perPool.get(id);
  if (!p) {
    p = pool.use(rel, (f) => readDcpBlob(f, base));
    perPool.set(id, p);
  }
  return p;
}

/** Where a chunk lives in a blob-encoded file. */
export interface BlobChunkPlace {
  /** The checkpoint's files. */
  readonly pool: DcpFilePool;
  /** File, relative to the checkpoint folder. */
  readonly file: string;
  /** The item's offset: the blob's start. */
  readonly offset: number;
  /** The item's length: the chunk's raw byte size. */
  readonly length: number;
  /** The chunk's offsets in the full tensor. */
  readonly offsets: readonly number[];
}

/**
 * The chunk of tensor `key` held in the safetensors blob at `place`: its dtype and shape as the
 * blob records them and a row reader (positional reads). `DCP_RECORD` when the blob holds no such
 * tensor, `DCP_RECORD_MISMATCH` when the blob's `saved_offsets` or the tensor's byte size disagree
 * with the metadata's chunk.
 */
export async function openBlobChunk(place: BlobChunkPlace, key: string): Promise<ResolvedChunk> {
  const { pool } = place;
  const path = pool.path(place.file);
  let blob: DcpBlob;
  try {
    blob = await poolBlob(pool, place.file, place.offset);
  } catch (cause) {
    if (!(cause instanceof CkptError) || !cause.code.startsWith("SAFETENSORS_")) throw cause;
    throw new CkptError(
      "DCP_RECORD",
      `Cannot read "${key}": the safetensors data at offset ${place.offset} of "${path}" cannot be decoded: ${cause.message}`,
      { file: path, tensor: key, offset: place.offset, cause },
    );
  }
  const label = blobLabel(path, place.offset);
  const t = blob.header.tensors.find((x) => x.name === key);
  if (!t) {
    throw new CkptError(
      "DCP_RECORD",
      `Cannot read "${key}": the safetensors data at offset ${place.offset} of "${path}" holds no tensor of that name`,
      { file: path, tensor: key, offset: place.offset },
    );
  }
  const saved = blob.savedOffsets?.get(key) ?? place.offsets.map(() => 0);
  const bytes = t.dataOffsets[1] - t.dataOffsets[0];
  if (
    saved.length !== place.offsets.length || saved.some((o, i) => o !== place.offsets[i]) ||
    bytes !== place.length
  ) {
    throw new CkptError(
      "DCP_RECORD_MISMATCH",
      `Cannot read "${key}": "${label}" holds it at (${
        saved.join(", ")
      }) in ${bytes} bytes, the metadata says (${
        place.offsets.join(", ")
      }) in ${place.length} bytes`,
      { file: path, tensor: key, offset: place.offset },
    );
  }
  const rowBytes = rowNumel(t.shape) * DTYPES[t.dtype].size;
  const start = place.offset + blob.header.dataStart + t.dataOffsets[0];
  const rows: ChunkRows = {
    readRows: (a, b, into) =>
      pool.use(place.file, (f) => f.readAt(start + a * rowBytes, (b - a) * rowBytes, into)),
  };
  return { dtype: t.dtype, shape: [...t.shape], rows };
}
