/**
 * Torch `.bin`/`.pt` state dicts as lazy {@linkcode StateDict}s for the pipeline: one file, a
 * `pytorch_model.bin.index.json` shard folder, and the sharded writer that mirrors
 * `save_pretrained(safe_serialization=False)` (`pytorch_model.bin`, or
 * `pytorch_model-0000i-of-0000N.bin` plus the index).
 *
 * Error codes: `TORCH_NOT_STATE_DICT` (the file is not a dict of tensors), `TORCH_INDEX` (bad index
 * JSON or a tensor missing from its shard), plus those of {@linkcode ./load.ts} and {@linkcode ./save.ts}.
 *
 * @example Sharded write and read back
 * ```ts
 * import { openTorchShards, writeTorchSharded } from "./state_dict.ts";
 * import { StateDict, tensorFromBytes } from "../state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const sd = new StateDict([
 *   ["a", tensorFromBytes("U8", [8], new Uint8Array(8).fill(1))],
 *   ["b", tensorFromBytes("U8", [8], new Uint8Array(8).fill(2))],
 * ]);
 * const { files } = await writeTorchSharded(dir, sd, { maxShardSize: 10 });
 * assert.deepEqual(files, ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]);
 * await using back = await openTorchShards(dir);
 * assert.deepEqual([...await back.require("b").read()], new Array(8).fill(2));
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../../errors.ts";
import { osError } from "../../errors/os.ts";
import { readTextInput } from "../read_text.ts";
import { planShards, shardFileName, shardIndexJson, type ShardPlan } from "../shards.ts";
import { StateDict } from "../state_dict.ts";
import { loadTorch, type TorchFile } from "./load.ts";
import { type SaveTorchOptions, saveTorchStateDict } from "./save.ts";
import {
  PyDict,
  pyTypeName,
  type PyValue,
  type TorchStorage,
  TorchTensor,
  torchTensor,
} from "./values.ts";

/** The tensors of a dict whose values are all tensors, or undefined. */
function tensorDict(v: PyValue | undefined): [string, TorchTensor][] | undefined {
  if (!(v instanceof PyDict)) return undefined;
  const out: [string, TorchTensor][] = [];
  for (const [k, x] of v) {
    if (typeof k !== "string" || !(x instanceof TorchTensor)) return undefined;
    out.push([k, x]);
  }
  return out;
}

/** Finds the state dict in a loaded file: the top level, or HALOs-style `{'state_dict': {...}}`. */
function stateDictOf(f: TorchFile): [string, TorchTensor][] {
  const top = tensorDict(f.value);
  if (top) return top;
  if (f.value instanceof PyDict) {
    for (const key of ["state_dict", "model", "module"]) {
      const inner = tensorDict(f.value.get(key));
      if (inner) return inner;
    }
  }
  throw new CkptError(
    "TORCH_NOT_STATE_DICT",
    `Cannot open "${f.path}" as a state dict: its top level is a ${
      pyTypeName(f.value)
    } that is not a dict of tensors`,
    { file: f.path },
  );
}

/**
 * Opens a torch `.bin`/`.pt` whose top level is a dict of tensors (also `{'state_dict': {...}}`)
 * as a lazy state dict; `close()` closes the file.
 */
export async function openTorchStateDict(path: string): Promise<StateDict> {
  const f = await loadTorch(path);
  try {
    const sd = new StateDict(stateDictOf(f));
    sd.own(f);
    return sd;
  } catch (e) {
    await f.close();
    throw e;
  }
}

/**
 * Opens a `pytorch_model.bin.index.json` (or the folder holding it) as one lazy state dict, in
 * shard order then file order. Every `weight_map` entry must be in its shard.
 */
export async function openTorchShards(indexPathOrFolder: string): Promise<StateDict> {
  let indexPath = indexPathOrFolder;
  try {
    if ((await Deno.stat(indexPathOrFolder)).isDirectory) {
      indexPath = join(indexPathOrFolder, "pytorch_model.bin.index.json");
    }
  } catch (cause) {
    throw new CkptError(
      "FILE_OPEN",
      `Cannot open "${indexPathOrFolder}": ${(cause as Error).message}`,
      {
        file: indexPathOrFolder,
        cause,
      },
    );
  }
  const dir = indexPath.slice(0, Math.max(0, indexPath.lastIndexOf("/"))) || ".";
  const text = await readTextInput(indexPath, { code: "TORCH_INDEX", what: "shard index" });
  let weightMap: Record<string, unknown>;
  try {
    const json = JSON.parse(text);
    weightMap = json?.weight_map;
    if (weightMap === null || typeof weightMap !== "object" || Array.isArray(weightMap)) {
      throw new Error("no weight_map");
    }
  } catch (cause) {
    throw new CkptError(
      "TORCH_INDEX",
      `Cannot read shard index "${indexPath}": ${(cause as Error).message}`,
      {
        file: indexPath,
        cause,
      },
    );
  }
  const files: string[] = [];
  const wanted = new Map<string, Set<string>>();
  for (const [name, file] of Object.entries(weightMap)) {
    if (typeof file !== "string" || file.includes("/") || file.includes("\\") || file === "..") {
      throw new CkptError(
        "TORCH_INDEX",
        `Cannot read shard index "${indexPath}": bad file for "${name}"`,
        {
          file: indexPath,
          tensor: name,
        },
      );
    }
    if (!wanted.has(file)) {
      wanted.set(file, new Set());
      files.push(file);
    }
    wanted.get(file)!.add(name);
  }
  files.sort();
  const sd = new StateDict();
  try {
    for (const file of files) {
      const f = await loadTorch(join(dir, file));
      sd.own(f);
      const names = wanted.get(file)!;
      for (const [name, t] of stateDictOf(f)) if (names.has(name)) sd.set(name, t);
      for (const name of names) {
        if (!sd.has(name)) {
          throw new CkptError("TORCH_INDEX", `Cannot find tensor "${name}" in shard "${file}"`, {
            file: join(dir, file),
            tensor: name,
          });
        }
      }
    }
  } catch (e) {
    await sd.close();
    throw e;
  }
  return sd;
}

