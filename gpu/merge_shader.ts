/**
 * The LoRA merge as WGSL: a pure source generator ({@linkcode mergeShaderSource}) for the kernel
 * variants `gpu/merge_plan.ts` plans. Nothing here touches a GPU, so all of it is testable anywhere.
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
 * import { mergeShaderSource } from "./merge_shader.ts";
 * import { planMerge } from "./merge_plan.ts";
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
import { CONVERT, encodeFn, store4, wLoad } from "./_wgsl.ts";
import { alignedSource } from "./_wgsl_aligned.ts";
import { type MergeKernelSpec, pipelineKey } from "./merge_plan.ts";

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
