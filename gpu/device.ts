/**
 * WebGPU adapter and device acquisition for ckpt: prefers a high-performance adapter, reports its
 * vendor, description and whether it is a software (fallback) adapter, and requests the limits the
 * merge needs at the adapter's maximum, naming any that falls short.
 *
 * @example Describing what the machine offers
 * ```ts
 * import { acquireGpu } from "./device.ts";
 * import assert from "node:assert/strict";
 *
 * try {
 *   const gpu = await acquireGpu();
 *   assert.equal(typeof gpu.info.isFallbackAdapter, "boolean");
 *   gpu.device.destroy();
 * } catch (e) {
 *   assert.equal((e as { code?: string }).code, "GPU_UNAVAILABLE");
 * }
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";

/** Limits the merge kernels need, with the minimum each must reach. */
export const REQUIRED_GPU_LIMITS: Readonly<Record<string, number>> = {
  maxStorageBuffersPerShaderStage: 5,
  maxComputeInvocationsPerWorkgroup: 64,
  maxComputeWorkgroupSizeX: 64,
  maxComputeWorkgroupStorageSize: 1024,
  maxStorageBufferBindingSize: 1 << 20,
  maxBufferSize: 1 << 20,
  maxComputeWorkgroupsPerDimension: 1024,
};

/** What the adapter and device are, for reports. */
export interface GpuInfo {
  /** Vendor string (or PCI id) of the adapter. */
  vendor: string;
  /** Architecture string, often empty. */
  architecture: string;
  /** Description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  description: string;
  /** True for a software adapter (llvmpipe, lavapipe, WARP, SwiftShader). */
  isFallbackAdapter: boolean;
  /** The limits granted to the device (the ones the merge uses). */
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupsPerDimension: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupStorageSize: number;
    maxStorageBuffersPerShaderStage: number;
  };
  /** Adapter features (e.g. `shader-f16`, `timestamp-query`). */
  features: string[];
}

/** An acquired device with its adapter and description. */
export interface AcquiredGpu {
  /** The adapter. */
  adapter: GPUAdapter;
  /** The device (destroy it when done). */
  device: GPUDevice;
  /** Description for reports. */
  info: GpuInfo;
}

/** Options of {@linkcode acquireGpu}. */
export interface AcquireGpuOptions {
  /** Adapter preference (default `"high-performance"`). */
  powerPreference?: GPUPowerPreference;
  /** Device label (default `"ckpt"`). */
  label?: string;
}

const SOFTWARE = /llvmpipe|lavapipe|swiftshader|softpipe|warp|microsoft basic render/i;

/**
 * Requests an adapter and a device with the merge's limits raised to the adapter's maximum.
 * Throws `GPU_UNAVAILABLE` without WebGPU or an adapter, `GPU_LIMIT` naming the first limit below
 * {@linkcode REQUIRED_GPU_LIMITS}, `GPU_DEVICE` when the device request fails.
 */
export async function acquireGpu(options: AcquireGpuOptions = {}): Promise<AcquiredGpu> {
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (!gpu) {
    throw new CkptError("GPU_UNAVAILABLE", "Cannot use WebGPU: navigator.gpu is not available");
  }
  const adapter = await gpu.requestAdapter({
    powerPreference: options.powerPreference ?? "high-performance",
  });
  if (!adapter) {
    throw new CkptError("GPU_UNAVAILABLE", "Cannot use WebGPU: no adapter was found");
  }
  const limits = adapter.limits as unknown as Record<string, number>;
  for (const [name, min] of Object.entries(REQUIRED_GPU_LIMITS)) {
    const have = limits[name] ?? 0;
    if (have < min) {
      throw new CkptError(
        "GPU_LIMIT",
        `Cannot use the WebGPU adapter: limit ${name} is ${have}, the merge needs at least ${min}`,
        { details: { limit: name, have, need: min } },
      );
    }
  }
  const requiredLimits: Record<string, number> = {};
  for (const name of Object.keys(REQUIRED_GPU_LIMITS)) requiredLimits[name] = limits[name]!;
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({
      label: options.label ?? "ckpt",
      requiredLimits,
    });
  } catch (cause) {
    throw new CkptError("GPU_DEVICE", `Cannot create a WebGPU device: ${String(cause)}`, { cause });
  }
  const ai = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const description = ai.description || ai.device || "";
  const fallback = Boolean(
    ai.isFallbackAdapter ??
      (adapter as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
      SOFTWARE.test(description),
  );
  const dl = device.limits;
  return {
    adapter,
    device,
    info: {
      vendor: ai.vendor,
      architecture: ai.architecture,
      description,
      isFallbackAdapter: fallback || SOFTWARE.test(description),
      limits: {
        maxStorageBufferBindingSize: dl.maxStorageBufferBindingSize,
        maxBufferSize: dl.maxBufferSize,
        maxComputeWorkgroupsPerDimension: dl.maxComputeWorkgroupsPerDimension,
        maxComputeInvocationsPerWorkgroup: dl.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupStorageSize: dl.maxComputeWorkgroupStorageSize,
        maxStorageBuffersPerShaderStage: dl.maxStorageBuffersPerShaderStage,
      },
      features: [...adapter.features].sort(),
    },
  };
}