/** Options of {@linkcode writeTorchSharded}. */
export interface WriteTorchShardedOptions extends Omit<SaveTorchOptions, "prefix" | "onProgress"> {
  /** Largest shard in bytes (transformers' `max_shard_size`). */
  maxShardSize: number;
  /** File name stem. Default `"pytorch_model"`. */
  prefix?: string;
  /** Called with bytes of tensor data written across all shards and the total. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /**
   * Write only the shard files of these names (one part of a split export), no index. Default:
   * every shard and the index.
   */
  only?: ReadonlySet<string>;
}

/** The shards {@linkcode writeTorchSharded} writes, planned before any byte is. */
export interface TorchShardPlan {
  /** huggingface_hub's split: each shard's tensors (tied followers after the shard's own). */
  plan: ShardPlan;
  /** Shard file names, in order. */
  files: string[];
  /** The index file's name and exact text, when there is more than one shard. */
  index?: { file: string; text: string; value: Record<string, unknown> };
}

/**
 * Plans `save_pretrained(safe_serialization=False)` shards: tensors sharing a storage (tied
 * weights) count once and go to the shard of the first of them, appended after that shard's own
 * tensors; file names and index as transformers writes them.
 */
export function planTorchShards(
  sd: StateDict,
  maxShardSize: number,
  prefix = "pytorch_model",
): TorchShardPlan {
  const first = new Map<TorchStorage, string>();
  const followers = new Map<string, string[]>();
  const entries: { name: string; bytes: number }[] = [];
  for (const [name, ref] of sd) {
    const t = torchTensor(ref);
    const lead = first.get(t.storage);
    if (lead !== undefined) {
      followers.get(lead)!.push(name);
      continue;
    }
    first.set(t.storage, name);
    followers.set(name, []);
    entries.push({ name, bytes: t.storage.byteLength });
  }
  const planned = planShards(entries, maxShardSize);
  const plan: ShardPlan = {
    totalSize: planned.totalSize,
    shards: planned.shards.map((sh) => ({
      bytes: sh.bytes,
      names: [...sh.names, ...sh.names.flatMap((n) => followers.get(n) ?? [])],
    })),
  };
  const n = plan.shards.length;
  const files = plan.shards.map((_, i) => shardFileName(prefix, ".bin", i, n));
  if (n === 1) return { plan, files };
  const { index, text } = shardIndexJson(plan, files);
  return { plan, files, index: { file: `${prefix}.bin.index.json`, text, value: index } };
}

/** What {@linkcode writeTorchSharded} wrote. */
export interface WriteTorchShardedResult {
  /** Shard file names, in order. */
  files: string[];
  /** The index object (undefined when one file was enough). */
  index?: Record<string, unknown>;
}

/**
 * Writes `sd` into `dir` as `save_pretrained(safe_serialization=False)` does: `pytorch_model.bin`
 * when it fits in `maxShardSize`, else `pytorch_model-0000i-of-0000N.bin` shards (huggingface_hub's
 * split rule) and `pytorch_model.bin.index.json`.
 */
export async function writeTorchSharded(
  dir: string,
  sd: StateDict,
  options: WriteTorchShardedOptions,
): Promise<WriteTorchShardedResult> {
  const { plan, files, index } = planTorchShards(sd, options.maxShardSize, options.prefix);
  const n = plan.shards.length;
  const only = options.only;
  const chosen = plan.shards.map((_, i) => i).filter((i) => !only || only.has(files[i]!));
  const total = chosen.reduce((t, i) => t + plan.shards[i]!.bytes, 0);
  let before = 0;
  for (const i of chosen) {
    const shard = plan.shards[i]!;
    const part = new StateDict(shard.names.map((name) => [name, sd.require(name)]));
    const base = before;
    await saveTorchStateDict(join(dir, files[i]!), part, {
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.blockSize ? { blockSize: options.blockSize } : {}),
      ...(options.onBytes ? { onBytes: options.onBytes } : {}),
      ...(options.syncEvery ? { syncEvery: options.syncEvery } : {}),
      onProgress: (d) => options.onProgress?.(base + d, total),
    });
    before += shard.bytes;
  }
  if (only) return { files: chosen.map((i) => files[i]!) };
  if (n === 1 || !index) return { files };
  const indexPath = join(dir, index.file);
  const tmp = `${indexPath}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeTextFile(tmp, index.text);
    await Deno.rename(tmp, indexPath);
  } catch (cause) {
    await Deno.remove(tmp).catch(() => {});
    throw osError(cause, "write", indexPath, { code: "FILE_WRITE" });
  }
  return { files, index: index.value };
}
