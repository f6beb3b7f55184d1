/**
 * torch.distributed.checkpoint folders written by `HuggingFaceStorageWriter(save_distributed=True)`
 * without consolidation (torch 2.7+): every rank writes its chunks to
 * `shard-<rank+1>-model-<i>-of-<n>.safetensors` (5 digits each; `i` from the writer's
 * `fqn_to_index_mapping`, else 1 of 1) and nothing else: no `.metadata`, no index. Each file is a
 * safetensors file whose `__metadata__.DCP_SHARDING_INFO` gives every tensor's `saved_offsets`, so
 * the checkpoint's metadata is put together from the headers the way torch's
 * `HuggingFaceStorageReader` does it: a tensor's chunks are its entries in the files, its full
 * shape the largest `offset + size` per dimension. The result is an ordinary
 * {@linkcode DcpCheckpoint}: the same coverage checks (no overlap, no hole), the same streaming
 * row-block reads.
 *
 * Non-tensor values have no place in this layout: the writer puts them (an optimizer's
 * `param_groups`) as torch.save records ahead of the safetensors header and records their names
 * nowhere, so such files are refused (`DCP_UNSUPPORTED`).
 *
 * @example Gathering the shards of a 3-rank FSDP2 run
 * ```ts
 * import { openDcpHfStateDict } from "./dcp_hf.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL("../tests/fixtures/dcp/hf_w3/model", import.meta.url).pathname;
 * await using sd = await openDcpHfStateDict(dir);
 * assert.deepEqual([...sd.keys()], ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias"]);
 * assert.deepEqual(sd.get("1.weight")!.shape, [8, 5]); // rows 3 + 3 + 2 over the ranks
 * ```
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../errors.ts";
import { RandomAccessFile } from "./_io.ts";
import { DTYPES } from "./dtype.ts";
import { numel, type StateDict } from "./state_dict.ts";
import {
  DcpCheckpoint,
  type DcpOpenOptions,
  dcpStateDict,
  type DcpStateDictOptions,
} from "./dcp.ts";
import type { DcpChunk, DcpMetadata, DcpTensorEntry } from "./_dcp_types.ts";
import { itemEncoding, readDcpBlob } from "./_dcp_safetensors.ts";

/** `shard-00001-model-00001-of-00002.safetensors`: shard (rank + 1), file index, file count. */
export const DCP_HF_SHARD_NAME: RegExp = /^shard-(\d{5,})-model-(\d{5,})-of-(\d{5,})\.safetensors$/;

/** A shard file name taken apart. */
export interface DcpHfShardName {
  /** The file name. */
  readonly name: string;
  /** The writer's plan number (rank + 1 when every rank wrote). */
  readonly shard: number;
  /** File index within the shard (1-based). */
  readonly index: number;
  /** Files per shard. */
  readonly count: number;
}

/** The shard files among `names`, sorted by shard then file index. */
export function dcpHfShardNames(names: Iterable<string>): DcpHfShardName[] {
  const out: DcpHfShardName[] = [];
  for (const name of names) {
    const m = DCP_HF_SHARD_NAME.exec(name);
    if (m) out.push({ name, shard: Number(m[1]), index: Number(m[2]), count: Number(m[3]) });
  }
  return out.sort((a, b) => a.shard - b.shard || a.index - b.index);
}

async function listShards(dir: string): Promise<DcpHfShardName[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) if (e.isFile || e.isSymlink) names.push(e.name);
  } catch (cause) {
    throw new CkptError(
      "DCP_METADATA_MISSING",
      `Cannot open DCP checkpoint "${dir}": the folder cannot be listed (${
        (cause as Error).message
      })`,
      { file: dir, cause },
    );
  }
  const shards = dcpHfShardNames(names);
  if (shards.length === 0) {
    throw new CkptError(
      "DCP_METADATA_MISSING",
      `Cannot open DCP checkpoint "${dir}": no .metadata and no shard-<n>-model-<i>-of-<n>.safetensors files`,
      { file: dir },
    );
  }
  const counts = new Set(shards.map((s) => s.count));
  const bad = shards.find((s) => s.index < 1 || s.index > s.count);
  if (counts.size > 1 || bad) {
    throw new CkptError(
      "DCP_METADATA",
      `Cannot open DCP checkpoint "${dir}": its shard files disagree on the file count (${
        bad ? bad.name : [...counts].join(" vs ")
      })`,
      { file: join(dir, bad?.name ?? shards[0]!.name) },
    );
  }
  return shards;
}

interface Building {
  key: string;
  dtype: DcpTensorEntry["dtype"];
  rank: number;
  chunks: DcpChunk[];
  firstFile: string;
}

