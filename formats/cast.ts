/**
 * Casting tensor bytes between float dtypes: decode to f32, round once to nearest even into the
 * target (`formats/dtype.ts` holds the conversions). {@linkcode castBytes} for bytes at hand,
 * {@linkcode castRef} for a lazy tensor that converts when read.
 *
 * @example Casting a tensor lazily
 * ```ts
 * import { castRef } from "./cast.ts";
 * import { tensorFromBytes } from "./state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const f32 = tensorFromBytes("F32", [2], new Uint8Array(new Float32Array([1, -2]).buffer));
 * const bf16 = castRef(f32, "BF16");
 * assert.equal(bf16.dtype, "BF16");
 * assert.deepEqual([...new Uint16Array((await bf16.read()).slice().buffer)], [0x3f80, 0xc000]);
 * ```
 * @module
 */
import { decodeF32, type DType, encodeF32, isFloatDType } from "./dtype.ts";
import type { TensorRef } from "./state_dict.ts";
import { phaseClock } from "./phase_clock.ts";

/**
 * `bytes` of `from` as `to`: the same bytes when the dtypes are equal, else decoded to f32 and
 * encoded (RNE). `DTYPE_NOT_FLOAT` when the dtypes differ and one of them is not a float dtype.
 *
 * @example
 * ```ts
 * import { castBytes } from "./cast.ts";
 * import assert from "node:assert/strict";
 *
 * const f16 = castBytes("F32", "F16", new Uint8Array(new Float32Array([1]).buffer));
 * assert.deepEqual([...new Uint16Array(f16.buffer, f16.byteOffset, 1)], [0x3c00]);
 * ```
 */
export function castBytes(from: DType, to: DType, bytes: Uint8Array): Uint8Array {
  if (from === to) return bytes;
  const t0 = phaseClock.start();
  const out = encodeF32(to, decodeF32(from, bytes));
  phaseClock.stop("cast", t0, bytes.byteLength);
  return out;
}

/**
 * A lazy ref that reads `ref` and converts float values to `to` (RNE); others are returned as is.
 * A ref that computes its values (one with {@linkcode TensorRef.cast}, such as a LoRA-merged
 * weight) is asked for `to` directly, so that its values are rounded once, into `to`, not first
 * into its own dtype and then again.
 */
export function castRef(ref: TensorRef, to: DType): TensorRef {
  if (ref.dtype === to || !isFloatDType(ref.dtype) || !isFloatDType(to)) return ref;
  if (ref.cast) return ref.cast(to);
  const from = ref.dtype;
  return {
    dtype: to,
    shape: ref.shape,
    source: `${ref.source ?? "memory"} as ${to}`,
    async read(rowStart?: number, rowEnd?: number): Promise<Uint8Array> {
      return castBytes(from, to, await ref.read(rowStart, rowEnd));
    },
  };
}
