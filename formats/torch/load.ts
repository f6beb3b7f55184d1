/**
 * `torch.load` for ckpt: opens a torch.save zip archive and returns its value tree with lazy
 * tensors that read their storage records by byte range. Nothing runs: `data.pkl` goes through
 * the restricted machine of {@linkcode ./unpickle.ts}.
 *
 * Error codes: those of {@linkcode ./zip.ts} and {@linkcode ./unpickle.ts}, plus `TORCH_LEGACY`,
 * `TORCH_TORCHSCRIPT`, `TORCH_NOT_TORCH` (see {@linkcode ./legacy.ts}), `TORCH_ARCHIVE` (no prefix
 * folder or no `data.pkl`), `TORCH_VERSION` (missing or outside 1..10), `TORCH_BYTEORDER`,
 * `TORCH_STORAGE_MISSING` (a persistent id names a record that is not there), `TORCH_STORAGE_SIZE`,
 * `TORCH_STRIDE`, `TORCH_LIMIT` (`data.pkl` too large).
 *
 * @example Saving and loading a value
 * ```ts
 * import { loadTorch } from "./load.ts";
 * import { saveTorch } from "./save.ts";
 * import { pyDict, tensorOfBytes, TorchTensor } from "./values.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".pt" });
 * const w = tensorOfBytes("F32", [2], new Uint8Array(new Float32Array([1, 2]).buffer));
 * await saveTorch(path, pyDict([["w", w], ["step", 3]]));
 * await using f = await loadTorch(path);
 * const t = f.dict().get("w") as TorchTensor;
 * assert.deepEqual([...new Float32Array((await t.read()).slice().buffer)], [1, 2]);
 * assert.equal(f.dict().get("step"), 3);
 * await Deno.remove(path);
 * ```
 * @module
 */
import { CkptError } from "../../errors.ts";
import { RandomAccessFile } from "../_io.ts";
import { detectTorchFormat, refuseTorchFormat } from "./legacy.ts";
import { storageClassDType, StorageHandle, unpickle, type UnpickleOptions } from "./unpickle.ts";
import {
  PyDict,
  PyGlobal,
  PyTuple,
  pyTypeName,
  type PyValue,
  type StorageSource,
} from "./values.ts";
import { type PositionalFile, type ZipEntry, ZipReader } from "./zip.ts";

export type { PositionalFile } from "./zip.ts";

/** Options of {@linkcode loadTorch}. */
export interface LoadTorchOptions {
  /** Records mode classes passed to {@linkcode unpickle} (DCP bytes items). Default none. */
  records?: UnpickleOptions["records"];
  /** Largest `data.pkl` accepted, in bytes. Default 1 GiB. */
  maxPickleBytes?: number;
}

/** Options of {@linkcode loadTorchFrom}. */
export interface LoadTorchFromOptions extends LoadTorchOptions {
  /** Start of the archive in the file. Default 0. */
  base?: number;
  /** Archive length. Default: to the end of the file. */
  length?: number;
}

/** A loaded torch file: the value tree and the open file behind its tensors. */
export interface TorchFile extends AsyncDisposable {
  /** The unpickled value; its tensors read from the file until {@linkcode TorchFile.close}. */
  readonly value: PyValue;
  /** Archive folder name, from the file itself (`"archive"`, `"pytorch_model"`). */
  readonly prefix: string;
  /** Record names in the archive, without the prefix. */
  readonly records: readonly string[];
  /** Path of the file. */
  readonly path: string;
  /** `value` as a {@linkcode PyDict}, or `TORCH_NOT_DICT` when the top level is something else. */
  dict(): PyDict;
  /** Closes the file (tensors can no longer be read); safe to call twice. */
  close(): Promise<void>;
}

/** Opens a torch.save file and unpickles it with lazy tensors. Call `close()` (or `await using`). */
export async function loadTorch(path: string, options: LoadTorchOptions = {}): Promise<TorchFile> {
  const file = await RandomAccessFile.open(path);
  try {
    const loaded = await loadTorchFrom(file, options);
    return { ...loaded, close: () => file.close(), [Symbol.asyncDispose]: () => file.close() };
  } catch (e) {
    await file.close();
    throw e;
  }
}

