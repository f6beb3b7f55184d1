/**
 * The record layer of the DCP reader: `.metadata` records (from the restricted unpickler's records
 * mode) turned into typed {@linkcode DcpMetadata}, and the items of `.distcp` files (each a complete
 * `torch.save` zip at an offset) opened as tensor chunks or decoded as Python values.
 * @module
 */
import { CkptError } from "../errors.ts";
import { type DType, dtypeFromTorch, DTYPES } from "./dtype.ts";
import { rowCount, rowNumel } from "./state_dict.ts";
import { ZipReader } from "./torch/zip.ts";
import type { RandomAccessFile } from "./_io.ts";
import type { ChunkRows, ResolvedChunk } from "./_dcp_assemble.ts";
import type { DcpFilePool } from "./_dcp_files.ts";
import {
  PyDict,
  PyFloat,
  PyGlobal,
  PyRecord,
  PyTuple,
  type PyValue,
  TorchTensor,
} from "./torch/values.ts";
import type {
  DcpBytesEntry,
  DcpChunk,
  DcpEntry,
  DcpMetadata,
  DcpPathItem,
  DcpTensorEntry,
} from "./_dcp_types.ts";
import { unpickle } from "./torch/unpickle.ts";
import { loadTorchSlice } from "./torch/load.ts";
import { itemEncoding, openBlobChunk } from "./_dcp_safetensors.ts";

/** Class names the `.metadata` unpickler turns into records; anything else is refused. */
export const DCP_METADATA_CLASSES: readonly string[] = [
  "torch.distributed.checkpoint.metadata.Metadata",
  "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
  "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
  "torch.distributed.checkpoint.metadata.TensorProperties",
  "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
  "torch.distributed.checkpoint.metadata.MetadataIndex",
  "torch.distributed.checkpoint.metadata.StorageMeta",
  "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
  "torch.distributed.checkpoint.filesystem._StorageInfo",
  "pathlib.PosixPath",
  "pathlib.PurePosixPath",
  "pathlib.WindowsPath",
  "pathlib.PureWindowsPath",
  "pathlib._local.PosixPath",
  "pathlib._local.PurePosixPath",
  "pathlib._local.WindowsPath",
  "pathlib._local.PureWindowsPath",
];

const M = "torch.distributed.checkpoint.metadata.";

function bad(file: string, what: string, key?: string): CkptError {
  return new CkptError(
    "DCP_METADATA",
    `Cannot read DCP metadata "${file}": ${what}`,
    key === undefined ? { file } : { file, tensor: key },
  );
}

function record(v: PyValue | undefined, cls: string, file: string, where: string): PyRecord {
  if (v instanceof PyRecord && v.className === cls) return v;
  const found = v instanceof PyRecord ? v.className : describeShort(v);
  throw bad(file, `${where} should be ${cls}, found ${found}`);
}

function describeShort(v: PyValue | undefined): string {
  if (v === undefined) return "nothing";
  if (v === null) return "None";
  if (v instanceof PyRecord) return v.className;
  if (v instanceof PyDict) return v.kind;
  if (v instanceof PyTuple) return v.kind;
  if (Array.isArray(v)) return "list";
  return typeof v;
}

/** The dict state of a dataclass record (`NEWOBJ` + `BUILD({...})`). */
function fields(rec: PyRecord, file: string): PyDict {
  if (rec.state instanceof PyDict) return rec.state;
  // BUILD with (dict, slots)
  if (rec.state instanceof PyTuple && rec.state.items[0] instanceof PyDict) {
    return rec.state.items[0];
  }
  throw bad(file, `${rec.className} has no field dict`);
}

