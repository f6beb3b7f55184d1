/**
 * Private: safetensors shard folders as `save_pretrained` writes them (planning, writing, the index
 * JSON) and as ckpt reads them (`model.safetensors.index.json` cross-checked against every shard
 * header). Public API in `safetensors.ts`.
 * @module
 */
import { dirname, isAbsolute, join, normalize, sep } from "node:path";
import { CkptError } from "../errors.ts";
import { osError } from "../errors/os.ts";
import { RandomAccessFile } from "./_io.ts";
import { readTextInput } from "./read_text.ts";
import { DTYPES } from "./dtype.ts";
import type { SafetensorsHeader } from "./_safetensors_header.ts";
import { fileTensor, openSafetensors, readHeaderFrom } from "./_safetensors_read.ts";
import {
  checkMetadata,
  DEFAULT_SAFETENSORS_METADATA,
  planFor,
  randomSuffix,
  writePlanned,
} from "./_safetensors_write.ts";
import { planShards, shardFileName, shardIndexJson } from "./shards.ts";
import { StateDict } from "./state_dict.ts";

/** One file of a {@linkcode SafetensorsShardPlan}. */
export interface SafetensorsShardFile {
  /** File name inside the output folder. */
  file: string;
  /** Tensor names in state-dict order. */
  tensors: string[];
  /** Bytes of tensor data in the file. */
  dataBytes: number;
  /** Size of the file (header included). */
  fileBytes: number;
}

/** The result of {@linkcode planSafetensorsShards}. */
export interface SafetensorsShardPlan {
  /** Files in order. */
  files: SafetensorsShardFile[];
  /** Sum of tensor bytes over all files (`metadata.total_size`). */
  totalSize: number;
  /** The index object when there is more than one file. */
  index?: Record<string, unknown>;
  /** The index file's exact text when there is more than one file. */
  indexText?: string;
  /** Name of the index file (`<prefix>.safetensors.index.json`). */
  indexFile: string;
}

/** Options of {@linkcode planSafetensorsShards}. */
export interface PlanSafetensorsShardsOptions {
  /** File prefix. Default `"model"`. */
  prefix?: string;
  /** `__metadata__` of each shard. Default `{"format": "pt"}`. */
  metadata?: Record<string, string>;
  /** Extra keys of the index's `metadata` (e.g. `{ total_parameters: 123 }`). */
  indexMetadata?: Record<string, unknown>;
}

/**
 * Plans sharded output without writing anything (`--dry-run`): huggingface_hub's split rule over
 * the state dict's order ({@linkcode planShards}), file names as `save_pretrained` gives them
 * (`model.safetensors` alone, else `model-00001-of-0000N.safetensors`), each file's exact size,
 * and the index JSON.
 *
 * @example
 * ```ts
 * import { planSafetensorsShards } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const sd = new StateDict([
 *   ["a", tensorFromBytes("U8", [6], new Uint8Array(6))],
 *   ["b", tensorFromBytes("U8", [6], new Uint8Array(6))],
 * ]);
 * const plan = planSafetensorsShards(sd, 10);
 * assert.deepEqual(plan.files.map((f) => f.file), [
 *   "model-00001-of-00002.safetensors",
 *   "model-00002-of-00002.safetensors",
 * ]);
 * assert.deepEqual(plan.index?.weight_map, { a: "model-00001-of-00002.safetensors", b: "model-00002-of-00002.safetensors" });
 * ```
 */
export function planSafetensorsShards(
  sd: StateDict,
  maxShardSize: number,
  options: PlanSafetensorsShardsOptions = {},
): SafetensorsShardPlan {
  const prefix = options.prefix ?? "model";
  const metadata = options.metadata ?? { ...DEFAULT_SAFETENSORS_METADATA };
  checkMetadata(metadata);
  const entries = [];
  for (const [name, t] of sd) {
    let bytes = DTYPES[t.dtype].size;
    for (const d of t.shape) bytes *= d;
    entries.push({ name, bytes });
  }
  const shardPlan = planShards(entries, maxShardSize);
  const count = shardPlan.shards.length;
  const names = shardPlan.shards.map((_, i) => shardFileName(prefix, ".safetensors", i, count));
  const files = shardPlan.shards.map((s, i) => {
    const p = planFor(sd, s.names, metadata);
    return { file: names[i]!, tensors: s.names, dataBytes: p.dataBytes, fileBytes: p.fileBytes };
  });
  const result: SafetensorsShardPlan = {
    files,
    totalSize: shardPlan.totalSize,
    indexFile: `${prefix}.safetensors.index.json`,
  };
  if (count > 1) {
    const { index, text } = shardIndexJson(shardPlan, names, options.indexMetadata);
    result.index = index;
    result.indexText = text;
  }
  return result;
}

