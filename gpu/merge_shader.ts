/**
 * The LoRA merge as WGSL, described as plain data: a pure source generator
 * ({@linkcode mergeShaderSource}) and a dispatch planner ({@linkcode planMerge}) that sizes row
 * blocks to the adapter's binding and buffer limits and folds large dispatches into two
 * dimensions. Nothing here touches a GPU, so all of it is testable anywhere.
 *
 * Numerics are those of `kernels/reference.ts`: f32 products and sums in the reference's k order,
 * `y = w + s·acc`, one RNE rounding into the output dtype done with integer bit operations (no
 * `pack2x16float`, whose rounding is implementation-defined), canonical NaNs; rank 0 copies W
 * (`y = w`, no scale term a compiler could fold differently). bf16 has no WGSL type:
 * two bf16 (or f16) travel packed in one `u32`. f16 inputs are decoded without ever forming an f32
 * subnormal; bf16/f32 subnormal inputs are kept as they are by the GPU's f32 arithmetic (llvmpipe
 * keeps them; a GPU that flushes f32 subnormals would differ on |w| < 2^-126).
 *
 * Kernel variants:
 * - `aligned` (`cols % 4 == 0`): one invocation merges `rowsPerInvocation` rows × 4 columns, W and
 *   output moved as whole packed vectors, A read as `vec4<f32>` once per k and shared by the rows,
 *   B read 4 ranks per `vec4` load. With more than 8 rows per invocation (and a rank that is a
 *   multiple of 4, at most 64) it takes a row-loop form: the invocation's A column tile is loaded
 *   into registers once and reused for every row (the fastest form on llvmpipe).
 * - `flat` (any shape): one invocation merges 4 consecutive elements of the flattened block (so the
 *   packed output words of different invocations never overlap), each with its own row and column.
 * - `dora`: one 64-invocation workgroup per row: pass 1 computes the row and its 256 strided partial
 *   sums of squares (the reference order), a workgroup tree reduction gives the norm, pass 2
 *   recomputes and scales the row; packed output halves are combined with `atomicOr` into a cleared
 *   buffer so odd column counts are safe. The norm's `sqrt` and the `m / norm` division use WGSL's
 *   built-ins: exact on llvmpipe (bit-equal to the reference), but WGSL allows them a few ulps, so
 *   on a hardware GPU a DoRA factor may differ by an f32 ulp (≤ 1 ulp of a bf16/f16 output).
 *
 * @example Planning and generating a kernel
 * ```ts
 * import { mergeShaderSource, planMerge } from "./merge_shader.ts";
 * import assert from "node:assert/strict";
 *
 * const plan = planMerge(
 *   { rows: 4096, cols: 4096, rank: 16, wDtype: "BF16", outDtype: "BF16", dora: false },
 *   { maxStorageBufferBindingSize: 128 << 20, maxBufferSize: 2 ** 31 - 1, maxComputeWorkgroupsPerDimension: 65535 },
 * );
 * assert.equal(plan.spec.variant, "aligned");
 * assert.equal(plan.blocks.length, 1);
 * assert.match(mergeShaderSource(plan.spec), /const RANK: u32 = 16u;/);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { MERGE_DTYPE_SIZE, type MergeDType } from "../kernels/types.ts";

/** Which kernel layout. */
export type MergeKernelVariant = "aligned" | "flat" | "dora";

/** Everything a kernel's source depends on (and so its pipeline cache key). */
export interface MergeKernelSpec {
  /** Kernel layout. */
  variant: MergeKernelVariant;
  /** Dtype of W. */
  wDtype: MergeDType;
  /** Dtype of the output. */
  outDtype: MergeDType;
  /** Rank, a compile-time constant of the kernel. */
  rank: number;
  /** Rows per invocation (`aligned` only; 1 otherwise). */
  rowsPerInvocation: number;
  /** Invocations per workgroup (64 for `dora`). */
  workgroupSize: number;
}

/** Limits the planner needs (a subset of `GPUSupportedLimits`). */
export interface MergeLimits {
  /** Largest storage binding in bytes. */
  maxStorageBufferBindingSize: number;
  /** Largest buffer in bytes. */
  maxBufferSize: number;
  /** Largest dispatch per dimension. */
  maxComputeWorkgroupsPerDimension: number;
}

/** One dispatch: a block of rows with its buffer sizes and workgroup grid. */
export interface MergeBlockPlan {
  /** First row (in the request). */
  row0: number;
  /** One past the last row. */
  row1: number;
  /** Workgroups needed. */
  workgroups: number;
  /** The folded grid `[x, y]` (`x·y ≥ workgroups`; the kernel skips the excess). */
  dispatch: [number, number];
  /** Bytes of the W binding (padded to whole 4-element groups). */
  wBytes: number;
  /** Bytes of the output binding (padded like W). */
  outBytes: number;
  /** Bytes of the B binding. */
  bBytes: number;
}

