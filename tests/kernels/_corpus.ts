/**
 * A deterministic corpus of merge requests for backend tests: every dtype pair, ranks 0-70, column
 * counts around the 4- and 16-column tiles, NaN/Inf/subnormal/huge weights, DoRA rows.
 * @module
 */
import { MERGE_DTYPE_SIZE, type MergeDType, type MergeRowsRequest } from "../../kernels/types.ts";
import { type CpuTask, kernelKey, kernelKind } from "../../kernels/cpu/_rows.ts";

/** Deterministic pseudo-random f32s in [-scale/2, scale/2). */
export function seeded(n: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * scale;
  }
  return out;
}

/** W bytes of `dtype` from random bit patterns mixed with special values. */
export function weights(dtype: MergeDType, n: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(n * MERGE_DTYPE_SIZE[dtype]);
  const f = seeded(n, seed, 4);
  const specials = dtype === "F32"
    ? [
      0x7fc00000,
      0xff800000,
      0x7f800000,
      0x00000001,
      0x807fffff,
      0x7f7fffff,
      0x80000000,
      0x00400000,
    ]
    : dtype === "BF16"
    ? [0x7fc0, 0xff80, 0x7f80, 0x0001, 0x807f, 0x7f7f, 0x8000, 0x0040, 0xffff]
    : [0x7e00, 0xfc00, 0x7c00, 0x0001, 0x83ff, 0x7bff, 0x8000, 0x0200, 0xfe01];
  if (dtype === "F32") {
    const u = new Uint32Array(bytes.buffer);
    u.set(new Uint32Array(f.buffer));
    for (let i = 0; i < n; i += 7) u[i] = specials[(i / 7) % specials.length]!;
  } else {
    const u = new Uint16Array(bytes.buffer);
    const src = new Uint32Array(f.buffer);
    for (let i = 0; i < n; i++) {
      u[i] = dtype === "BF16" ? src[i]! >>> 16 : (src[i]! >>> 13) & 0xffff;
    }
    for (let i = 0; i < n; i += 7) u[i] = specials[(i / 7) % specials.length]!;
  }
  return bytes;
}

/** One request of the corpus. */
export function request(
  wDtype: MergeDType,
  outDtype: MergeDType,
  rows: number,
  cols: number,
  rank: number,
  seed: number,
  opts: { dora?: boolean; factorScale?: number; scale?: number } = {},
): MergeRowsRequest {
  const req: MergeRowsRequest = {
    name: `corpus.${wDtype}.${outDtype}.${rows}x${cols}.r${rank}.s${seed}`,
    w: weights(wDtype, rows * cols, seed),
    wDtype,
    outDtype,
    rows,
    cols,
    rank,
    a: seeded(rank * cols, seed + 1, opts.factorScale ?? 0.5),
    b: seeded(rows * rank, seed + 2, opts.factorScale ?? 0.5),
    scale: opts.scale ?? 1.7,
  };
  if (opts.dora) req.magnitude = seeded(rows, seed + 3, 3);
  return req;
}

const DTYPES: MergeDType[] = ["BF16", "F16", "F32"];