/** The records of a torch.save zip, by name without the archive folder. */
type Records = Map<string, ZipEntry>;

/** Opens the zip at `[base, base + length)` and indexes its records under the archive folder. */
async function openArchive(
  file: PositionalFile,
  base: number,
  length: number,
): Promise<{ zip: ZipReader; prefix: string; records: Records }> {
  const path = file.path;
  const head = await file.readAt(base, Math.min(length, 512));
  const kind = detectTorchFormat(head);
  if (kind !== "zip") refuseTorchFormat(kind, path);
  const zip = await ZipReader.open(file, { base, length });
  const first = zip.entries[0];
  const slash = first ? first.name.indexOf("/") : -1;
  if (!first || slash <= 0) {
    throw new CkptError(
      "TORCH_ARCHIVE",
      `Cannot read "${path}": ${
        first ? `first record "${first.name}" is not in a folder` : "the archive is empty"
      }`,
      { file: path },
    );
  }
  const prefix = first.name.slice(0, slash);
  const records: Records = new Map();
  for (const e of zip.entries) {
    if (e.name.startsWith(`${prefix}/`)) records.set(e.name.slice(prefix.length + 1), e);
  }
  return { zip, prefix, records };
}

/** A small text record (`version`, `byteorder`), undefined when absent. */
async function textRecord(
  zip: ZipReader,
  records: Records,
  name: string,
  path: string,
): Promise<string | undefined> {
  const e = records.get(name);
  if (!e) return undefined;
  if (e.size > 4096) {
    throw new CkptError(
      "TORCH_ARCHIVE",
      `Cannot read "${path}": record "${name}" is ${e.size} bytes`,
      { file: path },
    );
  }
  return new TextDecoder().decode(await zip.read(e));
}

/** Refuses TorchScript archives, versions outside 1..10 and big-endian data. */
async function checkArchive(zip: ZipReader, records: Records, path: string): Promise<void> {
  if (records.has("constants.pkl") || [...records.keys()].some((k) => k.startsWith("code/"))) {
    throw new CkptError(
      "TORCH_TORCHSCRIPT",
      `Cannot read "${path}": it is a TorchScript archive (torch.jit.save), not a torch.save file`,
      { file: path },
    );
  }
  const version = (await textRecord(zip, records, ".data/version", path)) ??
    (await textRecord(zip, records, "version", path));
  if (version === undefined) {
    throw new CkptError("TORCH_VERSION", `Cannot read "${path}": it has no "version" record`, {
      file: path,
    });
  }
  const v = Number.parseInt(version.trim(), 10);
  if (!/^\s*\d+\s*$/.test(version) || v < 1 || v > 10) {
    throw new CkptError(
      "TORCH_VERSION",
      `Cannot read "${path}": version ${
        JSON.stringify(version.trim())
      } is outside the supported 1..10`,
      { file: path },
    );
  }
  const order = await textRecord(zip, records, "byteorder", path);
  if (order !== undefined && order !== "little") {
    throw new CkptError(
      "TORCH_BYTEORDER",
      `Cannot read "${path}": byte order ${JSON.stringify(order)} is not supported (only "little")`,
      { file: path },
    );
  }
}

/** The bytes of `data.pkl`, at most `maxPickle` of them. */
async function readDataPickle(
  zip: ZipReader,
  records: Records,
  maxPickle: number,
  path: string,
): Promise<Uint8Array> {
  const pkl = records.get("data.pkl");
  if (!pkl) {
    throw new CkptError("TORCH_ARCHIVE", `Cannot read "${path}": it has no data.pkl record`, {
      file: path,
    });
  }
  if (pkl.size > maxPickle) {
    throw new CkptError(
      "TORCH_LIMIT",
      `Cannot read "${path}": data.pkl is ${pkl.size} bytes (limit ${maxPickle})`,
      { file: path },
    );
  }
  return await zip.read(pkl);
}

