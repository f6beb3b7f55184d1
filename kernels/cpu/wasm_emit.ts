/**
 * A tiny WebAssembly binary emitter: just the opcodes the merge kernel uses (integer arithmetic,
 * loads and stores, structured loops and 128-bit SIMD), so the kernel is generated at startup from
 * readable TypeScript with no build step and no `wat2wasm`.
 *
 * @example A module that adds two numbers
 * ```ts
 * import { I32, op, wasmModule } from "./wasm_emit.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = wasmModule({
 *   params: [I32, I32],
 *   locals: [],
 *   body: [op.localGet(0), op.localGet(1), op.i32Add],
 *   results: [I32],
 * });
 * const { instance } = await WebAssembly.instantiate(bytes, {});
 * assert.equal((instance.exports.run as (a: number, b: number) => number)(2, 3), 5);
 * ```
 * @module
 */

/** Value type byte: i32. */
export const I32 = 0x7f;
/** Value type byte: f32. */
export const F32 = 0x7d;
/** Value type byte: v128. */
export const V128 = 0x7b;
/** Value type byte: f64. */
export const F64 = 0x7c;

/** Unsigned LEB128. */
export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n = Math.floor(n / 128);
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 (32-bit range). */
export function sleb(n: number): number[] {
  const out: number[] = [];
  n |= 0;
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

function simd(code: number, ...imm: number[]): number[] {
  return [0xfd, ...uleb(code), ...imm];
}

function memarg(align: number, offset: number): number[] {
  return [...uleb(align), ...uleb(offset)];
}

function f32Bytes(x: number): number[] {
  return [...new Uint8Array(new Float32Array([x]).buffer)];
}

/** Instruction encoders (each returns the bytes of one instruction). */
export const op = {
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  if_: [0x04, 0x40],
  else_: [0x05],
  end: [0x0b],
  br: (depth: number): number[] => [0x0c, ...uleb(depth)],
  brIf: (depth: number): number[] => [0x0d, ...uleb(depth)],
  localGet: (i: number): number[] => [0x20, ...uleb(i)],
  localSet: (i: number): number[] => [0x21, ...uleb(i)],
  localTee: (i: number): number[] => [0x22, ...uleb(i)],
  i32Const: (v: number): number[] => [0x41, ...sleb(v)],
  f32Const: (v: number): number[] => [0x43, ...f32Bytes(v)],
  i32Eqz: [0x45],
  i32LtU: [0x49],
  i32GeU: [0x4f],
  i32Add: [0x6a],
  i32Sub: [0x6b],
  i32Mul: [0x6c],
  i32And: [0x71],
  i32Shl: [0x74],
  f32Load: (offset = 0): number[] => [0x2a, ...memarg(2, offset)],
  // SIMD
  v128Load: (offset = 0): number[] => simd(0x00, ...memarg(0, offset)),
  v128Load32Splat: (offset = 0): number[] => simd(0x09, ...memarg(2, offset)),
  v128Store: (offset = 0): number[] => simd(0x0b, ...memarg(0, offset)),
  v128Const: (lanes: readonly number[]): number[] =>
    simd(0x0c, ...new Uint8Array(new Uint32Array(lanes).buffer)),
  i32x4Splat: simd(0x11),
  f32x4Splat: simd(0x13),
  i32x4GtU: simd(0x3c),
  f32x4Ne: simd(0x42),
  v128And: simd(0x4e),
  v128Or: simd(0x50),
  v128Bitselect: simd(0x52),
  i16x8NarrowI32x4U: simd(0x86),
  i32x4ExtendLowI16x8U: simd(0xa9),
  i32x4ExtendHighI16x8U: simd(0xaa),
  i32x4Shl: simd(0xab),
  i32x4ShrU: simd(0xad),
  i32x4Add: simd(0xae),
  i32x4MaxU: simd(0xb9),
  f32x4Abs: simd(0xe0),
  f32x4Add: simd(0xe4),
  f32x4Mul: simd(0xe6),
  i8x16Shuffle: (lanes: readonly number[]): number[] => simd(0x0d, ...lanes),
  f64x2ExtractLane: (lane: number): number[] => simd(0x21, lane),
  f64x2PromoteLowF32x4: simd(0x5f),
  f64x2Abs: simd(0xec),
  f64x2Add: simd(0xf0),
  f64x2Sub: simd(0xf1),
  f64x2Mul: simd(0xf2),
  f64x2Pmax: simd(0xf7),
} as const;

/** One function of a single-function module. */
export interface WasmFunction {
  /** Parameter types. */
  params: number[];
  /** Extra local types, in order after the parameters. */
  locals: number[];
  /** Instructions (without the final `end`). */
  body: (number[] | readonly number[])[];
  /** Result types (default none). */
  results?: number[];
  /** Import a shared memory `env.mem` with this many maximum pages (default: no memory). */
  sharedMemoryMaxPages?: number;
}

function section(id: number, content: number[]): number[] {
  return [id, ...uleb(content.length), ...content];
}

function name(s: string): number[] {
  const b = new TextEncoder().encode(s);
  return [...uleb(b.length), ...b];
}

/** Assembles a module exporting one function `run`. */
export function wasmModule(fn: WasmFunction): Uint8Array<ArrayBuffer> {
  const results = fn.results ?? [];
  const type = section(1, [
    1,
    0x60,
    ...uleb(fn.params.length),
    ...fn.params,
    ...uleb(results.length),
    ...results,
  ]);
  const imports = fn.sharedMemoryMaxPages === undefined ? [] : section(2, [
    1,
    ...name("env"),
    ...name("mem"),
    0x02,
    0x03,
    ...uleb(1),
    ...uleb(fn.sharedMemoryMaxPages),
  ]);
  const funcs = section(3, [1, 0]);
  const exports = section(7, [1, ...name("run"), 0x00, 0]);
  const localDecl: number[] = [];
  for (const t of fn.locals) localDecl.push(1, t);
  const body = [...uleb(fn.locals.length), ...localDecl, ...fn.body.flat(), 0x0b];
  const code = section(10, [1, ...uleb(body.length), ...body]);
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...type,
    ...imports,
    ...funcs,
    ...exports,
    ...code,
  ]);
}
