/**
 * The bit-level float conversions behind `formats/dtype.ts`: f32 bits to and from bf16, f16 and the
 * two float8 formats, with the rounding and NaN/Inf rules of torch 2.6 on CPU, and the decode tables.
 * Private to `formats/dtype.ts`, which exports the value-level conversions.
 *
 * Every encoder takes an f32 value (a JS number is first rounded to f32 with
 * Math.fround, exactly as `torch.tensor(x, dtype=torch.float32)` would) and rounds to nearest, ties
 * to even, with the bit patterns torch 2.6 produces on CPU (checked against the peer):
 * - BF16: NaN -> 0xFFFF (torch's vectorized and scalar CPU casts both give 0xFFFF).
 * - F16: NaN keeps its sign and top payload bits and becomes quiet (sign | 0x7E00 | payload >> 13).
 * - F8_E4M3 (torch.float8_e4m3fn): no Inf; |x| that rounds above 448 (including Inf and NaN)
 *   becomes NaN (sign | 0x7F).
 * - F8_E5M2: |x| >= 65536 or Inf -> Inf (sign | 0x7C); NaN -> sign | 0x7F.
 * @module
 */

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** The bits of `x` rounded to f32. */
export function f32Bits(x: number): number {
  f32Scratch[0] = x;
  return u32Scratch[0]!;
}

/** The f32 value of 32 bits. */
export function f32FromBits(bits: number): number {
  u32Scratch[0] = bits;
  return f32Scratch[0]!;
}

/**
 * Rounds the magnitude `a` (f32 bits without sign, below the target's smallest normal) to an
 * integer number of target subnormal ulps, ties to even. `shiftBase` is 150 minus log2 of that
 * ulp (f16: 126, e4m3: 141, e5m2: 134).
 */
function roundSubnormal(a: number, shiftBase: number): number {
  const e = a >>> 23;
  const shift = shiftBase - e;
  if (e === 0 || shift > 25) return 0;
  const m = (a & 0x7fffff) | 0x800000;
  let q = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (q & 1) === 1)) q++;
  return q;
}

/** bf16 bits from f32 bits (RNE; NaN -> 0xFFFF like torch). */
export function bf16FromBits(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** f16 bits from f32 bits (RNE, subnormals, NaN payload kept and quieted). */
export function f16FromBits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  let a = u & 0x7fffffff;
  if (a >= 0x47800000) {
    if (a > 0x7f800000) return sign | 0x7e00 | ((a >>> 13) & 0x3ff);
    return sign | 0x7c00;
  }
  if (a < 0x38800000) return sign | roundSubnormal(a, 126);
  a += -0x38000000 + 0xfff + ((a >>> 13) & 1);
  return sign | (a >>> 13);
}

/** float8_e4m3fn bits from f32 bits (torch's `fp8e4m3fn_from_fp32_value`). */
export function f8e4m3FromBits(u: number): number {
  const sign = (u >>> 24) & 0x80;
  let a = u & 0x7fffffff;
  if (a >= 0x43f00000) return sign | 0x7f;
  if (a < 0x3c800000) return sign | roundSubnormal(a, 141);
  a += -0x3c000000 + 0x7ffff + ((a >>> 20) & 1);
  return sign | (a >>> 20);
}

/** float8_e5m2 bits from f32 bits (torch's `fp8e5m2_from_fp32_value`). */
export function f8e5m2FromBits(u: number): number {
  const sign = (u >>> 24) & 0x80;
  let a = u & 0x7fffffff;
  if (a >= 0x47800000) return sign | (a > 0x7f800000 ? 0x7f : 0x7c);
  if (a < 0x38800000) return sign | roundSubnormal(a, 134);
  a += -0x38000000 + 0xfffff + ((a >>> 21) & 1);
  return sign | (a >>> 21);
}

/** Decodes a small float (no implicit Inf handling) of `ebits`/`mbits` with the given bias. */
function smallFloatToF32(bits: number, ebits: number, mbits: number, nanAll: boolean): number {
  const sign = (bits >> (ebits + mbits)) & 1 ? -1 : 1;
  const e = (bits >> mbits) & ((1 << ebits) - 1);
  const m = bits & ((1 << mbits) - 1);
  const bias = (1 << (ebits - 1)) - 1;
  const emax = (1 << ebits) - 1;
  if (nanAll) {
    // e4m3fn: only S.1111.111 is NaN, no Inf.
    if (e === emax && m === (1 << mbits) - 1) return NaN;
  } else if (e === emax) {
    return m === 0 ? sign * Infinity : NaN;
  }
  if (e === 0) return sign * m * 2 ** (1 - bias - mbits);
  return sign * (1 + m / (1 << mbits)) * 2 ** (e - bias);
}

let f16Table: Uint32Array | undefined;
let f8e4m3Table: Uint32Array | undefined;
let f8e5m2Table: Uint32Array | undefined;

/** f32 bits of every f16 pattern (256 KiB, built on first use); NaNs come out quiet like torch's. */
export function f16ToF32Table(): Uint32Array {
  if (f16Table) return f16Table;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0x1f) t[h] = sign | 0x7f800000 | (m << 13) | (m === 0 ? 0 : 0x400000); // quiet NaN
    else if (e !== 0) t[h] = sign | ((e + 112) << 23) | (m << 13);
    else if (m === 0) t[h] = sign;
    else t[h] = (sign | f32Bits(m * 2 ** -24)) >>> 0;
  }
  f16Table = t;
  return t;
}

/**
 * f32 bits of every f8 pattern, as torch decodes them: e5m2 through f16 (`b << 8`), so NaN payloads
 * carry over; e4m3fn NaN (S.1111.111) becomes sign | 0x7FF00000 (c10 `fp8e4m3fn_to_fp32_value`).
 */
export function f8Table(e4m3: boolean): Uint32Array {
  if (e4m3 && f8e4m3Table) return f8e4m3Table;
  if (!e4m3 && f8e5m2Table) return f8e5m2Table;
  const t = new Uint32Array(256);
  const f16 = f16ToF32Table();
  for (let b = 0; b < 256; b++) {
    if (!e4m3) t[b] = f16[b << 8]!;
    else if ((b & 0x7f) === 0x7f) t[b] = ((b & 0x80) << 24 | 0x7ff00000) >>> 0;
    else t[b] = (((b & 0x80) << 24) | f32Bits(Math.abs(smallFloatToF32(b, 4, 3, true)))) >>> 0;
  }
  if (e4m3) f8e4m3Table = t;
  else f8e5m2Table = t;
  return t;
}
