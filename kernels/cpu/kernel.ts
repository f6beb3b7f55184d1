/**
 * The CPU merge kernel as WebAssembly SIMD, generated for one (W dtype, output dtype) pair.
 *
 * The exported `run(wPtr, aPtr, bPtr, outPtr, row0, row1, cols, colsVec, rank, scale)` merges rows
 * `row0 … row1-1` of a block laid out in a shared memory, columns `0 … colsVec-1` (`colsVec` a
 * multiple of 16), A laid out by {@linkcode packA}, with exactly the numerics of
 * `kernels/reference.ts`: it walks the rows two at a time in memory order, and per 16-column tile
 * keeps four f32x4 accumulators per row in registers (eight for a pair: each A vector is loaded once
 * for both rows, and eight independent chains hide the f32x4.add latency), walks the rank
 * (`acc = B[i,0]·A[0,j]`, then `acc += B[i,k]·A[k,j]`, separate multiply and add, no fusion, the
 * same operations in the same order for every element as the reference), then `y = w + s·acc` and
 * one round-to-nearest-even into the output dtype, with bf16/f16 decode and encode done in SIMD
 * lanes (torch's f16 conversion algorithm, canonical NaNs). An odd last row runs alone. The caller
 * merges the last `cols - colsVec` columns with the scalar formula.
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
const I = 10, J = 11, K = 12, AP = 13, AK = 14, ASTRIDE = 15;
// per row of a row pair: B row, its k-walking pointer, W and output pointers of the tile
const BP = [16, 17] as const, KB = [18, 19] as const, WP = [20, 21] as const;
const OP = [22, 23] as const;
const V = 24; // first v128 local
const ACC = [[V, V + 1, V + 2, V + 3], [V + 4, V + 5, V + 6, V + 7]] as const;
const BB = [V + 8, V + 9] as const;
const AV = V + 10, SV = V + 11;
const T_E = V + 12, T_S = V + 13, T_M = V + 14, T_Y = V + 15, T_B = V + 16, T_R = V + 17;

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

/** Decodes lane group `q` (4 columns) of the W tile at local `wp` onto the stack as f32x4. */
function decode(dtype: MergeDType, wp: number, q: number): number[][] {
  if (dtype === "F32") return [op.localGet(wp), op.v128Load(16 * q)];
  const load = [
    op.localGet(wp),
    op.v128Load(16 * (q >> 1)),
    (q & 1) === 0 ? op.i32x4ExtendLowI16x8U : op.i32x4ExtendHighI16x8U,
  ];
  if (dtype === "BF16") return [...load, op.i32Const(16), op.i32x4Shl];
  return [...load, ...f16Decode()];
}

/**
 * A's layout in the shared memory as the kernel reads it: for each 16-column tile, its `rank × 16`
 * block of A row by row (so a tile's factor column is one contiguous run of `rank × 64` bytes,
 * whatever the column count), then the last `cols % 16` columns as a row-major `rank × (cols %
 * 16)` matrix for the scalar tail. Writes `a` (row-major `rank × cols`) into `out` in that layout.
 *
 * @example The tiles of a 2 × 18 A, then its 2 × 2 tail
 * ```ts
 * import { packA } from "./kernel.ts";
 * import assert from "node:assert/strict";
 *
 * const a = Float32Array.from({ length: 36 }, (_, i) => i);
 * const packed = packA(a, 2, 18, new Float32Array(36));
 * assert.deepEqual([...packed.subarray(0, 17)], [...a.subarray(0, 16), 18]);
 * assert.deepEqual([...packed.subarray(32)], [16, 17, 34, 35]);
 * ```
 */
