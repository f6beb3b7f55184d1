/**
 * The plain-data report `ckpt inspect` prints and {@linkcode ../readers/inspect.ts} returns:
 * tensors with dtype, shape, size and file; totals; metadata. Every input kind's `inspect` builds
 * one, reading only headers, never tensor data.
 * @module
 */

/** The kinds of checkpoint the built-in readers describe. */
export type InspectKind =
  | "safetensors"
  | "hf-shards"
  | "torch"
  | "torch-shards"
  | "dcp"
  | "dcp-hf";

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

/** What `inspectPath` returns: plain data, ready for `JSON.stringify`. */
export interface InspectReport {
  /** Detected kind: an {@linkcode InspectKind}, or the name of an extra input kind. */
  kind: string;
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
