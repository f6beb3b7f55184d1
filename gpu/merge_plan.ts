/**
 * Planning a WebGPU merge as plain data: which kernel variant a request takes
 * ({@linkcode MergeKernelSpec}, also the pipeline cache key) and how its rows split into blocks that
 * fit the adapter's binding and buffer limits, with large dispatches folded into two dimensions.
 * Nothing here touches a GPU. The kernels themselves: `gpu/merge_shader.ts`.
 *
 * @example Planning a merge
 * ```ts
 * import { planMerge } from "./merge_plan.ts";
 * import assert from "node:assert/strict";
 *
 * const plan = planMerge(
 *   { rows: 4096, cols: 4096, rank: 16, wDtype: "BF16", outDtype: "BF16", dora: false },
 *   { maxStorageBufferBindingSize: 128 << 20, maxBufferSize: 2 ** 31 - 1, maxComputeWorkgroupsPerDimension: 65535 },
 * );
 * assert.equal(plan.spec.variant, "aligned");
 * assert.equal(plan.blocks.length, 1);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { MERGE_DTYPE_SIZE, type MergeDType } from "../kernels/types.ts";

/** Which kernel layout. */
export type MergeKernelVariant = "aligned" | "flat" | "dora";

/** Everything a kernel's source depends on (and so its pipeline cache key). */
export interface MergeKernelSpec {
  /** Kernel layout. */
  variant: MergeKernelVariant;
  /** Dtype of W. */
  wDtype: MergeDType;
  /** Dtype of the output. */
  outDtype: MergeDType;
  /** Rank, a compile-time constant of the kernel. */
  rank: number;
  /** Rows per invocation (`aligned` only; 1 otherwise). */
  rowsPerInvocation: number;
  /** Invocations per workgroup (64 for `dora`). */
  workgroupSize: number;
}

/** Limits the planner needs (a subset of `GPUSupportedLimits`). */
export interface MergeLimits {
  /** Largest storage binding in bytes. */
  maxStorageBufferBindingSize: number;
  /** Largest buffer in bytes. */
  maxBufferSize: number;
  /** Largest dispatch per dimension. */
  maxComputeWorkgroupsPerDimension: number;
}

/** One dispatch: a block of rows with its buffer sizes and workgroup grid. */
export interface MergeBlockPlan {
  /** First row (in the request). */
  row0: number;
  /** One past the last row. */
  row1: number;
  /** Workgroups needed. */
  workgroups: number;
  /** The folded grid `[x, y]` (`x·y ≥ workgroups`; the kernel skips the excess). */
  dispatch: [number, number];
  /** Bytes of the W binding (padded to whole 4-element groups). */
  wBytes: number;
  /** Bytes of the output binding (padded like W). */
  outBytes: number;
  /** Bytes of the B binding. */
  bBytes: number;
}

/** The plan of one request: the kernel and its blocks. */
export interface MergePlan {
  /** The kernel to run. */
  spec: MergeKernelSpec;
  /** Bytes of the A binding (the whole A). */
  aBytes: number;
  /** Blocks, in row order. */
  blocks: MergeBlockPlan[];
}

/** Shape of a merge request, as the planner sees it. */
export interface MergeShape {
  /** Rows of the request. */
  rows: number;
  /** Columns. */
  cols: number;
  /** Rank. */
  rank: number;
  /** Dtype of W. */
  wDtype: MergeDType;
  /** Dtype of the output. */
  outDtype: MergeDType;
  /** True with a DoRA magnitude. */
  dora: boolean;
}

/** Options of {@linkcode planMerge}. */
export interface MergePlanOptions {
  /** Rows per invocation of the aligned kernel (default 4). */
  rowsPerInvocation?: number;
  /** Invocations per workgroup of the aligned/flat kernels (default 64). */
  workgroupSize?: number;
  /** Upper bound on W/output bytes per block, below the binding limit (default: the limit). */
  maxBlockBytes?: number;
}

