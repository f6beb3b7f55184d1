/**
 * Choosing a merge backend: `createMergeBackend("webgpu" | "cpu" | "auto")`.
 *
 * `auto` with `calibrate` (what `mergeLora` passes for merges of 64 M weights and more) measures:
 * when a WebGPU adapter is at hand, both backends merge a few blocks of the adapter's rank and
 * column count, transfers included, and the faster in weights per second runs (WebGPU only when
 * over 10 % faster); the figures are cached per machine (cores, Deno version, the GPUs' PCI ids and
 * driver version, read without loading a driver), rank and column count, with the adapter measured
 * (`~/.cache/ckpt/calibration.json`, or `$CKPT_CACHE_DIR`), and reported with the choice, so they
 * reach the manifest. The cache is read first: when it says the CPU wins, the WebGPU driver is not
 * even loaded (about 70 MiB and 0.2 s on llvmpipe). A 16-core training node can beat a GPU behind
 * slow transfers, or lose to it.
 * Without `calibrate`, `auto` decides by the adapter's kind: WebGPU on a hardware adapter, the CPU
 * on a software (fallback) adapter such as Mesa llvmpipe, where the WebAssembly SIMD workers merge
 * bf16 at several hundred million weights per second while llvmpipe's transfers cap WebGPU well below
 * that (`deno task bench merge`). With no adapter at all it is the CPU. The result always says which
 * backend runs and why.
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
import type { AcquiredGpu } from "../gpu/device.ts";
import type { WebGpuBackendOptions } from "../gpu/merge_webgpu.ts";
import {
  cachedCalibration,
  calibrate,
  type Calibration,
  calibrationFile,
  calibrationKey,
  type CalibrationShape,
  storeCalibration,
} from "./_calibrate.ts";

export type { Calibration, CalibrationShape } from "./_calibrate.ts";

/** Which backend to use: `auto` picks the faster one measured for the adapter at hand. */
export type BackendChoice = "auto" | "webgpu" | "cpu";

/** Options of {@linkcode createMergeBackend}. */
export interface MergeBackendOptions extends CpuBackendOptions, Omit<WebGpuBackendOptions, "gpu"> {
  /** `auto` on a fallback adapter: prefer WebGPU anyway (default false: the CPU is faster there). */
  preferFallbackGpu?: boolean;
  /**
   * `auto` with a WebGPU adapter at hand: merge a few synthetic blocks of this rank and column
   * count on both backends and use the faster (WebGPU only when over 10 % faster). The figures
   * are cached per machine, rank and column count (see `calibrationCache`) and given in the
   * result; a cached CPU win does not load the WebGPU driver. Without it, `auto` decides by the
   * adapter's kind (software: CPU; hardware: WebGPU).
   */
  calibrate?: CalibrationShape;
  /** The calibration cache file; default `$CKPT_CACHE_DIR` or `~/.cache/ckpt`, `calibration.json`;
   * `false`: measure every time. */
  calibrationCache?: string | false;
}

/** A created backend and why it was chosen. */
export interface CreatedMergeBackend {
  /** The backend. */
  backend: MergeBackend;
  /** Why this backend runs (for logs and the manifest). */
  reason: string;
  /** The calibration `auto` decided by, when it calibrated (or found one cached). */
  calibration?: Calibration;
}

/** The WebGPU backend as `auto` owns it: disposing it also destroys the device. */
function ownedWebGpu(
  backend: MergeBackend,
  gpu: { device: { destroy(): void } },
): MergeBackend {
  return {
    kind: backend.kind,
    description: backend.description,
    mergeRows: backend.mergeRows.bind(backend),
    async dispose(): Promise<void> {
      await backend.dispose();
      gpu.device.destroy();
    },
  };
}

/** The GPU, or why none is usable. */
async function acquireOrWhy(): Promise<{ gpu: AcquiredGpu } | { why: string }> {
  const { acquireGpu } = await import("../gpu/device.ts");
  try {
    return { gpu: await acquireGpu() };
  } catch (e) {
    return { why: e instanceof CkptError ? e.message : String(e) };
  }
}

/** The CPU backend when no GPU is usable; `cached`: the calibration that asked for WebGPU. */
async function cpuWithoutGpu(
  options: MergeBackendOptions,
  why: string,
  cached?: Calibration,
): Promise<CreatedMergeBackend> {
  const backend = await createCpuBackend(options);
  if (!cached) return { backend, reason: `auto: cpu, no usable WebGPU adapter (${why})` };
  return {
    backend,
    reason: `auto: cpu (${backend.description}), no usable WebGPU adapter (${why}) ` +
      `though the cache says webgpu is the faster (${figures(cached)})`,
    calibration: cached,
  };
}

/** The adapter's name as calibrations record it. */
function adapterName(gpu: AcquiredGpu): string {
  return `${gpu.info.description}${gpu.info.isFallbackAdapter ? " (fallback)" : ""}`;
}