/** Adds the tensors of one shard file to `byKey` (in the order its sharding info lists them). */
async function addShard(dir: string, shard: DcpHfShardName, byKey: Map<string, Building>) {
  const path = join(dir, shard.name);
  const file = await RandomAccessFile.open(path);
  try {
    if ((await itemEncoding(file, 0)) === "zip") {
      throw new CkptError(
        "DCP_UNSUPPORTED",
        `Cannot read "${path}": it starts with a torch.save record, not a safetensors header (HuggingFaceStorageWriter writes non-tensor values, such as an optimizer's param_groups, ahead of the header and keeps their names nowhere; save such state with FileSystemWriter)`,
        { file: path },
      );
    }
    const blob = await readDcpBlob(file, 0);
    const names = [...(blob.savedOffsets?.keys() ?? [])];
    for (const t of blob.header.tensors) if (!names.includes(t.name)) names.push(t.name);
    for (const name of names) {
      const t = blob.header.tensors.find((x) => x.name === name);
      if (!t) {
        throw new CkptError(
          "DCP_CHUNK_MISSING",
          `Cannot read "${name}": the sharding info of "${path}" lists it but the file holds no such tensor`,
          { file: path, tensor: name },
        );
      }
      const offsets = blob.savedOffsets?.get(name) ?? t.shape.map(() => 0);
      if (offsets.length !== t.shape.length) {
        throw new CkptError(
          "DCP_METADATA",
          `Cannot read "${name}" from "${path}": saved_offsets (${
            offsets.join(", ")
          }) do not match its shape (${t.shape.join(", ")})`,
          { file: path, tensor: name },
        );
      }
      const chunk: DcpChunk = {
        offsets: [...offsets],
        sizes: [...t.shape],
        file: shard.name,
        offset: 0,
        length: numel(t.shape) * DTYPES[t.dtype].size,
      };
      const b = byKey.get(name);
      if (!b) {
        byKey.set(name, {
          key: name,
          dtype: t.dtype,
          rank: t.shape.length,
          chunks: [chunk],
          firstFile: path,
        });
      } else if (b.dtype !== t.dtype || b.rank !== t.shape.length) {
        throw new CkptError(
          "DCP_RECORD_MISMATCH",
          `Cannot read "${name}": "${b.firstFile}" holds it as ${b.dtype} of rank ${b.rank}, "${path}" as ${t.dtype} of rank ${t.shape.length}`,
          { file: path, tensor: name },
        );
      } else {
        b.chunks.push(chunk);
      }
    }
  } finally {
    await file.close();
  }
}

/**
 * The metadata of a `HuggingFaceStorageWriter` shard folder, put together from the files'
 * safetensors headers (see the module doc). `DCP_METADATA_MISSING` when `dir` holds no shard
 * files, `DCP_UNSUPPORTED` for files that start with torch.save records, safetensors codes for a
 * broken header.
 */
export async function readDcpHfMetadata(dir: string): Promise<DcpMetadata> {
  const byKey = new Map<string, Building>();
  for (const shard of await listShards(dir)) await addShard(dir, shard, byKey);
  const entries: DcpTensorEntry[] = [...byKey.values()].map((b) => ({
    kind: "tensor",
    key: b.key,
    path: [b.key],
    dtype: b.dtype,
    shape: Array.from(
      { length: b.rank },
      (_, d) => Math.max(...b.chunks.map((c) => c.offsets[d]! + c.sizes[d]!)),
    ),
    requiresGrad: false,
    chunks: b.chunks,
  }));
  return { entries, layout: "huggingface" };
}

/** True when `dir`'s listing `names` is a `HuggingFaceStorageWriter` shard folder (no `.metadata`). */
export function isDcpHfListing(names: Iterable<string>): boolean {
  const list = [...names];
  return !list.includes(".metadata") && dcpHfShardNames(list).length > 0;
}

/** Opens a `HuggingFaceStorageWriter` shard folder as a {@linkcode DcpCheckpoint}. */
export async function openDcpHf(dir: string, options: DcpOpenOptions = {}): Promise<DcpCheckpoint> {
  return await DcpCheckpoint.fromMetadata(dir, await readDcpHfMetadata(dir), options);
}

/**
 * Opens a `HuggingFaceStorageWriter` shard folder as a lazy {@linkcode StateDict} (see
 * {@linkcode openDcpStateDict} in `dcp.ts`); the state dict owns the files: close it when done.
 */
export async function openDcpHfStateDict(
  dir: string,
  options: DcpStateDictOptions = {},
): Promise<StateDict> {
  return await dcpStateDict(await openDcpHf(dir, options), options);
}