/** The fields of a persistent id `('storage', class, key, location, numel)`, checked. */
function storageId(
  pid: PyValue,
  path: string,
): { cls: PyGlobal; key: string; location: string; n: number } {
  const items = pid instanceof PyTuple ? pid.items : undefined;
  if (!items || items[0] !== "storage" || items.length < 5) {
    throw new CkptError(
      "PICKLE_PERSID",
      `Cannot load persistent id: expected ('storage', class, key, location, numel), got a ${
        pyTypeName(pid)
      }`,
      { file: path },
    );
  }
  const [, cls, key, location, n] = items;
  if (
    !(cls instanceof PyGlobal) || typeof key !== "string" || typeof location !== "string" ||
    typeof n !== "number" || !Number.isSafeInteger(n) || n < 0
  ) {
    throw new CkptError(
      "PICKLE_PERSID",
      `Cannot load persistent id: its fields have the wrong types`,
      { file: path },
    );
  }
  return { cls, key, location, n };
}

/** The unpickler's `persistentLoad`: one {@linkcode StorageHandle} per `data/<key>` record. */
function storageLoader(
  zip: ZipReader,
  records: Records,
  path: string,
): (pid: PyValue) => StorageHandle {
  const handles = new Map<string, StorageHandle>();
  return (pid) => {
    const { cls, key, location, n } = storageId(pid, path);
    const known = handles.get(key);
    if (known) {
      if (known.storageClass !== cls.qualname) {
        throw new CkptError(
          "PICKLE_PERSID",
          `Cannot load storage "${key}": used as ${known.storageClass} and ${cls.qualname}`,
          { file: path },
        );
      }
      return known;
    }
    const dtype = storageClassDType(cls.qualname);
    const entry = records.get(`data/${key}`);
    if (!entry) {
      throw new CkptError(
        "TORCH_STORAGE_MISSING",
        `Cannot load storage "${key}": record "data/${key}" is not in the archive`,
        { file: path },
      );
    }
    const source: StorageSource = {
      byteLength: entry.size,
      read: (s: number, e: number) => zip.read(entry, s, e),
      readInto: (s: number, e: number, into: Uint8Array) => zip.read(entry, s, e, into),
      independentReads: true,
    };
    const h = new StorageHandle({
      key,
      storageClass: cls.qualname,
      location,
      numel: n,
      dtype,
      source,
      file: path,
    });
    handles.set(key, h);
    return h;
  };
}

/**
 * Loads the torch.save archive at `[base, base + length)` of an already open file (a DCP
 * `.distcp` item). The file stays open; the returned `close()` does nothing.
 */
export async function loadTorchFrom(
  file: PositionalFile,
  options: LoadTorchFromOptions = {},
): Promise<TorchFile> {
  const path = file.path;
  const base = options.base ?? 0;
  const { zip, prefix, records } = await openArchive(
    file,
    base,
    options.length ?? file.size - base,
  );
  await checkArchive(zip, records, path);
  const pickle = await readDataPickle(zip, records, options.maxPickleBytes ?? 1 << 30, path);
  const value = unpickle(pickle, {
    file: path,
    persistentLoad: storageLoader(zip, records, path),
    ...(options.records === undefined ? {} : { records: options.records }),
  });
  return {
    value,
    prefix,
    records: [...records.keys()],
    path,
    dict(): PyDict {
      if (!(value instanceof PyDict)) {
        throw new CkptError(
          "TORCH_NOT_DICT",
          `Cannot read "${path}" as a dict: its top level is a ${pyTypeName(value)}`,
          { file: path },
        );
      }
      return value;
    },
    close: () => Promise.resolve(),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

/**
 * The value of the torch.save archive at `[offset, offset + length)` of an open file (a DCP
 * `.distcp` item): {@linkcode loadTorchFrom} for callers that only want the value. Tensors read
 * from `file` until the caller closes it.
 */
export async function loadTorchSlice(
  file: PositionalFile,
  offset: number,
  length: number,
  options: LoadTorchOptions = {},
): Promise<PyValue> {
  return (await loadTorchFrom(file, { ...options, base: offset, length })).value;
}
