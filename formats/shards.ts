/**
 * The shard planner Hugging Face uses (`huggingface_hub.split_state_dict_into_shards_factory`, which
 * `save_pretrained` calls), as a pure function over names and byte sizes, plus the shard file
 * names and the index JSON exactly as transformers writes them. Format-neutral: the safetensors
 * writer and the torch `.bin` writer both use it.
 *
 * @example Planning shards
 * ```ts
 * import { planShards, shardFileName } from "./shards.ts";
 * import assert from "node:assert/strict";
 *
 * const plan = planShards([{ name: "a", bytes: 6 }, { name: "b", bytes: 6 }, { name: "c", bytes: 3 }], 10);
 * assert.deepEqual(plan.shards.map((s) => s.names), [["a"], ["b", "c"]]);
 * assert.equal(plan.totalSize, 15);
 * assert.equal(shardFileName("model", ".safetensors", 0, 2), "model-00001-of-00002.safetensors");
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";

/** One tensor to place: its name and its storage bytes. */
export interface ShardEntry {
  /** State-dict key. */
  readonly name: string;
  /** Bytes of the tensor's data. */
  readonly bytes: number;
}

/** One planned shard. */
export interface PlannedShard {
  /** Tensor names in the shard, in state-dict order. */
  names: string[];
  /** Sum of their bytes. */
  bytes: number;
}

/** The result of {@linkcode planShards}. */
export interface ShardPlan {
  /** Shards in file order (a tensor larger than the limit gets its own shard at once). */
  shards: PlannedShard[];
  /** Sum of all tensor bytes (the index's `metadata.total_size`). */
  totalSize: number;
}

/**
 * Splits entries (in state-dict order) into shards of at most `maxShardSize` bytes the way
 * huggingface_hub does: a tensor larger than the limit becomes its own shard immediately while the
 * current shard stays open; otherwise a tensor that does not fit closes the current shard. An empty
 * input gives one empty shard. `SHARD_SIZE` when `maxShardSize` is not a positive integer.
 */
export function planShards(entries: Iterable<ShardEntry>, maxShardSize: number): ShardPlan {
  if (!Number.isSafeInteger(maxShardSize) || maxShardSize <= 0) {
    throw new CkptError(
      "SHARD_SIZE",
      `Cannot plan shards: maxShardSize must be a positive integer, got ${maxShardSize}`,
    );
  }
  const shards: PlannedShard[] = [];
  let current: PlannedShard = { names: [], bytes: 0 };
  let totalSize = 0;
  for (const { name, bytes } of entries) {
    totalSize += bytes;
    if (bytes > maxShardSize) {
      shards.push({ names: [name], bytes });
      continue;
    }
    if (current.bytes + bytes > maxShardSize) {
      shards.push(current);
      current = { names: [], bytes: 0 };
    }
    current.names.push(name);
    current.bytes += bytes;
  }
  if (current.names.length > 0 || shards.length === 0) shards.push(current);
  return { shards, totalSize };
}

/**
 * File name of shard `index` (0-based) of `count`: `<prefix><ext>` when `count` is 1, else
 * `<prefix>-0000i-of-0000N<ext>` (1-based, 5 digits) as transformers names them.
 */
export function shardFileName(prefix: string, ext: string, index: number, count: number): string {
  if (count === 1) return `${prefix}${ext}`;
  const pad = (n: number) => String(n).padStart(5, "0");
  return `${prefix}-${pad(index + 1)}-of-${pad(count)}${ext}`;
}

/** Compares strings by Unicode code point (Python's `sorted` order), not UTF-16 unit. */
export function compareCodePoints(a: string, b: string): number {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done) return y.done ? 0 : -1;
    if (y.done) return 1;
    const cx = x.value.codePointAt(0)!;
    const cy = y.value.codePointAt(0)!;
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

/**
 * Serializes a JSON value as Python's `json.dumps(value, indent=2, sort_keys=True)` does (keys
 * sorted by code point, non-ASCII escaped as `\uXXXX`), without the trailing newline.
 */
export function pythonJsonDumps(value: unknown): string {
  const sortDeep = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sortDeep);
    if (v !== null && typeof v === "object") {
      const keys = Object.keys(v).sort(compareCodePoints);
      const out: Record<string, unknown> = {};
      for (const k of keys) out[k] = sortDeep((v as Record<string, unknown>)[k]);
      return out;
    }
    return v;
  };
  return JSON.stringify(sortDeep(value), null, 2).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/**
 * The index file transformers writes beside the shards (`model.safetensors.index.json`,
 * `pytorch_model.bin.index.json`): `{"metadata": {"total_size": N, ...extra}, "weight_map":
 * {name: file}}` with sorted keys, two-space indent and a final newline. `extraMetadata` adds keys
 * such as `total_parameters`.
 */
export function shardIndexJson(
  plan: ShardPlan,
  fileNames: readonly string[],
  extraMetadata: Record<string, unknown> = {},
): { index: Record<string, unknown>; text: string } {
  const weightMap: Record<string, string> = {};
  plan.shards.forEach((shard, i) => {
    for (const name of shard.names) weightMap[name] = fileNames[i]!;
  });
  const index = {
    metadata: { ...extraMetadata, total_size: plan.totalSize },
    weight_map: weightMap,
  };
  return { index, text: pythonJsonDumps(index) + "\n" };
}
