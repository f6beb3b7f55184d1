/**
 * WGSL pieces every merge kernel variant shares: the bf16/f16/f32 decode and RNE encode functions
 * (integer bit operations, canonical NaNs), W element loads and packed 4-element stores. Private
 * to the WGSL generators of `gpu/`.
 * @module
 */
import type { MergeDType } from "../kernels/types.ts";

export const CONVERT = /* wgsl */ `
fn bf16_to_f32(h: u32) -> f32 { return bitcast<f32>(h << 16u); }
fn f16_to_f32(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let em = h & 0x7fffu;
  if (em >= 0x7c00u) { return bitcast<f32>(sign | 0x7f800000u | (em << 13u)); }
  if (em >= 0x0400u) { return bitcast<f32>(sign | ((em << 13u) + 0x38000000u)); }
  let sub = f32(em) * bitcast<f32>(0x33800000u); // em · 2^-24, exact and normal in f32
  return bitcast<f32>(sign | bitcast<u32>(sub));
}
fn f32_to_bf16(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return 0xffffu; }
  return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}
fn f32_to_f16(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  let sign = (b >> 16u) & 0x8000u;
  let a = b & 0x7fffffffu;
  if (a > 0x7f800000u) { return 0x7e00u; }
  if (a >= 0x477ff000u) { return sign | 0x7c00u; }
  if (a >= 0x38800000u) {
    let r = a - 0x38000000u;
    return sign | ((r + 0xfffu + ((r >> 13u) & 1u)) >> 13u);
  }
  if (a < 0x33000000u) { return sign; }
  let e = a >> 23u;
  let m = (a & 0x7fffffu) | 0x800000u;
  let s = 126u - e;
  var q = m >> s;
  let rem = m & ((1u << s) - 1u);
  let half = 1u << (s - 1u);
  if (rem > half || (rem == half && (q & 1u) == 1u)) { q = q + 1u; }
  return sign | q;
}
fn f32_to_f32bits(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return 0x7fc00000u; }
  return b;
}
`;

export function wLoad(dtype: MergeDType): string {
  if (dtype === "F32") return "fn w_at(e: u32) -> f32 { return bitcast<f32>(W[e]); }";
  const dec = dtype === "BF16" ? "bf16_to_f32" : "f16_to_f32";
  return `fn w_at(e: u32) -> f32 {
  let word = W[e >> 1u];
  return ${dec}(select(word & 0xffffu, word >> 16u, (e & 1u) == 1u));
}`;
}

export function encodeFn(dtype: MergeDType): string {
  return dtype === "BF16" ? "f32_to_bf16" : dtype === "F16" ? "f32_to_f16" : "f32_to_f32bits";
}

/** Stores 4 merged values starting at element `e0` (a multiple of 4) into the packed output. */
export function store4(dtype: MergeDType): string {
  const enc = encodeFn(dtype);
  if (dtype === "F32") {
    return `fn store4(e0: u32, y: vec4<f32>) {
  O[e0] = ${enc}(y.x); O[e0 + 1u] = ${enc}(y.y); O[e0 + 2u] = ${enc}(y.z); O[e0 + 3u] = ${enc}(y.w);
}`;
  }
  return `fn store4(e0: u32, y: vec4<f32>) {
  O[e0 >> 1u] = ${enc}(y.x) | (${enc}(y.y) << 16u);
  O[(e0 >> 1u) + 1u] = ${enc}(y.z) | (${enc}(y.w) << 16u);
}`;
}
