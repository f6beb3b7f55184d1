import { StorageHandle } from "../../../formats/torch/unpickle.ts";
import { bytesSource } from "../../../formats/torch/values.ts";

/**
 * A persistent-id loader that gives a CPU FloatStorage "0" of `numel` zeros, and the pickle of
 * that storage's persistent id (`numel` < 256), for the unpickler tests' hand-built tensors.
 */
export function floatStorage(
  numel: number,
): { persistentLoad: () => StorageHandle; storage: string } {
  return {
    persistentLoad: () =>
      new StorageHandle({
        key: "0",
        storageClass: "torch.FloatStorage",
        location: "cpu",
        numel,
        dtype: "F32",
        source: bytesSource(new Uint8Array(4 * numel)),
        file: "x",
      }),
    storage:
      "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK" +
      String.fromCharCode(numel) + "tQ",
  };
}