/** The plan of one request: the kernel and its blocks. */
export interface MergePlan {
  /** The kernel to run. */
  spec: MergeKernelSpec;
  /** Bytes of the A binding (the whole A). */
  aBytes: number;
  /** Blocks, in row order. */
  blocks: MergeBlockPlan[];
}

/** Shape of a merge request, as the planner sees it. */
export interface MergeShape {
  /** Rows of the request. */
  rows: number;
  /** Columns. */
  cols: number;
  /** Rank. */
  rank: number;
  /** Dtype of W. */
  wDtype: MergeDType;
  /** Dtype of the output. */
  outDtype: MergeDType;
  /** True with a DoRA magnitude. */
  dora: boolean;
}

/** Options of {@linkcode planMerge}. */
export interface MergePlanOptions {
  /** Rows per invocation of the aligned kernel (default 4). */
  rowsPerInvocation?: number;
  /** Invocations per workgroup of the aligned/flat kernels (default 64). */
  workgroupSize?: number;
  /** Upper bound on W/output bytes per block, below the binding limit (default: the limit). */
  maxBlockBytes?: number;
}

/** A stable string naming a kernel spec (the pipeline cache key). */
export function pipelineKey(spec: MergeKernelSpec): string {
  return `merge:${spec.variant}:${spec.wDtype}>${spec.outDtype}:r${spec.rank}:rows${spec.rowsPerInvocation}:wg${spec.workgroupSize}`;
}

/**
 * Folds `groups` workgroups into a grid `[x, y]` with both at most `maxPerDim` and `x·y ≥ groups`
 * (the kernel computes the linear id `y·x_total + x` and skips ids past `groups`).
 */
export function foldDispatch(groups: number, maxPerDim: number): [number, number] {
  if (groups <= maxPerDim) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / maxPerDim);
  if (y > maxPerDim) {
    throw new CkptError(
      "GPU_DISPATCH_TOO_LARGE",
      `Cannot dispatch ${groups} workgroups: more than ${maxPerDim}² in two dimensions`,
    );
  }
  return [Math.ceil(groups / y), y];
}

/** Plans a merge: picks the kernel and splits the rows into blocks within the limits. */
export function planMerge(
  shape: MergeShape,
  limits: MergeLimits,
  options: MergePlanOptions = {},
): MergePlan {
  const { rows, cols, rank, wDtype, outDtype, dora } = shape;
  const variant: MergeKernelVariant = dora ? "dora" : cols % 4 === 0 ? "aligned" : "flat";
  const rowsPer = variant === "aligned" ? Math.max(1, options.rowsPerInvocation ?? 4) : 1;
  const wg = variant === "dora" ? 64 : Math.max(1, options.workgroupSize ?? 64);
  const spec: MergeKernelSpec = {
    variant,
    wDtype,
    outDtype,
    rank,
    rowsPerInvocation: rowsPer,
    workgroupSize: wg,
  };
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  const aBytes = Math.max(16, rank * cols * 4);
  if (aBytes > binding) {
    throw new CkptError(
      "GPU_LIMIT",
      `Cannot merge on this adapter: factor A [${rank}, ${cols}] needs ${aBytes} bytes, over maxStorageBufferBindingSize ${binding}`,
      { details: { limit: "maxStorageBufferBindingSize", have: binding, need: aBytes } },
    );
  }
  const cap = Math.min(binding, options.maxBlockBytes ?? binding);
  const elemBytes = Math.max(MERGE_DTYPE_SIZE[wDtype], MERGE_DTYPE_SIZE[outDtype]);
  // whole rows whose padded (to 4 elements) W / output fit the cap; B rows fit too
  let rowsMax = Math.floor((Math.floor(cap / elemBytes) - 4) / Math.max(cols, 1));
  if (rank > 0) rowsMax = Math.min(rowsMax, Math.floor(binding / (rank * 4)));
  if (rowsMax < 1) {
    throw new CkptError(
      "GPU_LIMIT",
      `Cannot merge on this adapter: one row of ${cols} ${wDtype} elements exceeds the binding limit ${cap}`,
      { details: { limit: "maxStorageBufferBindingSize", have: cap, need: cols * elemBytes } },
    );
  }
  const blocks: MergeBlockPlan[] = [];
  for (let row0 = 0; row0 < rows || (rows === 0 && blocks.length === 0); row0 += rowsMax) {
    const row1 = Math.min(rows, row0 + rowsMax);
    const n = (row1 - row0) * cols;
    const padded = Math.ceil(n / 4) * 4;
    const invocations = variant === "aligned"
      ? Math.ceil((row1 - row0) / rowsPer) * (cols / 4)
      : variant === "flat"
      ? padded / 4
      : (row1 - row0) * 64;
    const workgroups = Math.ceil(invocations / wg);
    blocks.push({
      row0,
      row1,
      workgroups,
      dispatch: foldDispatch(workgroups, limits.maxComputeWorkgroupsPerDimension),
      wBytes: Math.max(16, padded * MERGE_DTYPE_SIZE[wDtype]),
      outBytes: Math.max(16, padded * MERGE_DTYPE_SIZE[outDtype]),
      bBytes: Math.max(16, (row1 - row0) * rank * 4),
    });
    if (rows === 0) break;
  }
  return { spec, aBytes, blocks };
}