/** Options of {@linkcode writeSafetensorsSharded}. */
export interface WriteSafetensorsShardedOptions extends PlanSafetensorsShardsOptions {
  /** Largest shard in bytes (see `parseSize` for "5GB"); a bigger tensor gets a shard alone. */
  maxShardSize: number;
  /** Aborts between blocks; the file being written is removed. */
  signal?: AbortSignal;
  /** Background `fdatasync` of each file after every this many bytes (see `writeSafetensors`). */
  syncEvery?: number;
  /** Called after each block with bytes written so far over all files and the total. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /**
   * Called with every byte written, in file order, for each file written (`path` is the file's
   * final path, not its temporary name): the header, then each data block, right after it is
   * written. The writer reuses its buffers: copy the bytes before returning if they are kept. A
   * returned promise is awaited before the writer goes on (backpressure). Not called for the
   * index JSON.
   */
  onBytes?: (path: string, bytes: Uint8Array) => void | Promise<void>;
  /**
   * After a successful write, delete files of an earlier save that this one did not produce, as
   * `save_pretrained` does: `<prefix>-NNNNN-of-NNNNN.safetensors` names not in the new set, and a
   * stale `<prefix>.safetensors.index.json` when the new save is a single file. Default `true`.
   */
  removeStale?: boolean;
  /**
   * Write only the shard files of these names (one part of a split export); the others, the
   * index and the stale-file removal are left to the other parts and the finish. Default: all.
   */
  only?: ReadonlySet<string>;
}

/** Result of {@linkcode writeSafetensorsSharded}. */
export interface WriteSafetensorsShardedResult {
  /** Paths written (shards, then the index when there is one). */
  files: string[];
  /** The index object, when more than one shard was written. */
  index?: Record<string, unknown>;
}

/**
 * Writes `sd` into folder `dir` as `save_pretrained` does: one `model.safetensors` when everything
 * fits in `maxShardSize`, else `model-0000i-of-0000N.safetensors` shards plus
 * `model.safetensors.index.json` (`{"metadata": {"total_size": ...}, "weight_map": {...}}`, sorted
 * keys, two-space indent, final newline). Each file appears under its name only when complete; the
 * index is written last; then files of an earlier save this one replaces are removed (see
 * {@linkcode WriteSafetensorsShardedOptions.removeStale}). The folder must exist.
 *
 * @example
 * ```ts
 * import { openHfShards, writeSafetensorsSharded } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const sd = new StateDict([
 *   ["a", tensorFromBytes("U8", [6], new Uint8Array(6).fill(1))],
 *   ["b", tensorFromBytes("U8", [6], new Uint8Array(6).fill(2))],
 * ]);
 * const { files } = await writeSafetensorsSharded(dir, sd, { maxShardSize: 10 });
 * assert.equal(files.length, 3);
 * await using back = await openHfShards(dir);
 * assert.deepEqual([...(await back.require("b").read())], [2, 2, 2, 2, 2, 2]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function writeSafetensorsSharded(
  dir: string,
  sd: StateDict,
  options: WriteSafetensorsShardedOptions,
): Promise<WriteSafetensorsShardedResult> {
  const plan = planSafetensorsShards(sd, options.maxShardSize, options);
  const prefix = options.prefix ?? "model";
  const metadata = options.metadata ?? { ...DEFAULT_SAFETENSORS_METADATA };
  const only = options.only;
  const chosen = only ? plan.files.filter((f) => only.has(f.file)) : plan.files;
  const total = chosen.reduce((n, f) => n + f.fileBytes, 0);
  let done = 0;
  const onProgress = options.onProgress;
  const written: string[] = [];
  for (const f of chosen) {
    const path = join(dir, f.file);
    const p = planFor(sd, f.tensors, metadata);
    await writePlanned(
      path,
      sd,
      p,
      options.signal,
      onProgress && ((n) => onProgress(done += n, total)),
      options.onBytes,
      options.syncEvery,
    );
    written.push(path);
  }
  const result: WriteSafetensorsShardedResult = { files: written };
  if (only) return result;
  if (plan.index && plan.indexText !== undefined) {
    const path = join(dir, plan.indexFile);
    const tmp = `${path}.tmp-${randomSuffix()}`;
    try {
      await Deno.writeTextFile(tmp, plan.indexText, { createNew: true });
      await Deno.rename(tmp, path);
    } catch (cause) {
      await Deno.remove(tmp).catch(() => {});
      throw osError(cause, "write", path, { code: "FILE_WRITE" });
    }
    written.push(path);
    result.index = plan.index;
  }
  if (options.removeStale ?? true) {
    const keep = new Set(plan.files.map((f) => f.file));
    const escaped = prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const shardName = new RegExp(`^${escaped}-\\d{5}-of-\\d{5}\\.safetensors$`);
    const stale: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      if (!e.isFile || keep.has(e.name)) continue;
      if (shardName.test(e.name) || (!plan.index && e.name === plan.indexFile)) stale.push(e.name);
    }
    for (const name of stale) await Deno.remove(join(dir, name));
  }
  return result;
}

/** Name of the index file of a safetensors shard folder. */
export const SAFETENSORS_INDEX_NAME = "model.safetensors.index.json";

