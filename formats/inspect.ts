/**
 * The library side of `ckpt inspect`: detect what a path holds and describe it as a plain
 * {@linkcode InspectReport} (tensors with dtype, shape, size and file; totals; metadata). Reading
 * only headers, never tensor data.
 *
 * The dispatcher is a list of {@linkcode InspectBranch}es asked in order; each format adds one
 * branch to {@linkcode INSPECT_BRANCHES} (a `detect` that looks at the path's first bytes or folder
 * listing, and an `inspect` that lazily imports its reader).
 *
 * @example Inspecting a safetensors file
 * ```ts
 * import { inspectPath } from "./inspect.ts";
 * import { writeSafetensors } from "./safetensors.ts";
 * import { StateDict, tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, new StateDict([["w", tensorFromBytes("BF16", [2, 3], new Uint8Array(12))]]));
 * const report = await inspectPath(path);
 * assert.equal(report.kind, "safetensors");
 * assert.deepEqual(report.tensors[0], { name: "w", dtype: "BF16", shape: [2, 3], bytes: 12 });
 * assert.equal(report.totalBytes, 12);
 * await Deno.remove(path);
 * ```
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../errors.ts";
import { listShards } from "./_inspect_shards.ts";

/** What kind of checkpoint a report describes. */
export type InspectKind = "safetensors" | "hf-shards" | "torch" | "torch-shards" | "dcp";

/** One tensor of an {@linkcode InspectReport}. */
export interface InspectTensor {
  /** State-dict key. */
  name: string;
  /** dtype, by its safetensors name (`"BF16"`) where ckpt knows it, else as the file spells it. */
  dtype: string;
  /** Shape (`[]` for a scalar). */
  shape: number[];
  /** Bytes of tensor data. */
  bytes: number;
  /** File (relative to the inspected folder) holding the tensor, for multi-file checkpoints. */
  file?: string;
  /** Format-specific details (DCP: chunks and ranks; torch: storage key, offset). */
  extra?: Record<string, unknown>;
}

/** One file of a multi-file checkpoint. */
export interface InspectFile {
  /** File name relative to the inspected folder. */
  file: string;
  /** Size on disk. */
  bytes: number;
  /** Number of tensors it holds. */
  tensors: number;
}

/** What {@linkcode inspectPath} returns: plain data, ready for `JSON.stringify`. */
export interface InspectReport {
  /** Detected kind. */
  kind: InspectKind;
  /** The inspected path. */
  path: string;
  /** Tensors in file order. */
  tensors: InspectTensor[];
  /** Sum of tensor bytes. */
  totalBytes: number;
  /** Metadata (safetensors `__metadata__`, shard index `metadata`, DCP planner info, ...). */
  metadata?: Record<string, unknown>;
  /** Files of a multi-file checkpoint. */
  files?: InspectFile[];
  /** Non-tensor values of a torch pickle (optimizer hyper-parameters, step counters), as JSON. */
  tree?: unknown;
}

/** What a branch's `detect` gets to look at. */
export interface InspectProbe {
  /** The path as given. */
  path: string;
  /** True for a folder. */
  isDirectory: boolean;
  /** Up to the first 64 bytes of a file (empty for a folder). */
  head: Uint8Array;
  /** File names in a folder (empty for a file). */
  names: string[];
}

/** One format the dispatcher knows. */
export interface InspectBranch {
  /** The kind this branch reports. */
  kind: InspectKind;
  /** True when the probe looks like this format. Must not throw. */
  detect(probe: InspectProbe): boolean;
  /** Builds the report (reads headers only). */
  inspect(probe: InspectProbe): Promise<InspectReport>;
}

function startsWithJsonObject(head: Uint8Array): boolean {
  if (head.length < 9) return false;
  const n = new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true);
  return n > 0n && n <= 100_000_000n && (head[8] === 0x7b /* { */ || head[8] === 0x20);
}

async function inspectSafetensorsFile(path: string): Promise<InspectReport> {
  const { readSafetensorsHeader } = await import("./safetensors.ts");
  const header = await readSafetensorsHeader(path);
  const tensors = header.tensors.map((t) => ({
    name: t.name,
    dtype: t.dtype as string,
    shape: [...t.shape],
    bytes: t.dataOffsets[1] - t.dataOffsets[0],
  }));
  const report: InspectReport = {
    kind: "safetensors",
    path,
    tensors,
    totalBytes: tensors.reduce((n, t) => n + t.bytes, 0),
  };
  if (header.metadata) report.metadata = { ...header.metadata };
  return report;
}

