/**
 * Private: the typed content of a DCP `.metadata` file, shared by the record layer
 * (`_dcp_records.ts`) and the checkpoint reader. Public API in `dcp.ts`.
 * @module
 */
import type { DType } from "./dtype.ts";

/** A path item of `planner_data`: dict keys are strings, list positions are ints. */
export type DcpPathItem = string | number;

/** One chunk of a sharded tensor and where its record lives. */
export interface DcpChunk {
  /** Start of the chunk in the full tensor, per dimension (`[]` for 0-d). */
  readonly offsets: readonly number[];
  /** Extent of the chunk, per dimension. */
  readonly sizes: readonly number[];
  /** File holding the record, relative to the checkpoint folder (`__1_0.distcp`). */
  readonly file: string;
  /** Byte offset of the record (a torch.save zip) in {@linkcode DcpChunk.file}. */
  readonly offset: number;
  /** Byte length of the record. */
  readonly length: number;
}

/** A tensor entry of the metadata. */
export interface DcpTensorEntry {
  /** Always `"tensor"`. */
  readonly kind: "tensor";
  /** Flat key (`state.0.weight.exp_avg`). */
  readonly key: string;
  /** Path from `planner_data` (the nesting the key was flattened from). */
  readonly path: readonly DcpPathItem[];
  /** Element type. */
  readonly dtype: DType;
  /** Full shape. */
  readonly shape: readonly number[];
  /** `requires_grad` from the tensor properties. */
  readonly requiresGrad: boolean;
  /** The chunks, in metadata order. */
  readonly chunks: readonly DcpChunk[];
}

/** A non-tensor value (a bytes item: a `torch.save`d Python object). */
export interface DcpBytesEntry {
  /** Always `"bytes"`. */
  readonly kind: "bytes";
  /** Flat key (`param_groups.0.lr`). */
  readonly key: string;
  /** Path from `planner_data`. */
  readonly path: readonly DcpPathItem[];
  /** File holding the record. */
  readonly file: string;
  /** Byte offset of the record. */
  readonly offset: number;
  /** Byte length of the record. */
  readonly length: number;
}

/** One entry of `state_dict_metadata`. */
export type DcpEntry = DcpTensorEntry | DcpBytesEntry;

/** The typed content of a `.metadata` file. */
export interface DcpMetadata {
  /** Entries in `state_dict_metadata` order. */
  readonly entries: readonly DcpEntry[];
  /** `Metadata.version` (torch 2.7+), if present. */
  readonly version?: string;
  /** `StorageMeta.save_id`, if present. */
  readonly saveId?: string;
  /** `StorageMeta.checkpoint_id` as a string, if present. */
  readonly checkpointId?: string;
  /**
   * `"huggingface"` when there is no `.metadata` and the entries were put together from the
   * safetensors headers of `HuggingFaceStorageWriter` shards; undefined for a `.metadata` folder.
   */
  readonly layout?: "huggingface";
}
