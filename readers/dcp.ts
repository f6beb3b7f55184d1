/**
 * The torch.distributed.checkpoint input kind (`dcp`): a folder with `.metadata` plus
 * `__<rank>_<n>.distcp` files, as FSDP `SHARDED_STATE_DICT`, FSDP2/DTensor and accelerate's
 * `pytorch_model_fsdp_0/` leave it, opened as a lazy state dict; the same folders as an optimizer
 * source of writeOptim (accelerate's `optimizer_0/`, rebuilt with `readDcpOptimizer`); and the
 * `ckpt inspect` report: tensors with dtype, shape and size, how each is sharded (the files/ranks
 * and chunks holding it, the dimensions it is split along), the non-tensor values, and the files.
 * Reads `.metadata` and the small bytes items, never tensor data.
 *
 * @example Detecting a DCP folder
 * ```ts
 * import { DCP_INPUT_KIND, DCP_OPTIMIZER_SOURCE } from "./dcp.ts";
 * import { probeInput } from "./probe.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL("../tests/fixtures/dcp/bf16_w4/model", import.meta.url).pathname;
 * assert.equal(await DCP_INPUT_KIND.detect(await probeInput(dir)), true);
 * const optim = new URL("../tests/fixtures/dcp/lora_w2/optim", import.meta.url).pathname;
 * assert.equal(await DCP_OPTIMIZER_SOURCE.detect(await probeInput(optim)), true);
 * assert.equal(await DCP_OPTIMIZER_SOURCE.detect(await probeInput(new URL("./", import.meta.url).pathname)), false);
 * ```
 * @module
 */
import { basename, join } from "node:path";
import { CkptError } from "../errors.ts";
import { byteLength } from "../formats/state_dict.ts";
import { DcpCheckpoint, openDcpStateDict } from "../formats/dcp.ts";
import {
  DCP_HF_SHARD_NAME,
  isDcpHfListing,
  openDcpHf,
  openDcpHfStateDict,
} from "../formats/dcp_hf.ts";
import { readDcpOptimizer } from "../formats/dcp_optim.ts";
import { toJSONish } from "../formats/torch/values.ts";
import type { InputKind, OptimizerSource } from "./types.ts";
import type { InputProbe } from "./probe.ts";
import type { InspectFile, InspectReport, InspectTensor } from "./report.ts";

/** True when the probe is a folder with a `.metadata` file (a DCP checkpoint). */
export function isDcpProbe(p: InputProbe): boolean {
  return p.isDirectory && p.files.has(".metadata");
}

/**
 * True when the probe is a folder of `HuggingFaceStorageWriter` shards
 * (`shard-<n>-model-<i>-of-<n>.safetensors`, no `.metadata`).
 */
export function isDcpHfProbe(p: InputProbe): boolean {
  return p.isDirectory && isDcpHfListing(p.files);
}

/**
 * Rank of a `__<rank>_<n>.distcp` file name, or of a `shard-<rank+1>-model-<i>-of-<n>.safetensors`
 * one; undefined for other names.
 */
export function dcpRankOf(file: string): number | undefined {
  const m = /^__(\d+)_\d+\.distcp$/.exec(basename(file));
  if (m) return Number(m[1]);
  const hf = DCP_HF_SHARD_NAME.exec(basename(file));
  return hf ? Number(hf[1]) - 1 : undefined;
}

function rangeText(xs: number[]): string {
  const sorted = [...xs].sort((a, b) => a - b);
  const contiguous = sorted.every((x, i) => i === 0 || x === sorted[i - 1]! + 1);
  return contiguous && sorted.length > 2 ? `${sorted[0]}-${sorted.at(-1)}` : sorted.join(",");
}

function shardingSummary(ranks: number[], chunks: number, empty: number, dims: number[]): string {
  const along = dims.length === 0 ? "" : ` along dim ${dims.join("+")}`;
  return `ranks ${rangeText(ranks)}: ${chunks} chunks${along}${
    empty > 0 ? ` (${empty} empty)` : ""
  }`;
}

/** Describes the DCP checkpoint folder `path` (see the module doc). */
export async function inspectDcp(path: string): Promise<InspectReport> {
  await using ckpt = await DcpCheckpoint.open(path, { verifyRecords: false });
  return await describeDcp(ckpt, path, "dcp");
}

/** Describes the `HuggingFaceStorageWriter` shard folder `path` (see the module doc). */
export async function inspectDcpHf(path: string): Promise<InspectReport> {
  await using ckpt = await openDcpHf(path, { verifyRecords: false });
  return await describeDcp(ckpt, path, "dcp-hf");
}

