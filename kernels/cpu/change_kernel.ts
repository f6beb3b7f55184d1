/**
 * The WebAssembly SIMD kernel of the ‖ΔW‖ sums for bf16 blocks (W and W' both bf16, the common
 * case): `run(wPtr, outPtr, groups)` reads `groups × 8` elements of each, widens them to f32 and
 * then f64, and returns the two f64 lanes of Σ W², of Σ (W' − W)² and of max |W' − W| (pmax: a NaN
 * difference is skipped, as the scalar sums skip it). The differences and squares are computed in
 * f64 like the scalar path (`merge/_lora_change.ts`), so only the order of the additions differs.
 * Private to the CPU backend (`_rows.ts`).
 * @module
 */
import { F64, I32, op, V128, wasmModule } from "./wasm_emit.ts";
import { KERNEL_MAX_PAGES } from "./kernel.ts";

const HIGH_HALF = [8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7];

/** The module's bytes. */
export function changeSumsWasm(): Uint8Array<ArrayBuffer> {
  // params: 0 wPtr, 1 outPtr, 2 groups; locals: 3 ΣW², 4 ΣΔ², 5 max, 6 W×8, 7 W'×8,
  // 8 W as f32x4, 9 W' as f32x4, 10 W as f64x2, 11 W' as f64x2, 12 Δ as f64x2
  const body: (number[] | readonly number[])[] = [];
  for (const acc of [3, 4, 5]) body.push(op.v128Const([0, 0, 0, 0]), op.localSet(acc));
  body.push(op.block, op.localGet(2), op.i32Eqz, op.brIf(0), op.loop);
  body.push(op.localGet(0), op.v128Load(), op.localSet(6));
  body.push(op.localGet(1), op.v128Load(), op.localSet(7));
  for (const extend of [op.i32x4ExtendLowI16x8U, op.i32x4ExtendHighI16x8U]) {
    body.push(op.localGet(6), extend, op.i32Const(16), op.i32x4Shl, op.localSet(8));
    body.push(op.localGet(7), extend, op.i32Const(16), op.i32x4Shl, op.localSet(9));
    for (const high of [false, true]) {
      for (const [from, to] of [[8, 10], [9, 11]] as const) {
        body.push(op.localGet(from));
        if (high) body.push(op.localGet(from), op.i8x16Shuffle(HIGH_HALF));
        body.push(op.f64x2PromoteLowF32x4, op.localSet(to));
      }
      body.push(op.localGet(11), op.localGet(10), op.f64x2Sub, op.localSet(12));
      body.push(op.localGet(3), op.localGet(10), op.localGet(10), op.f64x2Mul, op.f64x2Add);
      body.push(op.localSet(3));
      body.push(op.localGet(4), op.localGet(12), op.localGet(12), op.f64x2Mul, op.f64x2Add);
      body.push(op.localSet(4));
      body.push(op.localGet(5), op.localGet(12), op.f64x2Abs, op.f64x2Pmax, op.localSet(5));
    }
  }
  body.push(op.localGet(0), op.i32Const(16), op.i32Add, op.localSet(0));
  body.push(op.localGet(1), op.i32Const(16), op.i32Add, op.localSet(1));
  body.push(op.localGet(2), op.i32Const(1), op.i32Sub, op.localTee(2), op.brIf(0));
  body.push(op.end, op.end);
  for (const acc of [3, 4, 5]) {
    body.push(op.localGet(acc), op.f64x2ExtractLane(0), op.localGet(acc), op.f64x2ExtractLane(1));
  }
  return wasmModule({
    params: [I32, I32, I32],
    locals: [V128, V128, V128, V128, V128, V128, V128, V128, V128, V128],
    body,
    results: [F64, F64, F64, F64, F64, F64],
    sharedMemoryMaxPages: KERNEL_MAX_PAGES,
  });
}
