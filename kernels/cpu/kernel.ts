/**
 * The CPU merge kernel as WebAssembly SIMD, generated for one (W dtype, output dtype) pair.
 *
 * The exported `run(wPtr, aPtr, bPtr, outPtr, row0, row1, cols, colsVec, rank, scale)` merges rows
 * `row0 … row1-1` of a block laid out in a shared memory, columns `0 … colsVec-1` (`colsVec` a
 * multiple of 16), with exactly the numerics of `kernels/reference.ts`: per 16-column tile it keeps
 * four f32x4 accumulators in registers, walks the rank (`acc = B[i,0]·A[0,j]`, then
 * `acc += B[i,k]·A[k,j]`, separate multiply and add, no fusion), then `y = w + s·acc` and one
 * round-to-nearest-even into the output dtype, with bf16/f16 decode and encode done in SIMD lanes
 * (torch's f16 conversion algorithm, canonical NaNs). The caller merges the last `cols - colsVec`
 * columns with the scalar formula.
 *
 * @example Generating and validating a kernel
 * ```ts
 * import { mergeKernelWasm } from "./kernel.ts";
 * import assert from "node:assert/strict";
 *
 * assert.ok(WebAssembly.validate(mergeKernelWasm("BF16", "BF16")));
 * ```
 * @module
 */
import { MERGE_DTYPE_SIZE, type MergeDType } from "../types.ts";
import { F32, I32, op, V128, wasmModule } from "./wasm_emit.ts";

/** Maximum pages of the shared memory the kernel imports (4 GiB, the wasm32 limit). */
export const KERNEL_MAX_PAGES = 65536;
/** Columns per SIMD tile. */
export const KERNEL_TILE_COLS = 16;

// parameter and local indices
const W_PTR = 0, A_PTR = 1, B_PTR = 2, O_PTR = 3, ROW0 = 4, ROW1 = 5, COLS = 6, COLS_VEC = 7;
const RANK = 8, SCALE = 9;
const I = 10, J = 11, K = 12, AP = 13, BP = 14, WP = 15, OP = 16, ASTRIDE = 17, KB = 18;
const ACC = [19, 20, 21, 22] as const;
const BB = 23, SV = 24, T_E = 25, T_S = 26, T_M = 27, T_Y = 28, T_B = 29, T_R = 30;
const AK = 31; // element offset of the row, then the k-walking A pointer

const splat = (u32: number) => op.v128Const([u32, u32, u32, u32]);

/** i32x4 of f16 bits on the stack -> f32x4 (exact; subnormals, Inf, NaN payload kept). */
function f16Decode(): number[][] {
  return [
    op.localSet(T_E),
    op.localGet(T_E),
    splat(0x8000),
    op.v128And,
    op.i32Const(16),
    op.i32x4Shl,
    op.localSet(T_S),
    op.localGet(T_E),
    splat(0x7fff),
    op.v128And,
    op.i32Const(13),
    op.i32x4Shl,
    op.localSet(T_M),
    op.localGet(T_M),
    splat(0x7f800000),
    op.v128Or,
    op.localGet(T_M),
    splat(0x77800000), // 2^112
    op.f32x4Mul,
    op.localGet(T_M),
    splat(0x0f7fe000), // 0x7bff << 13: above it is Inf/NaN
    op.i32x4GtU,
    op.v128Bitselect,
    op.localGet(T_S),
    op.v128Or,
  ];
}