/** The corpus: small shapes covering every case the backends must agree on. */
export function corpus(): MergeRowsRequest[] {
  const out: MergeRowsRequest[] = [];
  let seed = 1;
  for (const wd of DTYPES) {
    for (const od of DTYPES) {
      out.push(request(wd, od, 5, 48, 16, seed++));
      out.push(request(wd, od, 3, 37, 3, seed++));
      out.push(request(wd, od, 2, 130, 8, seed++, { dora: true }));
    }
  }
  for (const rank of [0, 1, 2, 5, 64, 70]) {
    for (const cols of [1, 4, 7, 16, 33, 257]) {
      out.push(request("BF16", "BF16", 3, cols, rank, seed++));
    }
  }
  // large magnitudes: huge factors overflow f16/bf16 outputs to Inf
  out.push(request("BF16", "F16", 4, 64, 8, seed++, { factorScale: 600 }));
  out.push(request("F32", "BF16", 4, 64, 8, seed++, { factorScale: 1e19 }));
  // tiny factors: results near subnormal
  out.push(request("BF16", "BF16", 4, 64, 4, seed++, { factorScale: 1e-20 }));
  out.push(request("F16", "F16", 4, 64, 4, seed++, { factorScale: 1e-3, scale: 1e-3 }));
  out.push(request("BF16", "BF16", 6, 300, 16, seed++, { dora: true }));
  // rank above the CPU kernel's unroll limit (the generic k loop)
  out.push(request("BF16", "F16", 3, 40, 130, seed++));
  out.push(request("F16", "BF16", 2, 35, 129, seed++, { dora: true }));
  return out;
}

/** Asserts two byte arrays are equal, naming the first differing byte (cheap on large arrays). */
export function assertSameBytes(got: Uint8Array, want: Uint8Array, name: string): void {
  if (got.length !== want.length) {
    throw new Error(`${name}: ${got.length} bytes, expected ${want.length}`);
  }
  let bad = 0, first = -1;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      if (first < 0) first = i;
      bad++;
    }
  }
  if (bad > 0) {
    throw new Error(
      `${name}: ${bad} of ${want.length} bytes differ, first at ${first} (${got[first]} vs ${
        want[first]
      })`,
    );
  }
}

/**
 * F32 weights at the rounding edges of bf16 and f16 (ties, one f32 ulp either side, subnormal and
 * overflow thresholds, NaN, Inf), as a rank-0 request (`y = w`) so the output encoders alone decide.
 */
export function roundingEdges(outDtype: MergeDType): MergeRowsRequest {
  const bits: number[] = [
    0x7fc00000,
    0xffc00001,
    0x7f800000,
    0xff800000,
    0,
    0x80000000,
    1,
    0x807fffff,
  ];
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  for (let e = -27; e <= 17; e++) {
    for (const m of [1, 1.5, 1.75]) {
      for (const sign of [1, -1]) {
        f32[0] = sign * m * 2 ** e;
        const x = u32[0]!;
        // bf16 ties (low 16 bits 0x8000) and f16 ties (low 13 bits 0x1000), ±1 f32 ulp
        for (const base of [(x & 0xffff0000) | 0x8000, (x & 0xffffe000) | 0x1000, x]) {
          bits.push(base >>> 0, (base + 1) >>> 0, (base - 1) >>> 0);
        }
      }
    }
  }
  for (
    const b of [0x477fe000, 0x477ff000, 0x477fefff, 0x38800000, 0x387fffff, 0x33000000, 0x33000001]
  ) {
    bits.push(b, (b | 0x80000000) >>> 0);
  }
  const cols = bits.length;
  return {
    name: `rounding-edges.${outDtype}`,
    w: new Uint8Array(new Uint32Array(bits).buffer),
    wDtype: "F32",
    outDtype,
    rows: 1,
    cols,
    rank: 0,
    a: new Float32Array(0),
    b: new Float32Array(0),
    scale: 1,
  };
}

/**
 * A CPU task over one F32 row of 3 columns (all scalar tail) at byte 0 of the memory, A at 64 and
 * B at 128 (byte offsets), its output at `outPtr`: `W' = W + scale · B · A` with the given rank.
 */
export function oneRowF32Task(rank: number, outPtr: number, scale: number): CpuTask {
  return {
    key: kernelKey(kernelKind("F32", "F32", rank, 3)),
    wDtype: "F32",
    outDtype: "F32",
    wPtr: 0,
    aPtr: 64,
    bPtr: 128,
    outPtr,
    yPtr: 0,
    magPtr: 0,
    dora: false,
    row0: 0,
    row1: 1,
    cols: 3,
    rank,
    scale,
  };
}