/** Largest index file read (the index of a 400B-parameter model is a few MB). */
const MAX_INDEX_BYTES = 256 * 2 ** 20;

/** A parsed shard index. */
export interface HfShardIndex {
  /** Path of the index file. */
  path: string;
  /** The `metadata` object (may be empty). */
  metadata: Record<string, unknown>;
  /** `tensor name -> shard file name`, in the file's order. */
  weightMap: Record<string, string>;
}

/**
 * Reads a shard index JSON (`model.safetensors.index.json`, or `pytorch_model.bin.index.json`):
 * `{"metadata": {...}, "weight_map": {name: file}}`. Shard names must be plain relative paths
 * inside the index's folder. `HF_INDEX` for anything else.
 */
export async function readHfShardIndex(path: string): Promise<HfShardIndex> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (cause) {
    throw new CkptError("FILE_OPEN", `Cannot open "${path}": ${(cause as Error).message}`, {
      file: path,
      cause,
    });
  }
  if (stat.size > MAX_INDEX_BYTES) {
    throw new CkptError(
      "HF_INDEX",
      `Cannot read shard index "${path}": ${stat.size} bytes is larger than ${MAX_INDEX_BYTES}`,
      { file: path },
    );
  }
  const text = await readTextInput(path, { code: "HF_INDEX", what: "shard index" });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new CkptError(
      "HF_INDEX",
      `Cannot read shard index "${path}": ${(cause as Error).message}`,
      {
        file: path,
        cause,
      },
    );
  }
  const obj = json as Record<string, unknown> | null;
  const wm = obj?.weight_map;
  if (
    obj === null || typeof obj !== "object" || Array.isArray(obj) || !wm ||
    typeof wm !== "object" || Array.isArray(wm)
  ) {
    throw new CkptError(
      "HF_INDEX",
      `Cannot read shard index "${path}": expected {"metadata": {...}, "weight_map": {...}}`,
      { file: path },
    );
  }
  const weightMap: Record<string, string> = {};
  for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
    if (
      typeof file !== "string" || file === "" || isAbsolute(file) ||
      normalize(file).split(sep).includes("..")
    ) {
      throw new CkptError(
        "HF_INDEX",
        `Cannot read shard index "${path}": tensor "${name}" maps to ${
          JSON.stringify(file)
        }, not a file in the index's folder`,
        { file: path, tensor: name },
      );
    }
    weightMap[name] = file;
  }
  const md = obj.metadata;
  const metadata = md && typeof md === "object" && !Array.isArray(md)
    ? md as Record<string, unknown>
    : {};
  return { path, metadata, weightMap };
}