const CONVERT = /* wgsl */ `
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

function wLoad(dtype: MergeDType): string {
  if (dtype === "F32") return "fn w_at(e: u32) -> f32 { return bitcast<f32>(W[e]); }";
  const dec = dtype === "BF16" ? "bf16_to_f32" : "f16_to_f32";
  return `fn w_at(e: u32) -> f32 {
  let word = W[e >> 1u];
  return ${dec}(select(word & 0xffffu, word >> 16u, (e & 1u) == 1u));
}`;
}

function encodeFn(dtype: MergeDType): string {
  return dtype === "BF16" ? "f32_to_bf16" : dtype === "F16" ? "f32_to_f16" : "f32_to_f32bits";
}

/** Stores 4 merged values starting at element `e0` (a multiple of 4) into the packed output. */
function store4(dtype: MergeDType): string {
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

/** The WGSL source of a kernel. Bindings: 0 params (uniform), 1 A, 2 B, 3 W, 4 output, 5 magnitude (dora). */
export function mergeShaderSource(spec: MergeKernelSpec): string {
  const { variant, rank, workgroupSize: WG } = spec;
  const head = `// ckpt LoRA merge: ${pipelineKey(spec)}
struct Params { rows: u32, cols: u32, n: u32, scale: f32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<${variant === "aligned" ? "vec4<f32>" : "f32"}>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read> W: array<u32>;
@group(0) @binding(4) var<storage, read_write> O: array<${
    variant === "dora" ? "atomic<u32>" : "u32"
  }>;
${variant === "dora" ? "@group(0) @binding(5) var<storage, read> M: array<f32>;" : ""}
const RANK: u32 = ${rank}u;
const WG: u32 = ${WG}u;
${CONVERT}
${wLoad(spec.wDtype)}
`;
  // scalar k-sum of element (i, j), in the reference order
  const scalarAcc = rank === 0 ? "fn acc_at(i: u32, j: u32) -> f32 { return 0.0; }" : `
fn acc_at(i: u32, j: u32) -> f32 {
  var acc = B[i * RANK] * A[j];
  for (var k = 1u; k < RANK; k = k + 1u) {
    acc = acc + B[i * RANK + k] * A[k * P.cols + j];
  }
  return acc;
}`;
  // every binding is statically used (layout "auto" drops unused ones, rank 0 uses no A or B)
  const linear = `_ = A[0]; _ = B[0];
  let g = (wid.y * nwg.x + wid.x) * WG + lid;`;
  const entry = `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {`;
  if (variant === "flat") {
    return `${head}${scalarAcc}
${store4(spec.outDtype)}
${entry}
  ${linear}
  let e0 = g * 4u;
  if (e0 >= P.n) { return; }
  var y = vec4<f32>(0.0);
  for (var l = 0u; l < 4u; l = l + 1u) {
    let e = e0 + l;
    if (e < P.n) {
      let i = e / P.cols;
      let j = e - i * P.cols;
      y[l] = ${rank === 0 ? "w_at(e)" : "w_at(e) + P.scale * acc_at(i, j)"};
    }
  }
  store4(e0, y);
}
`;
  }
  if (variant === "aligned") return alignedSource(spec);
  // dora
  const enc = encodeFn(spec.outDtype);
  const put = spec.outDtype === "F32"
    ? "atomicStore(&O[e], ${enc}(v));".replace("${enc}", enc)
    : `atomicOr(&O[e >> 1u], ${enc}(v) << (16u * (e & 1u)));`;
  return `${head}${scalarAcc}
var<workgroup> partial: array<f32, 256>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  _ = A[0]; _ = B[0];
  let i = wid.y * nwg.x + wid.x;
  let live = i < P.rows;
  let row = min(i, P.rows - 1u);
  var q = vec4<f32>(0.0);
  for (var c = 0u; c < P.cols; c = c + 256u) {
    for (var l = 0u; l < 4u; l = l + 1u) {
      let j = c + lid * 4u + l;
      if (j < P.cols) {
        let y = ${
    rank === 0 ? "w_at(row * P.cols + j)" : "w_at(row * P.cols + j) + P.scale * acc_at(row, j)"
  };
        q[l] = q[l] + y * y;
      }
    }
  }
  for (var l = 0u; l < 4u; l = l + 1u) { partial[lid * 4u + l] = q[l]; }
  workgroupBarrier();
  for (var h = 128u; h >= 1u; h = h >> 1u) {
    for (var t = lid; t < h; t = t + 64u) { partial[t] = partial[t] + partial[t + h]; }
    workgroupBarrier();
  }
  let f = M[row] / sqrt(partial[0]);
  if (!live) { return; }
  for (var c = 0u; c < P.cols; c = c + 256u) {
    for (var l = 0u; l < 4u; l = l + 1u) {
      let j = c + lid * 4u + l;
      if (j < P.cols) {
        let e = row * P.cols + j;
        let v = f * (${rank === 0 ? "w_at(e)" : "w_at(e) + P.scale * acc_at(row, j)"});
        ${put}
      }
    }
  }
}
`;
}

/** Decodes 4 packed elements (a `vec2<u32>` of 16-bit values or a `vec4<u32>` of f32). */
function load4Vec(dtype: MergeDType): string {
  if (dtype === "F32") {
    return "fn load4(v: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>(v); }";
  }
  const dec = dtype === "BF16" ? "bf16_to_f32" : "f16_to_f32";
  return `fn load4(v: vec2<u32>) -> vec4<f32> {
  return vec4<f32>(${dec}(v.x & 0xffffu), ${dec}(v.x >> 16u), ${dec}(v.y & 0xffffu), ${dec}(v.y >> 16u));
}`;
}

/** Encodes 4 merged values into packed words. */
function pack4Vec(dtype: MergeDType): string {
  const enc = encodeFn(dtype);
  if (dtype === "F32") {
    return `fn pack4(y: vec4<f32>) -> vec4<u32> {
  return vec4<u32>(${enc}(y.x), ${enc}(y.y), ${enc}(y.z), ${enc}(y.w));
}`;
  }
  return `fn pack4(y: vec4<f32>) -> vec2<u32> {
  return vec2<u32>(${enc}(y.x) | (${enc}(y.y) << 16u), ${enc}(y.z) | (${enc}(y.w) << 16u));
}`;
}

/**
 * The start of the aligned kernels' source (both forms): params and bindings with W and the output
 * as packed vectors, B as `array<bArray>`, then `consts`, `WG`, `ROWS_PER`, the decode/encode
 * helpers, and the entry point up to its column tile `c4` and first row `row0` (returning past the
 * last row); `prologue` goes first in the entry point.
 */
function vectorHead(
  spec: MergeKernelSpec,
  bArray: string,
  consts: string,
  prologue: string,
): string {
  const wvec = spec.wDtype === "F32" ? "vec4<u32>" : "vec2<u32>";
  const ovec = spec.outDtype === "F32" ? "vec4<u32>" : "vec2<u32>";
  return `// ckpt LoRA merge: ${pipelineKey(spec)}