/** A stable string naming a kernel spec (the pipeline cache key). */
export function pipelineKey(spec: MergeKernelSpec): string {
  return `merge:${spec.variant}:${spec.wDtype}>${spec.outDtype}:r${spec.rank}:rows${spec.rowsPerInvocation}:wg${spec.workgroupSize}`;
}

/**
 * Folds `groups` workgroups into a grid `[x, y]` with both at most `maxPerDim` and `x·y ≥ groups`
 * (the kernel computes the linear id `y·x_total + x` and skips ids past `groups`).
 */
export function foldDispatch(groups: number, maxPerDim: number): [number, number] {
  if (groups <= maxPerDim) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / maxPerDim);
  if (y > maxPerDim) {
    throw new CkptError(
      "GPU_DISPATCH_TOO_LARGE",
      `Cannot dispatch ${groups} workgroups: more than ${maxPerDim}² in two dimensions`,
    );
  }
  return [Math.ceil(groups / y), y];
}

/** Plans a merge: picks the kernel and splits the rows into blocks within the limits. */
export function planMerge(
  shape: MergeShape,
  limits: MergeLimits,
  options: MergePlanOptions = {},
): MergePlan {
  const { rows, cols, rank, wDtype, outDtype, dora } = shape;
  const variant: MergeKernelVariant = dora ? "dora" : cols % 4 === 0 ? "aligned" : "flat";
  const rowsPer = variant === "aligned" ? Math.max(1, options.rowsPerInvocation ?? 4) : 1;
  const wg = variant === "dora" ? 64 : Math.max(1, options.workgroupSize ?? 64);
  const spec: MergeKernelSpec = {
    variant,
    wDtype,
    outDtype,
    rank,
    rowsPerInvocation: rowsPer,
    workgroupSize: wg,
  };
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  const aBytes = Math.max(16, rank * cols * 4);
  if (aBytes > binding) {
    throw new CkptError(
      "GPU_LIMIT",
      `Cannot merge on this adapter: factor A [${rank}, ${cols}] needs ${aBytes} bytes, over maxStorageBufferBindingSize ${binding}`,
      { details: { limit: "maxStorageBufferBindingSize", have: binding, need: aBytes } },
    );
  }
  const cap = Math.min(binding, options.maxBlockBytes ?? binding);
  const elemBytes = Math.max(MERGE_DTYPE_SIZE[wDtype], MERGE_DTYPE_SIZE[outDtype]);
  // whole rows whose padded (to 4 elements) W / output fit the cap; B rows fit too
  let rowsMax = Math.floor((Math.floor(cap / elemBytes) - 4) / Math.max(cols, 1));
  if (rank > 0) rowsMax = Math.min(rowsMax, Math.floor(binding / (rank * 4)));
  if (rowsMax < 1) {
    throw new CkptError(
      "GPU_LIMIT",
      `Cannot merge on this adapter: one row of ${cols} ${wDtype} elements exceeds the binding limit ${cap}`,
      { details: { limit: "maxStorageBufferBindingSize", have: cap, need: cols * elemBytes } },
    );
  }
  const blocks: MergeBlockPlan[] = [];
  for (let row0 = 0; row0 < rows || (rows === 0 && blocks.length === 0); row0 += rowsMax) {
    const row1 = Math.min(rows, row0 + rowsMax);
    const n = (row1 - row0) * cols;
    const padded = Math.ceil(n / 4) * 4;
    const invocations = variant === "aligned"
      ? Math.ceil((row1 - row0) / rowsPer) * (cols / 4)
      : variant === "flat"
      ? padded / 4
      : (row1 - row0) * 64;
    const workgroups = Math.ceil(invocations / wg);
    blocks.push({
      row0,
      row1,
      workgroups,
      dispatch: foldDispatch(workgroups, limits.maxComputeWorkgroupsPerDimension),
      wBytes: Math.max(16, padded * MERGE_DTYPE_SIZE[wDtype]),
      outBytes: Math.max(16, padded * MERGE_DTYPE_SIZE[outDtype]),
      bBytes: Math.max(16, (row1 - row0) * rank * 4),
    });
    if (rows === 0) break;
  }
  return { spec, aBytes, blocks };
}
