/**
 * The CPU merge backend (temporary scalar version; the WebAssembly SIMD worker version replaces it).
 * @module
 */
import type { MergeBackend, MergeRowsRequest } from "./types.ts";
import { mergeRowsReference } from "./reference.ts";

/** Options of {@linkcode createCpuBackend}. */
export interface CpuBackendOptions {
  /** Worker count (default: `navigator.hardwareConcurrency`, at most 8). */
  workers?: number;
}

/** Creates the CPU backend. */
export function createCpuBackend(_options: CpuBackendOptions = {}): Promise<MergeBackend> {
  return Promise.resolve({
    kind: "cpu",
    description: "cpu: scalar JavaScript",
    mergeRows(req: MergeRowsRequest): Promise<Uint8Array> {
      try {
        return Promise.resolve(mergeRowsReference(req));
      } catch (e) {
        return Promise.reject(e);
      }
    },
    dispose(): Promise<void> {
      return Promise.resolve();
    },
  });
}
