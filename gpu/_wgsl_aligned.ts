/**
 * The `aligned` merge kernel (`cols % 4 == 0`) as WGSL: W and output moved as whole packed vectors,
 * A read as `vec4<f32>`, in two forms (rows unrolled per invocation, or a row loop over an A tile
 * held in registers). Private to `gpu/merge_shader.ts`.
 * @module
 */
import type { MergeDType } from "../kernels/types.ts";
import { CONVERT, encodeFn } from "./_wgsl.ts";
import { type MergeKernelSpec, pipelineKey } from "./merge_plan.ts";

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
export function alignedSource(spec: MergeKernelSpec): string {
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
