/**
 * Small builders shared by the mergeLora tests: f32-encoded tensors, seeded values, in-memory
 * adapters and a backend that records its requests.
 * @module
 */
import { decodeF32, type DType, encodeF32 } from "../../formats/dtype.ts";
import type { LoadedAdapter } from "../../formats/peft.ts";
import { parseLoraConfig } from "../../formats/peft_config.ts";
import { StateDict, tensorFromBytes, type TensorRef } from "../../formats/state_dict.ts";
import type { MergeBackend, MergeRowsRequest } from "../../kernels/types.ts";
import { referenceBackend } from "./_lora_fixtures.ts";

export function t(dtype: DType, shape: number[], values: ArrayLike<number>): TensorRef {
  return tensorFromBytes(dtype, shape, encodeF32(dtype, Float32Array.from(values)));
}

export function seq(n: number, seed: number, scale = 1): number[] {
  const out: number[] = [];
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push((s / 2 ** 32 - 0.5) * scale);
  }
  return out;
}

export async function values(ref: TensorRef): Promise<number[]> {
  return [...decodeF32(ref.dtype, await ref.read())];
}

export function adapter(
  tensors: [string, TensorRef][],
  config: Record<string, unknown> = {},
  name = "a",
): LoadedAdapter {
  return {
    name,
    config: parseLoraConfig({ peft_type: "LORA", r: 2, lora_alpha: 4, ...config }),
    tensors: new StateDict(tensors),
  };
}

export const P = "base_model.model.";

/** A backend that records requests (and merges with the CPU backend). */
export function recording(): { backend: MergeBackend; reqs: MergeRowsRequest[] } {
  const cpu = referenceBackend();
  const reqs: MergeRowsRequest[] = [];
  return {
    reqs,
    backend: {
      kind: "cpu",
      description: "recording",
      mergeRows(req) {
        reqs.push(req);
        return cpu.mergeRows(req);
      },
      dispose: () => cpu.dispose(),
    },
  };
}