/** f32x4 on the stack -> i32x4 of output bits (16-bit values for BF16/F16), canonical NaNs. */
function encode(dtype: MergeDType): number[][] {
  const nanSelect = (nan: number) => [
    op.localSet(T_R),
    splat(nan),
    op.localGet(T_R),
    op.localGet(T_Y),
    op.localGet(T_Y),
    op.f32x4Ne,
    op.v128Bitselect,
  ];
  if (dtype === "F32") return [op.localSet(T_Y), op.localGet(T_Y), ...nanSelect(0x7fc00000)];
  if (dtype === "BF16") {
    return [
      op.localTee(T_Y),
      op.localGet(T_Y),
      op.i32Const(16),
      op.i32x4ShrU,
      splat(1),
      op.v128And,
      op.i32x4Add,
      splat(0x7fff),
      op.i32x4Add,
      op.i32Const(16),
      op.i32x4ShrU,
      ...nanSelect(0xffff),
    ];
  }
  // F16: fp16_ieee_from_fp32_value (as in torch/c10 and FP16), vectorized.
  return [
    op.localTee(T_Y),
    op.f32x4Abs,
    splat(0x77800000), // 2^112
    op.f32x4Mul,
    splat(0x08800000), // 2^-110
    op.f32x4Mul,
    op.localSet(T_B),
    op.localGet(T_Y),
    op.localGet(T_Y),
    op.i32x4Add, // shl1
    splat(0xff000000),
    op.v128And,
    splat(0x71000000),
    op.i32x4MaxU,
    op.i32Const(1),
    op.i32x4ShrU,
    splat(0x07800000),
    op.i32x4Add,
    op.localGet(T_B),
    op.f32x4Add,
    op.localTee(T_B),
    op.i32Const(13),
    op.i32x4ShrU,
    splat(0x7c00),
    op.v128And,
    op.localGet(T_B),
    splat(0x0fff),
    op.v128And,
    op.i32x4Add,
    op.localGet(T_Y),
    splat(0x80000000),
    op.v128And,
    op.i32Const(16),
    op.i32x4ShrU,
    op.v128Or,
    ...nanSelect(0x7e00),
  ];
}

/** Decodes lane group `q` (4 columns) of the current W tile onto the stack as f32x4. */
function decode(dtype: MergeDType, q: number): number[][] {
  if (dtype === "F32") return [op.localGet(WP), op.v128Load(16 * q)];
  const load = [
    op.localGet(WP),
    op.v128Load(16 * (q >> 1)),
    (q & 1) === 0 ? op.i32x4ExtendLowI16x8U : op.i32x4ExtendHighI16x8U,
  ];
  if (dtype === "BF16") return [...load, op.i32Const(16), op.i32x4Shl];
  return [...load, ...f16Decode()];
}

/** Largest rank the kernel is unrolled for (larger ranks run a k loop). */
export const KERNEL_MAX_UNROLL = 128;

/**
 * The kernel's wasm bytes for W in `wDtype` and output in `outDtype`. With `unroll`, the kernel is
 * specialised for that rank and column count (every factor address an immediate, no k loop) and
 * must only be called with them; without it, any rank and column count work.
 */