export function packA(
  a: Float32Array,
  rank: number,
  cols: number,
  out: Float32Array,
): Float32Array {
  const colsVec = cols - (cols % KERNEL_TILE_COLS);
  let o = 0;
  for (let j = 0; j < colsVec; j += KERNEL_TILE_COLS) {
    for (let k = 0; k < rank; k++) {
      const at = k * cols + j;
      for (let c = 0; c < KERNEL_TILE_COLS; c++) out[o++] = a[at + c]!;
    }
  }
  for (let k = 0; k < rank; k++) {
    for (let j = colsVec; j < cols; j++) out[o++] = a[k * cols + j]!;
  }
  return out;
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
  /** The rank walk of one tile for `n` rows: `acc[r][q]` of each row `r` and lane group `q`. */
  const accumulate = (n: 1 | 2) => {
    const rows = [0, 1].slice(0, n);
    const step = (first: boolean, aPtr: number, aOff: number) => {
      // each A vector is loaded once and serves every row of the pair
      for (let q = 0; q < 4; q++) {
        add(op.localGet(aPtr), op.v128Load(aOff + 16 * q), op.localSet(AV));
        for (const r of rows) {
          const acc = ACC[r]![q]!;
          if (first) add(op.localGet(BB[r]!), op.localGet(AV), op.f32x4Mul, op.localSet(acc));
          else {
            add(op.localGet(acc), op.localGet(BB[r]!), op.localGet(AV), op.f32x4Mul);
            add(op.f32x4Add, op.localSet(acc));
          }
        }
      }
    };
    if (!unroll) {
      add(op.localGet(RANK), op.i32Eqz, op.if_);
      // -0: w + s·(-0) = w for s = 1
      for (const r of rows) for (const acc of ACC[r]!) add(splat(0x80000000), op.localSet(acc));
      add(op.else_);
    }
    for (const r of rows) add(op.localGet(BP[r]!), op.v128Load32Splat(0), op.localSet(BB[r]!));
    step(true, AP, 0);
    if (unroll) {
      // rank is a constant: every A and B address is an immediate offset
      for (let k = 1; k < unroll.rank; k++) {
        for (const r of rows) {
          add(op.localGet(BP[r]!), op.v128Load32Splat(4 * k), op.localSet(BB[r]!));
        }
        step(false, AP, 64 * k);
      }
    } else {
      add(op.i32Const(1), op.localSet(K), op.localGet(AP), op.localSet(AK));
      for (const r of rows) {
        add(op.localGet(BP[r]!), op.i32Const(4), op.i32Add, op.localSet(KB[r]!));
      }
      add(op.block, op.loop); // k
      add(op.localGet(K), op.localGet(RANK), op.i32GeU, op.brIf(1));
      add(op.localGet(AK), op.i32Const(64), op.i32Add, op.localSet(AK));
      for (const r of rows) add(op.localGet(KB[r]!), op.v128Load32Splat(0), op.localSet(BB[r]!));
      step(false, AK, 0);
      add(op.localGet(K), op.i32Const(1), op.i32Add, op.localSet(K));
      for (const r of rows) {
        add(op.localGet(KB[r]!), op.i32Const(4), op.i32Add, op.localSet(KB[r]!));
      }
      add(op.br(0), op.end, op.end); // k loop
      add(op.end); // if
    }
  };
  /** `y = w + s·acc`, encode and store the tile of each of `n` rows. */
  const finish = (n: 1 | 2) => {
    for (let r = 0; r < n; r++) {
      const acc = ACC[r]!;
      acc.forEach((a, q) => {
        add(...decode(wDtype, WP[r]!, q));
        add(op.localGet(a), op.localGet(SV), op.f32x4Mul, op.f32x4Add, op.localSet(a));
      });
      if (os === 4) {
        acc.forEach((a, q) => {
          add(op.localGet(OP[r]!), op.localGet(a), ...encode(outDtype), op.v128Store(16 * q));
        });
      } else {
        for (let h = 0; h < 2; h++) {
          add(op.localGet(OP[r]!));
          add(op.localGet(acc[2 * h]!), ...encode(outDtype));
          add(op.localGet(acc[2 * h + 1]!), ...encode(outDtype));
          add(op.i16x8NarrowI32x4U, op.v128Store(16 * h));
        }
      }
    }
  };
  /** Rows `I … I+n-1`, every column tile. */
  const rowBlock = (n: 1 | 2) => {
    add(
      op.localGet(B_PTR),
      op.localGet(I),
      op.localGet(RANK),
      op.i32Mul,
      op.i32Const(4),
      op.i32Mul,
    );
    add(op.i32Add, op.localSet(BP[0]));
    add(op.localGet(I), op.localGet(COLS), op.i32Mul, op.localSet(AK)); // row's first element
    add(op.localGet(W_PTR), op.localGet(AK), op.i32Const(ws), op.i32Mul, op.i32Add);
    add(op.localSet(WP[0]));
    add(op.localGet(O_PTR), op.localGet(AK), op.i32Const(os), op.i32Mul, op.i32Add);
    add(op.localSet(OP[0]));
    if (n === 2) {
      add(op.localGet(BP[0]), op.localGet(RANK), op.i32Const(4), op.i32Mul, op.i32Add);
      add(op.localSet(BP[1]));
      add(op.localGet(WP[0]), op.localGet(COLS), op.i32Const(ws), op.i32Mul, op.i32Add);
      add(op.localSet(WP[1]));
      add(op.localGet(OP[0]), op.localGet(COLS), op.i32Const(os), op.i32Mul, op.i32Add);
      add(op.localSet(OP[1]));
    }
    add(op.i32Const(0), op.localSet(J), op.localGet(A_PTR), op.localSet(AP));
    add(op.block, op.loop); // column tiles
    add(op.localGet(J), op.localGet(COLS_VEC), op.i32GeU, op.brIf(1));
    accumulate(n);
    finish(n);
    add(op.localGet(J), op.i32Const(KERNEL_TILE_COLS), op.i32Add, op.localSet(J));
    add(op.localGet(AP), op.localGet(ASTRIDE), op.i32Add, op.localSet(AP));
    for (let r = 0; r < n; r++) {
      add(op.localGet(WP[r]!), op.i32Const(16 * ws), op.i32Add, op.localSet(WP[r]!));
      add(op.localGet(OP[r]!), op.i32Const(16 * os), op.i32Add, op.localSet(OP[r]!));
    }
    add(op.br(0), op.end, op.end); // column tiles
  };
  add(op.localGet(SCALE), op.f32x4Splat, op.localSet(SV));
  add(op.localGet(RANK), op.i32Const(64), op.i32Mul, op.localSet(ASTRIDE)); // packed A tile
  // rows outside in pairs, column tiles inside: W and the output are read and written in memory
  // order, each A vector serves two rows, and eight accumulators hide the f32x4.add latency
  add(op.localGet(ROW0), op.localSet(I));
  add(op.block, op.loop); // row pairs
  add(op.localGet(I), op.i32Const(1), op.i32Add, op.localGet(ROW1), op.i32GeU, op.brIf(1));
  rowBlock(2);
  add(op.localGet(I), op.i32Const(2), op.i32Add, op.localSet(I));
  add(op.br(0), op.end, op.end); // row pairs
  add(op.localGet(I), op.localGet(ROW1), op.i32LtU, op.if_); // an odd last row
  rowBlock(1);
  add(op.end);
  return wasmModule({
    params: [I32, I32, I32, I32, I32, I32, I32, I32, I32, F32],
    locals: [
      ...Array<number>(V - 10).fill(I32), // I … OP
      ...Array<number>(18).fill(V128), // ACC×8, BB×2, AV, SV, temporaries
    ],
    body,
    sharedMemoryMaxPages: KERNEL_MAX_PAGES,
  });
}
