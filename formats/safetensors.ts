/**
 * safetensors, streaming both ways: a strict reader that validates the header as the reference
 * implementation does and reads tensor bytes by row range from the open file, Hugging Face shard
 * folders (`model.safetensors.index.json`) cross-checked against their shard headers, and a
 * deterministic writer (the reference's order and padding) that plans the header before any data
 * moves, streams tensor data in bounded blocks and renames the file into place only when complete.
 *
 * @example Writing and reading back
 * ```ts
 * import { openSafetensors, writeSafetensors } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const sd = new StateDict();
 * sd.set("w", tensorFromBytes("F32", [2, 2], new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer)));
 * await writeSafetensors(path, sd);
 * await using back = await openSafetensors(path);
 * assert.deepEqual(back.metadata, { format: "pt" });
 * const row = await back.require("w").read(1, 2);
 * assert.deepEqual([...new Float32Array(row.slice().buffer)], [3, 4]);
 * await Deno.remove(path);
 * ```
 * @module
 */
export {
  MAX_HEADER_SIZE,
  type SafetensorsHeader,
  type SafetensorsTensorInfo,
  startsLikeSafetensors,
} from "./_safetensors_header.ts";
export { MAX_HEADER_ENTRIES } from "./_safetensors_entries.ts";
export { openSafetensors, readSafetensorsHeader } from "./_safetensors_read.ts";
export {
  DEFAULT_SAFETENSORS_METADATA,
  STREAM_BLOCK_BYTES,
  writeSafetensors,
  type WriteSafetensorsOptions,
  type WriteSafetensorsResult,
} from "./_safetensors_write.ts";
export {
  type HfShardIndex,
  openHfShards,
  planSafetensorsShards,
  type PlanSafetensorsShardsOptions,
  readHfShardIndex,
  SAFETENSORS_INDEX_NAME,
  type SafetensorsShardFile,
  type SafetensorsShardPlan,
  writeSafetensorsSharded,
  type WriteSafetensorsShardedOptions,
  type WriteSafetensorsShardedResult,
} from "./_safetensors_shards.ts";