export function mergeKernelWasm(
  wDtype: MergeDType,
  outDtype: MergeDType,
  unroll?: { rank: number; cols: number },
): Uint8Array<ArrayBuffer> {
  const ws = MERGE_DTYPE_SIZE[wDtype], os = MERGE_DTYPE_SIZE[outDtype];
  const body: number[][] = [];
  const add = (...ins: (number[] | readonly number[])[]) => {
    for (const x of ins) body.push([...x]);
  };
  add(op.localGet(SCALE), op.f32x4Splat, op.localSet(SV));
  add(op.localGet(COLS), op.i32Const(4), op.i32Mul, op.localSet(ASTRIDE));
  // column tiles outside, rows inside: the A tile (rank × 16 f32) stays in L1 across the rows of
  // the call (callers pass a few dozen rows at a time, so their B rows and W/output lines do too)
  add(op.i32Const(0), op.localSet(J));
  add(op.block, op.loop); // column tiles
  add(op.localGet(J), op.localGet(COLS_VEC), op.i32GeU, op.brIf(1));
  add(op.localGet(A_PTR), op.localGet(J), op.i32Const(4), op.i32Mul, op.i32Add, op.localSet(AP));
  add(op.localGet(ROW0), op.localSet(I));
  add(op.block, op.loop); // rows
  add(op.localGet(I), op.localGet(ROW1), op.i32GeU, op.brIf(1));
  add(op.localGet(B_PTR), op.localGet(I), op.localGet(RANK), op.i32Mul, op.i32Const(4), op.i32Mul);
  add(op.i32Add, op.localSet(BP));
  add(op.localGet(I), op.localGet(COLS), op.i32Mul, op.localGet(J), op.i32Add, op.localSet(AK));
  add(op.localGet(W_PTR), op.localGet(AK), op.i32Const(ws), op.i32Mul, op.i32Add, op.localSet(WP));
  add(op.localGet(O_PTR), op.localGet(AK), op.i32Const(os), op.i32Mul, op.i32Add, op.localSet(OP));
  add(op.localGet(AP), op.localSet(AK));
  // accumulate over the rank
  add(op.localGet(RANK), op.i32Eqz, op.if_);
  for (const acc of ACC) add(splat(0x80000000), op.localSet(acc)); // -0: w + s·(-0) = w for s = 1
  add(op.else_);
  add(op.localGet(BP), op.v128Load32Splat(0), op.localSet(BB));
  ACC.forEach((acc, q) =>
    add(op.localGet(BB), op.localGet(AP), op.v128Load(16 * q), op.f32x4Mul, op.localSet(acc))
  );
  if (unroll) {
    // rank and cols are constants: every A and B address is an immediate offset
    for (let k = 1; k < unroll.rank; k++) {
      add(op.localGet(BP), op.v128Load32Splat(4 * k), op.localSet(BB));
      ACC.forEach((acc, q) =>
        add(
          op.localGet(acc),
          op.localGet(BB),
          op.localGet(AP),
          op.v128Load(4 * (k * unroll.cols + 4 * q)),
          op.f32x4Mul,
          op.f32x4Add,
          op.localSet(acc),
        )
      );
    }
  } else {
    add(
      op.i32Const(1),
      op.localSet(K),
      op.localGet(BP),
      op.i32Const(4),
      op.i32Add,
      op.localSet(KB),
    );
    add(op.block, op.loop); // k
    add(op.localGet(K), op.localGet(RANK), op.i32GeU, op.brIf(1));
    add(op.localGet(AK), op.localGet(ASTRIDE), op.i32Add, op.localSet(AK));
    add(op.localGet(KB), op.v128Load32Splat(0), op.localSet(BB));
    ACC.forEach((acc, q) =>
      add(
        op.localGet(acc),
        op.localGet(BB),
        op.localGet(AK),
        op.v128Load(16 * q),
        op.f32x4Mul,
        op.f32x4Add,
        op.localSet(acc),
      )
    );
    add(op.localGet(K), op.i32Const(1), op.i32Add, op.localSet(K));
    add(op.localGet(KB), op.i32Const(4), op.i32Add, op.localSet(KB));
    add(op.br(0), op.end, op.end); // k loop
  }
  add(op.end); // if
  // y = w + s·acc, encode, store
  ACC.forEach((acc, q) => {
    add(...decode(wDtype, q));
    add(op.localGet(acc), op.localGet(SV), op.f32x4Mul, op.f32x4Add, op.localSet(acc));
  });
  if (os === 4) {
    ACC.forEach((acc, q) => {
      add(op.localGet(OP), op.localGet(acc), ...encode(outDtype), op.v128Store(16 * q));
    });
  } else {
    for (let h = 0; h < 2; h++) {
      add(op.localGet(OP));
      add(op.localGet(ACC[2 * h]!), ...encode(outDtype));
      add(op.localGet(ACC[2 * h + 1]!), ...encode(outDtype));
      add(op.i16x8NarrowI32x4U, op.v128Store(16 * h));
    }
  }
  add(op.localGet(I), op.i32Const(1), op.i32Add, op.localSet(I));
  add(op.br(0), op.end, op.end); // row loop
  add(op.localGet(J), op.i32Const(16), op.i32Add, op.localSet(J));
  add(op.br(0), op.end, op.end); // column loop
  return wasmModule({
    params: [I32, I32, I32, I32, I32, I32, I32, I32, I32, F32],
    locals: [
      ...Array<number>(9).fill(I32), // I … KB
      ...Array<number>(12).fill(V128), // ACC×4, BB, SV, temporaries
      I32, // AK
    ],
    body,
    sharedMemoryMaxPages: KERNEL_MAX_PAGES,
  });
}