/** WebGPU runs only when over 10 % faster. */
function webGpuWins(cal: Calibration): boolean {
  return cal.webgpu > cal.cpu * 1.1;
}

/** A calibration's figures, for the reason. */
function figures(cal: Calibration): string {
  return `cpu ${cal.cpu} M weights/s, webgpu ${cal.webgpu} M weights/s on "${cal.adapter}", ${
    cal.cached ? `measured ${cal.measured}, cached` : "measured now"
  }`;
}

/** The CPU backend (`cpu`, or a new one) chosen by `cal`. */
async function cpuFaster(
  cal: Calibration,
  options: MergeBackendOptions,
  cpu?: MergeBackend,
): Promise<CreatedMergeBackend> {
  const backend = cpu ?? await createCpuBackend(options);
  return {
    backend,
    reason: `auto: cpu (${backend.description}), the faster here (${figures(cal)})`,
    calibration: cal,
  };
}

/** The WebGPU backend on `gpu` (`web`, or a new one) chosen by `cal`. */
async function webGpuFaster(
  cal: Calibration,
  options: MergeBackendOptions,
  gpu: AcquiredGpu,
  web?: MergeBackend,
): Promise<CreatedMergeBackend> {
  const { createWebGpuBackend } = await import("../gpu/merge_webgpu.ts");
  web ??= await createWebGpuBackend({ ...options, gpu });
  return {
    backend: ownedWebGpu(web, gpu),
    reason: `auto: webgpu, the faster here (${figures(cal)})`,
    calibration: cal,
  };
}

/** Measures both backends on `gpu` now, caches the figures under `key` and uses the faster. */
async function measureBoth(
  options: MergeBackendOptions,
  shape: CalibrationShape,
  gpu: AcquiredGpu,
  file: string | undefined,
  key: string,
): Promise<CreatedMergeBackend> {
  const { createWebGpuBackend } = await import("../gpu/merge_webgpu.ts");
  let cpu: MergeBackend | undefined;
  let web: MergeBackend | undefined;
  let cal: Calibration;
  try {
    cpu = await createCpuBackend(options);
    web = await createWebGpuBackend({ ...options, gpu });
    cal = await calibrate(cpu, web, adapterName(gpu), shape);
    await storeCalibration(file, key, cal);
  } catch (e) {
    await cpu?.dispose();
    await web?.dispose().catch(() => {});
    gpu.device.destroy();
    throw e;
  }
  if (webGpuWins(cal)) {
    await cpu.dispose();
    return await webGpuFaster(cal, options, gpu, web);
  }
  await web.dispose();
  gpu.device.destroy();
  return await cpuFaster(cal, options, cpu);
}

/**
 * `auto` with `calibrate`: the cache is read first, without touching WebGPU, so a cached CPU win
 * never loads the GPU driver. A cached WebGPU win acquires the GPU (the CPU when none is usable;
 * measuring again when the adapter is another than the one measured); without an entry both
 * backends are measured now.
 */
async function autoByCalibration(
  options: MergeBackendOptions,
  shape: CalibrationShape,
): Promise<CreatedMergeBackend> {
  const file = options.calibrationCache === false
    ? undefined
    : options.calibrationCache ?? calibrationFile();
  const key = calibrationKey(shape);
  const cached = await cachedCalibration(file, key);
  if (cached && !webGpuWins(cached)) return await cpuFaster(cached, options);
  const acquired = await acquireOrWhy();
  if ("why" in acquired) return await cpuWithoutGpu(options, acquired.why, cached);
  const { gpu } = acquired;
  if (cached?.adapter === adapterName(gpu)) return await webGpuFaster(cached, options, gpu);
  return await measureBoth(options, shape, gpu, file, key);
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
  if (choice === "webgpu") {
    const { createWebGpuBackend } = await import("../gpu/merge_webgpu.ts");
    const backend = await createWebGpuBackend(options);
    return { backend, reason: `webgpu requested (${backend.description})` };
  }
  if (options.calibrate && !options.preferFallbackGpu) {
    return await autoByCalibration(options, options.calibrate);
  }
  const acquired = await acquireOrWhy();
  if ("why" in acquired) return await cpuWithoutGpu(options, acquired.why);
  const { gpu } = acquired;
  if (gpu.info.isFallbackAdapter && !options.preferFallbackGpu) {
    gpu.device.destroy();
    const backend = await createCpuBackend(options);
    return {
      backend,
      reason: `auto: cpu (${backend.description}); the WebGPU adapter "${gpu.info.description}" ` +
        `is a software fallback, where the CPU backend measured faster (transfers cap WebGPU)`,
    };
  }
  const { createWebGpuBackend } = await import("../gpu/merge_webgpu.ts");
  const backend = await createWebGpuBackend({ ...options, gpu });
  return {
    backend: ownedWebGpu(backend, gpu),
    reason: `auto: webgpu on ${
      gpu.info.isFallbackAdapter ? "fallback" : "hardware"
    } adapter (${backend.description})`,
  };
}