async function describeDcp(
  ckpt: DcpCheckpoint,
  path: string,
  kind: string,
): Promise<InspectReport> {
  const tensors: InspectTensor[] = [];
  const values: Record<string, unknown> = {};
  const perFile = new Map<string, number>();
  for (const e of ckpt.metadata.entries) {
    if (e.kind === "bytes") {
      values[e.key] = toJSONish(await ckpt.value(e));
      perFile.set(e.file, perFile.get(e.file) ?? 0);
      continue;
    }
    const sharding = ckpt.sharding(e);
    const splitDims = e.shape
      .map((
        n,
        d,
      ) => (e.chunks.some((c) => c.sizes[d] !== n && c.sizes.every((s) => s > 0)) ? d : -1))
      .filter((d) => d >= 0);
    for (const c of e.chunks) perFile.set(c.file, (perFile.get(c.file) ?? 0) + 1);
    const ranks = sharding.files.map(dcpRankOf).filter((r): r is number => r !== undefined);
    tensors.push({
      name: e.key,
      dtype: e.dtype,
      shape: [...e.shape],
      bytes: byteLength(e.dtype, e.shape),
      // One file: its name; several: a one-line sharding summary (the CLI's "file" column).
      file: sharding.files.length === 1 ? sharding.files[0]! : shardingSummary(
        ranks,
        sharding.chunks,
        sharding.emptyChunks,
        splitDims,
      ),
      extra: {
        path: [...e.path],
        ranks,
        chunks: sharding.chunks,
        emptyChunks: sharding.emptyChunks,
        splitDims,
        layout: e.chunks.map((c) => ({
          offsets: [...c.offsets],
          sizes: [...c.sizes],
          file: c.file,
        })),
      },
    });
  }
  const files: InspectFile[] = [];
  for (const [file, count] of [...perFile].sort((a, b) => a[0] < b[0] ? -1 : 1)) {
    files.push({ file, bytes: (await Deno.stat(join(path, file))).size, tensors: count });
  }
  const metadata: Record<string, unknown> = {
    format: ckpt.metadata.layout === "huggingface"
      ? "torch.distributed.checkpoint, HuggingFaceStorageWriter shards (no .metadata)"
      : "torch.distributed.checkpoint",
    ranks: new Set(files.map((f) => dcpRankOf(f.file))).size,
  };
  if (ckpt.metadata.version !== undefined) metadata.version = ckpt.metadata.version;
  if (ckpt.metadata.saveId !== undefined) metadata.saveId = ckpt.metadata.saveId;
  if (ckpt.metadata.checkpointId !== undefined) metadata.checkpointId = ckpt.metadata.checkpointId;
  const report: InspectReport = {
    kind,
    path,
    tensors,
    totalBytes: tensors.reduce((n, t) => n + t.bytes, 0),
    metadata,
    files,
  };
  if (Object.keys(values).length > 0) report.tree = values;
  return report;
}

/** The torch.distributed.checkpoint input kind. */
export const DCP_INPUT_KIND: InputKind = {
  name: "dcp",
  summary:
    "torch.distributed.checkpoint folder (.metadata + __<rank>_<n>.distcp), FSDP/FSDP2/DTensor",
  detect: isDcpProbe,
  open: (p, options) => openDcpStateDict(p.path, options.signal ? { signal: options.signal } : {}),
  inspect: (p) => inspectDcp(p.path),
};

/**
 * The `HuggingFaceStorageWriter` shard layout (`save_distributed=True`, no consolidation):
 * `shard-<rank+1>-model-<i>-of-<n>.safetensors` files and no `.metadata`.
 */
export const DCP_HF_INPUT_KIND: InputKind = {
  name: "dcp-hf",
  summary:
    "torch.distributed.checkpoint HuggingFaceStorageWriter shards (shard-<n>-model-<i>-of-<n>.safetensors, no .metadata)",
  detect: isDcpHfProbe,
  open: (p, options) =>
    openDcpHfStateDict(p.path, options.signal ? { signal: options.signal } : {}),
  inspect: (p) => inspectDcpHf(p.path),
};

/** Optimizer state from a torch.distributed.checkpoint folder (FSDP/FSDP2 `optimizer_0/`). */
export const DCP_OPTIMIZER_SOURCE: OptimizerSource = {
  name: "dcp",
  detect: isDcpProbe,
  async load(path, options) {
    const r = await readDcpOptimizer(path, { keyed: options.keys });
    return { value: r.value, paramNames: r.paramNames, close: () => r.close() };
  },
};

/**
 * Optimizer state saved through `HuggingFaceStorageWriter`: recognised so that writeOptim says
 * why it cannot be used (the param_groups values are torch.save records ahead of the safetensors
 * header whose names the layout keeps nowhere) instead of mistaking the folder for something else.
 */
export const DCP_HF_OPTIMIZER_SOURCE: OptimizerSource = {
  name: "dcp-hf",
  detect: isDcpHfProbe,
  async load(path) {
    // Opening reads every header: files with torch.save records are refused there.
    await using ckpt = await openDcpHf(path, { verifyRecords: false });
    throw new CkptError(
      "DCP_UNSUPPORTED",
      `Cannot read optimizer state from "${path}": HuggingFaceStorageWriter shards hold tensors only (${ckpt.metadata.entries.length} here), no param_groups; save optimizer state with FileSystemWriter`,
      { file: path },
    );
  },
};