struct Params { rows: u32, cols: u32, n: u32, scale: f32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> B: array<${bArray}>;
@group(0) @binding(3) var<storage, read> W: array<${wvec}>;
@group(0) @binding(4) var<storage, read_write> O: array<${ovec}>;
${consts}
const WG: u32 = ${spec.workgroupSize}u;
const ROWS_PER: u32 = ${spec.rowsPerInvocation}u;
${CONVERT}
${load4Vec(spec.wDtype)}
${pack4Vec(spec.outDtype)}
@compute @workgroup_size(${spec.workgroupSize})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
${prologue}  let g = (wid.y * nwg.x + wid.x) * WG + lid;
  let cols4 = P.cols / 4u;
  let rg = g / cols4;
  let c4 = g - rg * cols4;
  let row0 = rg * ROWS_PER;
  if (row0 >= P.rows) { return; }`;
}

/**
 * The aligned kernel: `rowsPerInvocation` rows × 4 columns per invocation, W and output read and
 * written as whole vectors of 4 packed elements, A as `vec4<f32>` (one load per k shared by the
 * rows), B as `vec4<f32>` (4 ranks per load) when the rank is a multiple of 4; the k-sum keeps the
 * reference order (first product, then adds), unrolled by 4.
 */
function alignedSource(spec: MergeKernelSpec): string {
  const { rank, rowsPerInvocation: R } = spec;
  if (R > 8 && rank > 0 && rank % 4 === 0 && rank <= 64) return rowLoopSource(spec);
  const rows = Array.from({ length: R }, (_, r) => r);
  const b4 = rank > 0 && rank % 4 === 0;
  const lanes = ["x", "y", "z", "w"];
  let acc = "";
  if (rank === 0) {
    acc = "";
  } else if (b4) {
    const first = rows.map((r) => `  let b${r} = B[r${r} * R4];`).join("\n");
    const init = rows.map((r) => `  var acc${r} = b${r}.x * A[c4];`).join("\n");
    const rest = [1, 2, 3].map((kk) =>
      `  { let a = A[${kk}u * cols4 + c4];\n` +
      rows.map((r) => `    acc${r} = acc${r} + b${r}.${lanes[kk]} * a;`).join("\n") + "\n  }"
    ).join("\n");
    const body = (k4: string, pad: string) =>
      rows.map((r) => `${pad}let b${r} = B[r${r} * R4 + ${k4}];`).join("\n") + "\n" +
      [0, 1, 2, 3].map((kk) =>
        `${pad}{ let a = A[(4u * ${k4} + ${kk}u) * cols4 + c4];\n` +
        rows.map((r) => `${pad}  acc${r} = acc${r} + b${r}.${lanes[kk]} * a;`).join("\n") +
        `\n${pad}}`
      ).join("\n");
    const loop = `
  for (var k4 = 1u; k4 < R4; k4 = k4 + 1u) {
${body("k4", "    ")}
  }`;
    acc = `${first}\n${init}\n${rest}${loop}`;
  } else {
    const init = rows.map((r) => `  var acc${r} = B[r${r} * RANK] * A[c4];`).join("\n");
    const loop = rank <= 1 ? "" : `
  for (var k = 1u; k < RANK; k = k + 1u) {
    let a = A[k * cols4 + c4];
${rows.map((r) => `    acc${r} = acc${r} + B[r${r} * RANK + k] * a;`).join("\n")}
  }`;
    acc = `${init}${loop}`;
  }
  const stores = rows.map((r) => `
  if (row0 + ${r}u < P.rows) {
    let q = (row0 + ${r}u) * cols4 + c4;
    let w = load4(W[q]);
    O[q] = pack4(${rank === 0 ? "w" : `w + P.scale * acc${r}`});
  }`).join("");
  // every binding is statically used (layout "auto" drops unused ones, rank 0 uses no A or B)
  return `${
    vectorHead(
      spec,
      b4 ? "vec4<f32>" : "f32",
      `const RANK: u32 = ${rank}u;\nconst R4: u32 = ${Math.floor(rank / 4)}u;`,
      "  _ = A[0]; _ = B[0];\n",
    )
  }
${rows.map((r) => `  let r${r} = min(row0 + ${r}u, P.rows - 1u);`).join("\n")}
${acc}${stores}
}
`;
}

/**
 * Aligned kernel, row-loop form (rowsPerInvocation > 8, rank a multiple of 4 up to 64): the
 * invocation loads its A column tile (`rank` × `vec4<f32>`) into registers once and loops over its
 * rows, each needing only its B row, W and output.
 */
function rowLoopSource(spec: MergeKernelSpec): string {
  const { rank } = spec;
  const lanes = ["x", "y", "z", "w"];
  const ks = Array.from({ length: rank }, (_, k) => k);
  const aLoads = ks.map((k) => `  let a${k} = A[${k}u * cols4 + c4];`).join("\n");
  const bLoads = Array.from(
    { length: rank / 4 },
    (_, k4) => `    let b${k4} = B[row * R4 + ${k4}u];`,
  )
    .join("\n");
  const sum = ks.map((k) =>
    k === 0 ? `    var acc = b0.x * a0;` : `    acc = acc + b${k >> 2}.${lanes[k & 3]} * a${k};`
  ).join("\n");
  return `${vectorHead(spec, "vec4<f32>", `const R4: u32 = ${rank / 4}u;`, "")}
${aLoads}
  let row1 = min(row0 + ROWS_PER, P.rows);
  for (var row = row0; row < row1; row = row + 1u) {
${bLoads}
${sum}
    let q = row * cols4 + c4;
    O[q] = pack4(load4(W[q]) + P.scale * acc);
  }
}
`;
}
