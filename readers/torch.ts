/**
 * The torch input kinds: `torch` (one `torch.save` file: `.pt`/`.bin`/`.pth` or any zip, or a folder
 * with `pytorch_model.bin`) and `torch-shards` (a folder with `pytorch_model.bin.index.json`, or
 * that index file). `inspect` describes any torch.save value (state dicts, optimizer and scheduler
 * states), reading only `data.pkl` and the zip directories, never tensor data.
 *
 * @example Inspecting an optimizer file
 * ```ts
 * import { inspectTorchFile } from "./torch.ts";
 * import { saveTorch } from "../formats/torch/save.ts";
 * import { pyDict, tensorOfBytes } from "../formats/torch/values.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".pt" });
 * const step = tensorOfBytes("F32", [], new Uint8Array(4));
 * await saveTorch(path, pyDict([["state", pyDict([[0, pyDict([["step", step]])]])], ["lr", 0.001]]));
 * const report = await inspectTorchFile(path);
 * assert.equal(report.kind, "torch");
 * assert.deepEqual(report.tensors.map((t) => [t.name, t.dtype, t.shape, t.bytes]), [["state.0.step", "F32", [], 4]]);
 * assert.deepEqual(report.tree, { state: { "0": { step: "<tensor F32[]>" } }, lr: 0.001 });
 * await Deno.remove(path);
 * ```
 * @module
 */
import { join } from "node:path";
import { DTYPES } from "../formats/dtype.ts";
import { numel } from "../formats/state_dict.ts";
import { loadTorch } from "../formats/torch/load.ts";
import { openTorchShards, openTorchStateDict } from "../formats/torch/state_dict.ts";
import {
  PyDict,
  type PyValue,
  tensorsOf,
  toJSONish,
  TorchTensor,
} from "../formats/torch/values.ts";
import { listShards } from "./_shards.ts";
import type { InputKind } from "./types.ts";
import { type InputProbe, startsLikeZip } from "./probe.ts";
import type { InspectReport, InspectTensor } from "./report.ts";

/** The single file of a torch model folder. */
export const TORCH_MODEL_NAME = "pytorch_model.bin";
/** The index file of a torch shard folder. */
export const TORCH_INDEX_NAME = "pytorch_model.bin.index.json";

function tensorEntry(name: string, t: TorchTensor, file?: string): InspectTensor {
  const extra: Record<string, unknown> = {
    storage: t.storage.key ?? null,
    storageOffset: t.storageOffset,
  };
  if (!t.isContiguous) extra.stride = [...t.stride];
  if (t.parameter) extra.parameter = true;
  if (t.requiresGrad) extra.requiresGrad = true;
  return {
    name,
    dtype: t.dtype,
    shape: [...t.shape],
    bytes: numel(t.shape) * DTYPES[t.dtype].size,
    ...(file === undefined ? {} : { file }),
    extra,
  };
}

function isStateDict(v: PyValue): boolean {
  if (!(v instanceof PyDict)) return false;
  for (const [k, x] of v) if (typeof k !== "string" || !(x instanceof TorchTensor)) return false;
  return true;
}

/** The value tree as JSON with every tensor shortened to `"<tensor BF16[2, 3]>"`. */
export function torchTree(value: PyValue): unknown {
  const json = toJSONish(value);
  const shorten = (x: unknown): unknown => {
    if (Array.isArray(x)) return x.map(shorten);
    if (x !== null && typeof x === "object") {
      const o = x as Record<string, unknown>;
      const t = o.__tensor__ as { dtype: string; shape: number[] } | undefined;
      if (t && Object.keys(o).length === 1) return `<tensor ${t.dtype}[${t.shape.join(", ")}]>`;
      return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, shorten(v)]));
    }
    return x;
  };
  return shorten(json);
}

/** Report of one torch.save file: its tensors (by dotted path) and, unless it is a plain state dict, its value tree. */
export async function inspectTorchFile(path: string): Promise<InspectReport> {
  await using f = await loadTorch(path);
  const tensors: InspectTensor[] = [];
  const seen = new Set<string>();
  for (const [name, t] of tensorsOf(f.value)) {
    if (seen.has(name)) continue;
    seen.add(name);
    tensors.push(tensorEntry(name, t));
  }
  const report: InspectReport = {
    kind: "torch",
    path,
    tensors,
    totalBytes: tensors.reduce((n, t) => n + t.bytes, 0),
    metadata: { archive: f.prefix, records: f.records.length },
  };
  if (!isStateDict(f.value)) report.tree = torchTree(f.value);
  return report;
}

/** Report of a `pytorch_model.bin.index.json` shard folder (or the index file itself). */
export async function inspectTorchShards(path: string, indexPath: string): Promise<InspectReport> {
  await using sd = await openTorchShards(indexPath);
  const { tensors, files } = await listShards(
    sd,
    (name, ref, file) => tensorEntry(name, ref as TorchTensor, file),
  );
  let index: unknown;
  try {
    index = JSON.parse(await Deno.readTextFile(indexPath)).metadata;
  } catch {
    index = undefined;
  }
  return {
    kind: "torch-shards",
    path,
    tensors,
    totalBytes: tensors.reduce((n, t) => n + t.bytes, 0),
    ...(index === undefined ? {} : { metadata: { index } }),
    files,
  };
}

function torchFile(p: InputProbe): string {
  return p.isDirectory ? join(p.path, TORCH_MODEL_NAME) : p.path;
}

function torchIndexFile(p: InputProbe): string {
  return p.isDirectory ? join(p.path, TORCH_INDEX_NAME) : p.path;
}

/** torch `.bin` shards: a folder with `pytorch_model.bin.index.json`, or the index file. */
export const TORCH_SHARDS_KIND: InputKind = {
  name: "torch-shards",
  summary: "torch .bin shards (pytorch_model.bin.index.json)",
  detect: (p) => p.isDirectory ? p.files.has(TORCH_INDEX_NAME) : p.path.endsWith(".bin.index.json"),
  open: (p) => openTorchShards(p.path),
  inspect: (p) => inspectTorchShards(p.path, torchIndexFile(p)),
};

/** One torch.save file (`.bin`/`.pt`/`.pth`, or any zip), or a folder with `pytorch_model.bin`. */
export const TORCH_KIND: InputKind = {
  name: "torch",
  summary: "one torch.save file (.bin/.pt/.pth, or a folder with pytorch_model.bin)",
  detect: (p) =>
    p.isDirectory
      ? p.files.has(TORCH_MODEL_NAME)
      : /\.(bin|pt|pth)$/.test(p.path) || startsLikeZip(p.head),
  open: (p) => openTorchStateDict(torchFile(p)),
  inspect: async (p) => ({ ...(await inspectTorchFile(torchFile(p))), path: p.path }),
};
