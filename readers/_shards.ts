/**
 * The listing part of a shard folder's inspect report, shared by the safetensors and torch shard
 * branches: one entry per tensor and one per shard file (size on disk, tensor count).
 * @module
 */
import { basename } from "node:path";
import type { TensorRef } from "../formats/state_dict.ts";
import type { InspectFile, InspectTensor } from "./report.ts";

/**
 * Lists the tensors of a sharded state dict, whose tensors name their shard in `source`, with
 * `entry`, and totals each shard file in order of first appearance.
 */
export async function listShards(
  sd: Iterable<[string, TensorRef]>,
  entry: (name: string, ref: TensorRef, file: string) => InspectTensor,
): Promise<{ tensors: InspectTensor[]; files: InspectFile[] }> {
  const tensors: InspectTensor[] = [];
  const counts = new Map<string, { path: string; tensors: number }>();
  for (const [name, ref] of sd) {
    const file = basename(ref.source ?? "");
    const c = counts.get(file) ?? { path: ref.source ?? "", tensors: 0 };
    c.tensors++;
    counts.set(file, c);
    tensors.push(entry(name, ref, file));
  }
  const files: InspectFile[] = [];
  for (const [file, c] of counts) {
    files.push({ file, bytes: (await Deno.stat(c.path)).size, tensors: c.tensors });
  }
  return { tensors, files };
}
