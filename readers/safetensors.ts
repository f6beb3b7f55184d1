/**
 * The safetensors input kinds: `safetensors` (one file, or a folder with `model.safetensors`) and
 * `hf-shards` (a folder with `model.safetensors.index.json`, or that index file itself).
 *
 * @example Recognising a safetensors file by its first bytes
 * ```ts
 * import { SAFETENSORS_KIND } from "./safetensors.ts";
 * import { probeInput } from "./probe.ts";
 * import assert from "node:assert/strict";
 *
 * const file = new URL("../tests/fixtures/safetensors/all_dtypes.safetensors", import.meta.url);
 * assert.equal(await SAFETENSORS_KIND.detect(await probeInput(file.pathname)), true);
 * ```
 * @module
 */
import { join } from "node:path";
import {
  openHfShards,
  openSafetensors,
  readHfShardIndex,
  readSafetensorsHeader,
  SAFETENSORS_INDEX_NAME,
  startsLikeSafetensors,
} from "../formats/safetensors.ts";
import { byteLength } from "../formats/state_dict.ts";
import { listShards } from "./_shards.ts";
import type { InputKind } from "./types.ts";
import type { InputProbe } from "./probe.ts";
import type { InspectReport } from "./report.ts";

/** The single file of a safetensors model folder. */
export const SAFETENSORS_MODEL_NAME = "model.safetensors";

function safetensorsFile(p: InputProbe): string {
  return p.isDirectory ? join(p.path, SAFETENSORS_MODEL_NAME) : p.path;
}

function hfIndexFile(p: InputProbe): string {
  return p.isDirectory ? join(p.path, SAFETENSORS_INDEX_NAME) : p.path;
}

/** One safetensors file, or a folder with `model.safetensors`. */
export const SAFETENSORS_KIND: InputKind = {
  name: "safetensors",
  summary: "one safetensors file (or a folder with model.safetensors)",
  detect: (p) =>
    p.isDirectory
      ? p.files.has(SAFETENSORS_MODEL_NAME)
      : p.path.endsWith(".safetensors") || startsLikeSafetensors(p.head, p.size),
  open: (p) => openSafetensors(safetensorsFile(p)),
  async inspect(p): Promise<InspectReport> {
    const header = await readSafetensorsHeader(safetensorsFile(p));
    const tensors = header.tensors.map((t) => ({
      name: t.name,
      dtype: t.dtype as string,
      shape: [...t.shape],
      bytes: t.dataOffsets[1] - t.dataOffsets[0],
    }));
    const report: InspectReport = {
      kind: "safetensors",
      path: p.path,
      tensors,
      totalBytes: tensors.reduce((n, t) => n + t.bytes, 0),
    };
    if (header.metadata) report.metadata = { ...header.metadata };
    return report;
  },
};

/** Hugging Face safetensors shards: a folder with `model.safetensors.index.json`, or the index. */
export const HF_SHARDS_KIND: InputKind = {
  name: "hf-shards",
  summary: "Hugging Face safetensors shards (model.safetensors.index.json)",
  detect: (p) =>
    p.isDirectory
      ? p.files.has(SAFETENSORS_INDEX_NAME)
      : p.path.endsWith(".safetensors.index.json"),
  open: (p) => openHfShards(p.path),
  async inspect(p): Promise<InspectReport> {
    const indexPath = hfIndexFile(p);
    const index = await readHfShardIndex(indexPath);
    // openHfShards cross-checks the index against every shard header (nothing missing, unlisted or
    // doubled); each tensor's `source` is its shard's path.
    await using sd = await openHfShards(indexPath);
    const { tensors, files } = await listShards(sd, (name, ref, file) => ({
      name,
      dtype: ref.dtype,
      shape: [...ref.shape],
      bytes: byteLength(ref.dtype, ref.shape),
      file,
    }));
    return {
      kind: "hf-shards",
      path: p.path,
      tensors,
      totalBytes: tensors.reduce((n, t) => n + t.bytes, 0),
      metadata: { ...sd.metadata, index: index.metadata },
      files,
    };
  },
};
