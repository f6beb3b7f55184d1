/**
 * Choosing a merge backend: `createMergeBackend("webgpu" | "cpu" | "auto")`.
 *
 * `auto` uses WebGPU on a hardware adapter. On a software (fallback) adapter such as Mesa llvmpipe,
 * or with no adapter at all, it uses the CPU backend: measured here (`deno task bench merge`), the
 * WebAssembly SIMD workers merge bf16 at several hundred million weights per second while llvmpipe's
 * buffer transfers alone cap WebGPU well below that. The result always says which backend runs and why.
 *
 * @example The CPU backend
 * ```ts
 * import { createMergeBackend } from "./backend.ts";
 * import assert from "node:assert/strict";
 *
 * const { backend, reason } = await createMergeBackend("cpu");
 * assert.equal(backend.kind, "cpu");
 * assert.match(reason, /requested/);
 * const out = await backend.mergeRows({
 *   name: "w", wDtype: "F32", outDtype: "F32", rows: 1, cols: 2, rank: 1,
 *   w: new Uint8Array(new Float32Array([1, 2]).buffer),
 *   a: new Float32Array([3, 4]), b: new Float32Array([0.5]), scale: 2,
 * });
 * assert.deepEqual([...new Float32Array(out.buffer, out.byteOffset, 2)], [4, 6]);
 * await backend.dispose();
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import type { MergeBackend } from "../kernels/types.ts";
import { type CpuBackendOptions, createCpuBackend } from "../kernels/cpu/backend.ts";
import type { WebGpuBackendOptions } from "../gpu/merge_webgpu.ts";

/** Which backend to use: `auto` picks the faster one measured for the adapter at hand. */
export type BackendChoice = "auto" | "webgpu" | "cpu";

/** Options of {@linkcode createMergeBackend}. */
export interface MergeBackendOptions extends CpuBackendOptions, Omit<WebGpuBackendOptions, "gpu"> {
  /** `auto` on a fallback adapter: prefer WebGPU anyway (default false: the CPU is faster there). */
  preferFallbackGpu?: boolean;
}

/** A created backend and why it was chosen. */
export interface CreatedMergeBackend {
  /** The backend. */
  backend: MergeBackend;
  /** Why this backend runs (for logs and the manifest). */
  reason: string;
}

/**
 * Creates the merge backend for `choice`. `webgpu` fails with `GPU_UNAVAILABLE`, `GPU_LIMIT` or
 * `GPU_DEVICE` when no usable adapter or device can be had; `auto` never fails for lack of a GPU:
 * WebGPU on a hardware adapter, the CPU backend on a fallback adapter (unless
 * `preferFallbackGpu`) or without an adapter.
 */
export async function createMergeBackend(
  choice: BackendChoice,
  options: MergeBackendOptions = {},
): Promise<CreatedMergeBackend> {
  if (choice === "cpu") {
    const backend = await createCpuBackend(options);
    return { backend, reason: `cpu requested (${backend.description})` };
  }
  if (choice !== "webgpu" && choice !== "auto") {
    throw new CkptError("MERGE_BACKEND", `Cannot create merge backend: unknown choice "${choice}"`);
  }
  const { acquireGpu } = await import("../gpu/device.ts");
  const { createWebGpuBackend } = await import("../gpu/merge_webgpu.ts");
  if (choice === "webgpu") {
    const backend = await createWebGpuBackend(options);
    return { backend, reason: `webgpu requested (${backend.description})` };
  }
  let gpu;
  try {
    gpu = await acquireGpu();
  } catch (e) {
    const backend = await createCpuBackend(options);
    const why = e instanceof CkptError ? e.message : String(e);
    return { backend, reason: `auto: cpu, no usable WebGPU adapter (${why})` };
  }
  if (gpu.info.isFallbackAdapter && !options.preferFallbackGpu) {
    gpu.device.destroy();
    const backend = await createCpuBackend(options);
    return {
      backend,
      reason: `auto: cpu (${backend.description}); the WebGPU adapter "${gpu.info.description}" ` +
        `is a software fallback, where the CPU backend measured faster (transfers cap WebGPU)`,
    };
  }
  const backend = await createWebGpuBackend({ ...options, gpu });
  const owned = {
    kind: backend.kind,
    description: backend.description,
    mergeRows: backend.mergeRows.bind(backend),
    async dispose(): Promise<void> {
      await backend.dispose();
      gpu.device.destroy();
    },
  } satisfies MergeBackend;
  return {
    backend: owned,
    reason: `auto: webgpu on ${
      gpu.info.isFallbackAdapter ? "fallback" : "hardware"
    } adapter (${backend.description})`,
  };
}