/**
 * Opens a Hugging Face safetensors shard folder (or its index file) as one lazy state dict. The
 * index is cross-checked against every shard header: each `weight_map` entry must exist in the
 * shard it names (`HF_INDEX_MISSING`), no tensor may be in two shards (`HF_INDEX_DUPLICATE`), and
 * every shard tensor must be listed (`HF_INDEX_UNLISTED`). Tensors come in shard order (shard files
 * sorted by name), then data order. A folder with `model.safetensors` and no index opens that file.
 * `metadata` is the first shard's `__metadata__`. The state dict owns every shard file.
 *
 * @example
 * ```ts
 * import { openHfShards, writeSafetensorsSharded } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const sd = new StateDict([
 *   ["x", tensorFromBytes("U8", [4], new Uint8Array(4))],
 *   ["y", tensorFromBytes("U8", [4], new Uint8Array(4))],
 * ]);
 * await writeSafetensorsSharded(dir, sd, { maxShardSize: 4 });
 * await using back = await openHfShards(`${dir}/model.safetensors.index.json`);
 * assert.deepEqual([...back.keys()], ["x", "y"]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function openHfShards(indexPathOrFolder: string): Promise<StateDict> {
  let indexPath = indexPathOrFolder;
  let isDir = false;
  try {
    isDir = (await Deno.stat(indexPathOrFolder)).isDirectory;
  } catch (cause) {
    throw new CkptError(
      "FILE_OPEN",
      `Cannot open "${indexPathOrFolder}": ${(cause as Error).message}`,
      { file: indexPathOrFolder, cause },
    );
  }
  if (isDir) {
    indexPath = join(indexPathOrFolder, SAFETENSORS_INDEX_NAME);
    const hasIndex = await Deno.stat(indexPath).then(() => true, () => false);
    if (!hasIndex) {
      const single = join(indexPathOrFolder, "model.safetensors");
      if (await Deno.stat(single).then((s) => s.isFile, () => false)) {
        return openSafetensors(single);
      }
      throw new CkptError(
        "HF_INDEX",
        `Cannot open shard folder "${indexPathOrFolder}": it has neither ${SAFETENSORS_INDEX_NAME} nor model.safetensors`,
        { file: indexPathOrFolder },
      );
    }
  }
  const index = await readHfShardIndex(indexPath);
  const folder = dirname(indexPath);
  const byShard = new Map<string, Set<string>>();
  for (const [name, file] of Object.entries(index.weightMap)) {
    let set = byShard.get(file);
    if (!set) byShard.set(file, set = new Set());
    set.add(name);
  }
  const shardNames = [...byShard.keys()].sort();
  const sd = new StateDict();
  try {
    const headers: { shard: string; file: RandomAccessFile; header: SafetensorsHeader }[] = [];
    const owner = new Map<string, string>();
    for (const shard of shardNames) {
      const path = join(folder, shard);
      const file = await RandomAccessFile.open(path);
      sd.own(file);
      const header = await readHeaderFrom(file);
      headers.push({ shard, file, header });
      for (const t of header.tensors) {
        const prev = owner.get(t.name);
        if (prev !== undefined) {
          throw new CkptError(
            "HF_INDEX_DUPLICATE",
            `Cannot open shards of "${indexPath}": tensor "${t.name}" is in both ${prev} and ${shard}`,
            { file: path, tensor: t.name },
          );
        }
        owner.set(t.name, shard);
      }
    }
    for (const { shard, file, header } of headers) {
      const listed = byShard.get(shard)!;
      for (const t of header.tensors) {
        if (!listed.has(t.name)) {
          const where = index.weightMap[t.name];
          throw new CkptError(
            "HF_INDEX_UNLISTED",
            `Cannot open shards of "${indexPath}": tensor "${t.name}" is in ${shard} but the index ${
              where === undefined ? "does not list it" : `puts it in ${where}`
            }`,
            { file: file.path, tensor: t.name },
          );
        }
        sd.set(t.name, fileTensor(file, header, t));
      }
      for (const name of listed) {
        if (owner.get(name) !== shard) {
          throw new CkptError(
            "HF_INDEX_MISSING",
            `Cannot open shards of "${indexPath}": the index puts tensor "${name}" in ${shard}, which does not hold it`,
            { file: file.path, tensor: name },
          );
        }
      }
    }
    sd.metadata = { ...(headers[0]?.header.metadata ?? {}) };
  } catch (err) {
    await sd.close();
    throw err;
  }
  return sd;
}