function ints(v: PyValue | undefined, file: string, where: string): number[] {
  let items: PyValue[] | undefined;
  if (v instanceof PyTuple) items = v.items;
  else if (Array.isArray(v)) items = v;
  else if (v instanceof PyRecord && v.className === "torch.Size") {
    const a = v.args[0];
    if (a instanceof PyTuple) items = a.items;
    else if (Array.isArray(a)) items = a;
    else if (v.args.length === 0) items = [];
  }
  if (!items) throw bad(file, `${where} should be a tuple of ints, found ${describeShort(v)}`);
  return items.map((x) => {
    if (typeof x === "number" && Number.isSafeInteger(x) && x >= 0) return x;
    if (typeof x === "bigint" && x >= 0n && x <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(x);
    throw bad(file, `${where} holds ${String(x)}, not a non-negative int`);
  });
}

function int(v: PyValue | undefined, file: string, where: string): number {
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return v;
  if (typeof v === "bigint" && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  throw bad(file, `${where} should be a non-negative int, found ${describeShort(v)}`);
}

function str(v: PyValue | undefined, file: string, where: string): string {
  if (typeof v === "string") return v;
  throw bad(file, `${where} should be a str, found ${describeShort(v)}`);
}

function dtypeOf(v: PyValue | undefined, file: string, key: string): DType {
  let name: string | undefined;
  if (v instanceof PyGlobal) name = v.qualname;
  else if (v instanceof PyRecord) name = v.className;
  else if (typeof v === "string") name = v;
  if (name === undefined) throw bad(file, `the dtype of "${key}" is ${describeShort(v)}`, key);
  try {
    return dtypeFromTorch(name);
  } catch (cause) {
    throw new CkptError(
      "DCP_DTYPE",
      `Cannot read "${key}" from "${file}": dtype ${name} is not supported`,
      { file, tensor: key, cause },
    );
  }
}

/** `(dtype, layout, requires_grad, memory_format, pin_memory)` or a dict of those fields. */
function properties(v: PyValue | undefined, file: string, key: string): [DType, boolean] {
  const rec = record(v, `${M}TensorProperties`, file, `the properties of "${key}"`);
  const st = rec.state;
  if (st instanceof PyTuple && st.items.length >= 3) {
    return [dtypeOf(st.items[0], file, key), st.items[2] === true];
  }
  if (st instanceof PyDict) {
    return [dtypeOf(st.get("dtype"), file, key), st.get("requires_grad") === true];
  }
  throw bad(file, `the properties of "${key}" are ${describeShort(st)}`, key);
}

function pathItems(v: PyValue | undefined, file: string, key: string): DcpPathItem[] {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : undefined;
  if (!items) throw bad(file, `planner_data of "${key}" is ${describeShort(v)}`, key);
  return items.map((x) => {
    if (typeof x === "string" || (typeof x === "number" && Number.isSafeInteger(x))) return x;
    if (x instanceof PyFloat) return String(x.value);
    return String(x);
  });
}

function storageString(v: PyValue | undefined): string | undefined {
  if (typeof v === "string") return v;
  if (v instanceof PyRecord && v.className.startsWith("pathlib")) {
    const parts = v.args.filter((a): a is string => typeof a === "string");
    if (parts.length > 0) return parts.join("/");
  }
  return undefined;
}

/**
 * Converts the unpickled `Metadata` record into typed {@linkcode DcpMetadata}: entries in
 * `state_dict_metadata` order, each tensor chunk joined to its `storage_data` item by `(fqn, offset)`.
 * `DCP_METADATA` for any structure that is not DCP's, `DCP_CHUNK_MISSING` when a chunk has no item.
 */
export function dcpMetadataFromValue(value: PyValue, file: string): DcpMetadata {
  const meta = record(value, `${M}Metadata`, file, "the top-level object");
  const f = fields(meta, file);
  const sdm = f.get("state_dict_metadata");
  if (!(sdm instanceof PyDict)) throw bad(file, "state_dict_metadata is not a dict");
  const planner = f.get("planner_data");
  const storage = f.get("storage_data");
  if (!(storage instanceof PyDict)) throw bad(file, "storage_data is not a dict");

  // storage_data: MetadataIndex -> _StorageInfo, grouped by fqn then offsets.
  const items = new Map<string, Map<string, { file: string; offset: number; length: number }>>();
  for (const [k, v] of storage.map) {
    const idx = record(k as unknown as PyValue, `${M}MetadataIndex`, file, "a storage_data key");
    const idxf = fields(idx, file);
    const fqn = str(idxf.get("fqn"), file, "MetadataIndex.fqn");
    const offRaw = idxf.get("offset");
    const off = offRaw === undefined || offRaw === null
      ? "bytes"
      : ints(offRaw, file, `the offset of "${fqn}"`).join(",");
    const info = record(
      v,
      "torch.distributed.checkpoint.filesystem._StorageInfo",
      file,
      `the item of "${fqn}"`,
    );
    const inf = fields(info, file);
    const td = inf.get("transform_descriptors");
    if (td !== undefined && td !== null && !(Array.isArray(td) && td.length === 0)) {
      throw new CkptError(
        "DCP_UNSUPPORTED",
        `Cannot read "${fqn}" from "${file}": its item has transform descriptors (compressed or safetensors-format DCP)`,
        { file, tensor: fqn },
      );
    }
    const item = {
      file: str(inf.get("relative_path"), file, `the file of "${fqn}"`),
      offset: int(inf.get("offset"), file, `the offset of "${fqn}"`),
      length: int(inf.get("length"), file, `the length of "${fqn}"`),
    };
    let m = items.get(fqn);
    if (!m) items.set(fqn, m = new Map());
    m.set(off, item);
  }

  const entries: DcpEntry[] = [];
  for (const [k, v] of sdm.map) {
    const key = str(k as PyValue, file, "a state_dict_metadata key");
    const pv = planner instanceof PyDict ? planner.get(key) : undefined;
    const path = pv === undefined ? [key] : pathItems(pv, file, key);
    const its = items.get(key);
    if (v instanceof PyRecord && v.className === `${M}BytesStorageMetadata`) {
      const it = its?.get("bytes") ?? (its && its.size === 1 ? [...its.values()][0] : undefined);
      if (!it) {
        throw new CkptError(
          "DCP_CHUNK_MISSING",
          `Cannot read "${key}": storage_data has no item for it`,
          {
            file,
            tensor: key,
          },
        );
      }
      entries.push({ kind: "bytes", key, path, ...it } satisfies DcpBytesEntry);
      continue;
    }
    const tsm = record(v, `${M}TensorStorageMetadata`, file, `the metadata of "${key}"`);
    const tf = fields(tsm, file);
    const [dtype, requiresGrad] = properties(tf.get("properties"), file, key);
    const shape = ints(tf.get("size"), file, `the size of "${key}"`);
    const rawChunks = tf.get("chunks");
    if (!Array.isArray(rawChunks)) throw bad(file, `the chunks of "${key}" are not a list`, key);
    const chunks: DcpChunk[] = rawChunks.map((c, i) => {
      const cr = record(c, `${M}ChunkStorageMetadata`, file, `chunk ${i} of "${key}"`);
      const cf = fields(cr, file);
      const offsets = ints(cf.get("offsets"), file, `the offsets of chunk ${i} of "${key}"`);
      const sizes = ints(cf.get("sizes"), file, `the sizes of chunk ${i} of "${key}"`);
      const it = its?.get(offsets.join(","));
      if (!it) {
        throw new CkptError(
          "DCP_CHUNK_MISSING",
          `Cannot read "${key}": storage_data has no item for its chunk at (${offsets.join(", ")})`,
          { file, tensor: key },
        );
      }
      return { offsets, sizes, ...it };
    });
    entries.push(
      { kind: "tensor", key, path, dtype, shape, requiresGrad, chunks } satisfies DcpTensorEntry,
    );
  }

  const out: { entries: DcpEntry[]; version?: string; saveId?: string; checkpointId?: string } = {
    entries,
  };
  const version = f.get("version");
  if (typeof version === "string") out.version = version;
  const sm = f.get("storage_meta");
  if (sm instanceof PyRecord && sm.state instanceof PyDict) {
    const saveId = sm.state.get("save_id");
    if (typeof saveId === "string") out.saveId = saveId;
    const cid = storageString(sm.state.get("checkpoint_id"));
    if (cid !== undefined) out.checkpointId = cid;
  }
  return out;
}

/**
 * Decodes a `.metadata` file (a protocol 4/5 pickle) with the restricted unpickler in records mode
 * ({@linkcode DCP_METADATA_CLASSES}); any other class is refused (`DCP_METADATA_CLASS`).
 */
export function decodeDcpMetadata(bytes: Uint8Array, file: string): DcpMetadata {
  let value: PyValue;
  try {
    value = unpickle(bytes, { records: DCP_METADATA_CLASSES, file });
  } catch (cause) {
    const code = (cause as CkptError).code ?? "";
    if (/GLOBAL|CLASS|CALLABLE|REDUCE|BUILD|NEWOBJ/.test(code)) {
      throw new CkptError(
        "DCP_METADATA_CLASS",
        `Cannot read DCP metadata "${file}": ${(cause as Error).message}`,
        { file, cause },
      );
    }
    throw new CkptError(
      "DCP_METADATA",
      `Cannot read DCP metadata "${file}": ${(cause as Error).message}`,
      { file, cause },
    );
  }
  return dcpMetadataFromValue(value, file);
}

/** Where a record lives: the checkpoint's file pool, the file, the byte range. */
export interface RecordPlace {
  /** The checkpoint's files. */
  readonly pool: DcpFilePool;
  /** File, relative to the checkpoint folder. */
  readonly file: string;
  /** Byte offset of the record (a torch.save zip) in the file. */
  readonly offset: number;
  /** Byte length of the record. */
  readonly length: number;
}

async function loadRecord(file: RandomAccessFile, at: RecordPlace, key: string): Promise<PyValue> {
  try {
    return await loadTorchSlice(file, at.offset, at.length);
  } catch (cause) {
    throw new CkptError(
      "DCP_RECORD",
      `Cannot read "${key}": the record at offset ${at.offset} (${at.length} bytes) of "${file.path}" cannot be decoded: ${
        (cause as Error).message
      }`,
      { file: file.path, tensor: key, offset: at.offset, cause },
    );
  }
}

/** Where a tensor chunk's record lives, and the chunk's offsets in the full tensor. */
export interface ChunkPlace extends RecordPlace {
  /** The chunk's offsets in the full tensor (checked against a safetensors blob's record). */
  readonly offsets: readonly number[];
}

/**
 * Opens the record of a tensor chunk and returns its dtype, shape and a row reader that reopens
 * the file through the pool on every read. The record is a `torch.save` zip of one tensor (torch's
 * default), or the chunk's entry in the file's safetensors blob (`SerializationFormat.SAFETENSORS`,
 * `HuggingFaceStorageWriter`; see `_dcp_safetensors.ts`). `DCP_RECORD` when it is neither, or not a
 * single tensor.
 */
export async function openChunkRecord(place: ChunkPlace, key: string): Promise<ResolvedChunk> {
  const { pool } = place;
  const encoding = await pool.use(place.file, (file) => itemEncoding(file, place.offset));
  if (encoding === "safetensors") return await openBlobChunk(place, key);
  return await pool.use(place.file, async (file) => {
    const value = await loadRecord(file, place, key);
    if (!(value instanceof TorchTensor)) {
      throw new CkptError(
        "DCP_RECORD",
        `Cannot read "${key}": the record at offset ${place.offset} of "${file.path}" holds ${
          describeShort(value)
        }, not a tensor`,
        { file: file.path, tensor: key, offset: place.offset },
      );
    }
    const direct = await directStart(file, place, value);
    const rows: ChunkRows = direct
      ? {
        // Contiguous (what DCP writes: it clones views): positional reads straight into `into`.
        readRows: (a, b, into) =>
          pool.use(
            place.file,
            (f) => f.readAt(direct.start + a * direct.rowBytes, (b - a) * direct.rowBytes, into),
          ),
      }
      : {
        // Any other view: the record is parsed again and read through its strides.
        readRows: (a, b, into) =>
          pool.use(place.file, async (f) => {
            const t = (await loadRecord(f, place, key)) as TorchTensor;
            const bytes = await t.read(a, b);
            if (!into) return bytes;
            into.set(bytes);
            return into;
          }),
      };
    return { dtype: value.dtype, shape: [...value.shape], rows };
  });
}

/**
 * The absolute byte offset of row 0 of a contiguous record tensor, and its row size; undefined for
 * any other layout.
 */
async function directStart(
  file: RandomAccessFile,
  place: RecordPlace,
  t: TorchTensor,
): Promise<{ start: number; rowBytes: number } | undefined> {
  if (!t.isContiguous || t.storage.key === undefined) return undefined;
  const zip = await ZipReader.open(file, { base: place.offset, length: place.length });
  const first = zip.entries[0]?.name ?? "";
  const prefix = first.slice(0, first.indexOf("/"));
  const entry = zip.get(`${prefix}/data/${t.storage.key}`);
  if (!entry) return undefined;
  const item = DTYPES[t.dtype].size;
  const rowBytes = rowNumel(t.shape) * item;
  const start = place.offset + entry.dataOffset + t.storageOffset * item;
  const end = start + rowCount(t.shape) * rowBytes;
  if (end > place.offset + entry.dataOffset + entry.size) return undefined; // (the view check forbids it)
  return { start, rowBytes };
}

/** Decodes a bytes item (a `torch.save`d Python value) with the restricted unpickler. */
export function readBytesRecord(place: RecordPlace, key: string): Promise<PyValue> {
  return place.pool.use(place.file, (file) => loadRecord(file, place, key));
}