async function inspectHfShards(path: string, indexPath: string): Promise<InspectReport> {
  const { openHfShards, readHfShardIndex } = await import("./safetensors.ts");
  const { byteLength } = await import("./state_dict.ts");
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
    path,
    tensors,
    totalBytes: tensors.reduce((n, t) => n + t.bytes, 0),
    metadata: { ...sd.metadata, index: index.metadata },
    files,
  };
}

/**
 * The formats `ckpt inspect` knows, asked in order. Other formats add a branch here (torch
 * `.pt/.bin` files and `pytorch_model.bin` shard folders, DCP folders with a `.metadata` file).
 */
export const INSPECT_BRANCHES: InspectBranch[] = [
  {
    kind: "dcp",
    detect: (p) => p.isDirectory && p.names.includes(".metadata"),
    inspect: async (p) => (await import("./_dcp_inspect.ts")).inspectDcp(p.path),
  },
  {
    kind: "hf-shards",
    detect: (p) =>
      (p.isDirectory && p.names.includes("model.safetensors.index.json")) ||
      (!p.isDirectory && p.path.endsWith(".safetensors.index.json")),
    inspect: (p) =>
      inspectHfShards(
        p.path,
        p.isDirectory ? join(p.path, "model.safetensors.index.json") : p.path,
      ),
  },
  {
    kind: "safetensors",
    detect: (p) =>
      p.isDirectory
        ? p.names.includes("model.safetensors")
        : p.path.endsWith(".safetensors") || startsWithJsonObject(p.head),
    inspect: async (p) => {
      const file = p.isDirectory ? join(p.path, "model.safetensors") : p.path;
      return { ...(await inspectSafetensorsFile(file)), path: p.path };
    },
  },
  {
    kind: "torch-shards",
    detect: (p) =>
      (p.isDirectory && p.names.includes("pytorch_model.bin.index.json")) ||
      (!p.isDirectory && p.path.endsWith(".bin.index.json")),
    inspect: async (p) => {
      const t = await import("./torch/inspect.ts");
      return t.inspectTorchShards(p.path, t.torchShardIndex(p.path, p.isDirectory, p.names)!);
    },
  },
  {
    kind: "torch",
    detect: (p) =>
      p.isDirectory
        ? p.names.includes("pytorch_model.bin")
        : /\.(pt|pth|bin|ckpt)$/.test(p.path) || (p.head[0] === 0x50 && p.head[1] === 0x4b),
    inspect: async (p) => {
      const { inspectTorchFile } = await import("./torch/inspect.ts");
      const file = p.isDirectory ? join(p.path, "pytorch_model.bin") : p.path;
      return { ...(await inspectTorchFile(file)), path: p.path };
    },
  },
];

/**
 * Describes the checkpoint at `path` (a file or a folder) by asking each of
 * {@linkcode INSPECT_BRANCHES} in turn. `FILE_OPEN` when the path cannot be read,
 * `INSPECT_UNKNOWN` when no branch recognises it; a branch's own errors (a corrupt header)
 * pass through with their codes.
 */
export async function inspectPath(path: string): Promise<InspectReport> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (cause) {
    throw new CkptError("FILE_OPEN", `Cannot inspect "${path}": ${(cause as Error).message}`, {
      file: path,
      cause,
    });
  }
  const probe: InspectProbe = {
    path,
    isDirectory: stat.isDirectory,
    head: new Uint8Array(),
    names: [],
  };
  try {
    if (stat.isDirectory) {
      for await (const e of Deno.readDir(path)) probe.names.push(e.name);
      probe.names.sort();
    } else {
      using f = await Deno.open(path);
      const head = new Uint8Array(64);
      let n = 0;
      while (n < head.length) {
        const r = await f.read(head.subarray(n));
        if (r === null || r === 0) break;
        n += r;
      }
      probe.head = head.subarray(0, n);
    }
  } catch (cause) {
    throw new CkptError("FILE_OPEN", `Cannot inspect "${path}": ${(cause as Error).message}`, {
      file: path,
      cause,
    });
  }
  for (const branch of INSPECT_BRANCHES) {
    if (branch.detect(probe)) return await branch.inspect(probe);
  }
  throw new CkptError(
    "INSPECT_UNKNOWN",
    `Cannot inspect "${path}": it is not a checkpoint ckpt recognises (${
      INSPECT_BRANCHES.map((b) => b.kind).join(", ")
    })`,
    { file: path },
  );
}
