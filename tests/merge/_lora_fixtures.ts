/**
 * Runs the torch-generated LoRA fixtures of `tests/fixtures/lora/` through `mergeLora` and compares
 * the result with torch's PEFT-equivalent fp32 merge (ulps) and with the float64 exact result
 * (half an ulp of the output dtype plus fp32 accumulation slack).
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { decodeF32, type DType } from "../../formats/dtype.ts";
import { openSafetensors } from "../../formats/safetensors.ts";
import { numel, type StateDict } from "../../formats/state_dict.ts";
import { mergeLora } from "../../merge/lora.ts";
import type { AdapterInput, MergeReport } from "../../merge/lora_types.ts";
import { mergeRowsReference } from "../../kernels/reference.ts";
import type { MergeBackend, MergeRowsRequest } from "../../kernels/types.ts";

/** The scalar reference (`kernels/reference.ts`) as a backend: no workers to start, for unit tests. */
export function referenceBackend(): MergeBackend {
  return {
    kind: "cpu",
    description: "cpu: scalar reference",
    mergeRows: (req: MergeRowsRequest) => Promise.resolve().then(() => mergeRowsReference(req)),
    dispose: () => Promise.resolve(),
  };
}

/** Folder of the LoRA fixtures. */
export const LORA_FIXTURES: string = resolve(
  dirname(fileURLToPath(import.meta.url)),
  "..",
  "fixtures",
  "lora",
);

/** Every fixture case, in generation order. */
export const LORA_CASES: readonly string[] = [
  "linear_bf16",
  "bin_adapter",
  "rslora_patterns",
  "conv1d",
  "embedding",
  "bias_modules",
  "tokens",
  "dora",
  "dora_conv1d",
  "multi",
  "conv2d",
  "out_dtype",
  "wrapped",
  "dora_conv2d",
];

interface CaseJson {
  adapters: { path: string; weight?: number }[];
  wrapped?: { r: number; alpha: number };
  outDtype?: "BF16" | "F16" | "F32" | null;
  scales?: Record<string, number>;
}

/** Outcome of one case. */
export interface CaseResult {
  case: string;
  report: MergeReport;
  /** Elements compared with torch's result. */
  elements: number;
  /** Elements bit-equal to torch's result. */
  equal: number;
  /** True when every compared tensor is F32 (ulps from torch then mean little). */
  f32: boolean;
  /** Largest difference to torch's result, in ulps of the output dtype. */
  maxUlpTorch: number;
  /** Largest |ours − exact| / (half ulp + slack); must be ≤ 1. */
  maxExactRatio: number;
  /** Tensors of our output, in order, with dtype and shape. */
  keys: string[];
  /** Keys of torch's expected output. */
  expectedKeys: string[];
  /** Our output bytes per key (for backend comparisons). */
  bytes: Map<string, Uint8Array>;
  /** Our output dtype per key. */
  dtypes: Map<string, DType>;
  /** Mismatches of dtype/shape, as messages. */
  problems: string[];
}

/** Ordered integer of a float's bits, so that ulp distance is a difference. */
function ordered(dtype: DType, bytes: Uint8Array): Float64Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = dtype === "F32" ? 4 : 2;
  const n = bytes.byteLength / size;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const bits = size === 4 ? dv.getUint32(i * 4, true) : dv.getUint16(i * 2, true);
    const sign = size === 4 ? 0x80000000 : 0x8000;
    const mag = bits & (sign - 1);
    out[i] = bits & sign ? -mag : mag;
  }
  return out;
}

/** Elements, bit-equal elements and the largest ulp distance between two float buffers. */
export function compareUlps(
  dtype: DType,
  a: Uint8Array,
  b: Uint8Array,
): { elements: number; equal: number; maxUlp: number } {
  if (!(dtype === "F32" || dtype === "BF16" || dtype === "F16")) {
    const same = a.length === b.length && a.every((v, i) => v === b[i]);
    return { elements: 1, equal: same ? 1 : 0, maxUlp: same ? 0 : Infinity };
  }
  const oa = ordered(dtype, a);
  const ob = ordered(dtype, b);
  let equal = 0;
  let maxUlp = 0;
  for (let i = 0; i < oa.length; i++) {
    const d = Math.abs(oa[i]! - ob[i]!);
    if (d === 0) equal++;
    else maxUlp = Math.max(maxUlp, d);
  }
  return { elements: oa.length, equal, maxUlp };
}

/** ulp of `x` in `dtype` (f32/f16/bf16), subnormals included. */
export function ulpOf(dtype: DType, x: number): number {
  const a = Math.abs(x);
  const [mant, minExp] = dtype === "BF16" ? [7, -126] : dtype === "F16" ? [10, -14] : [23, -126];
  const e = a === 0 ? minExp : Math.max(minExp, Math.floor(Math.log2(a)));
  return 2 ** (e - mant);
}

/** Opens a case's base (or wrapped) state dict and its adapters as `mergeLora` inputs. */
export async function openCase(
  name: string,
): Promise<{ base: StateDict; adapters: AdapterInput[]; json: CaseJson; dir: string }> {
  const dir = join(LORA_FIXTURES, name);
  const json = JSON.parse(await Deno.readTextFile(join(dir, "case.json"))) as CaseJson;
  const base = await openSafetensors(
    join(dir, json.wrapped ? "wrapped.safetensors" : "base.safetensors"),
  );
  const adapters: AdapterInput[] = json.adapters.map((a) => ({
    path: join(dir, a.path),
    weight: a.weight ?? 1,
  }));
  return { base, adapters, json, dir };
}

/** Merges one case with `backend` and compares it with torch's and the exact result. */
export async function runCase(
  name: string,
  backend: MergeBackend | "cpu" | "webgpu" = referenceBackend(),
  blockBytes = 96,
): Promise<CaseResult> {
  const { base, adapters, json, dir } = await openCase(name);
  const options = {
    backend,
    blockBytes,
    safe: true,
    ...(json.wrapped ? { wrapped: json.wrapped } : {}),
    ...(json.outDtype ? { outDtype: json.outDtype } : {}),
  };
  const { stateDict, report } = await mergeLora(base, adapters, options);
  await using expected = await openSafetensors(join(dir, "expected.safetensors"));
  await using plainBase = await openSafetensors(join(dir, "base.safetensors"));
  // Every case has its float64 expectation: a missing file fails here, it does not skip the check.
  await using exact = await openSafetensors(join(dir, "exact.safetensors"));
  const exactChecked = new Set<string>();
  const result: CaseResult = {
    case: name,
    report,
    elements: 0,
    equal: 0,
    f32: true,
    maxUlpTorch: 0,
    maxExactRatio: 0,
    keys: [...stateDict.keys()],
    expectedKeys: [...expected.keys()],
    bytes: new Map(),
    dtypes: new Map(),
    problems: [],
  };
  try {
    for (const key of expected.keys()) {
      const want = expected.require(key);
      const got = stateDict.get(key);
      if (!got) {
        result.problems.push(`missing ${key}`);
        continue;
      }
      if (got.dtype !== want.dtype || got.shape.join() !== want.shape.join()) {
        result.problems.push(
          `${key}: got ${got.dtype}[${got.shape}] want ${want.dtype}[${want.shape}]`,
        );
        continue;
      }
      const gb = await got.read();
      result.bytes.set(key, gb);
      result.dtypes.set(key, got.dtype);
      const wb = await want.read();
      if (!(want.dtype === "F32" || want.dtype === "BF16" || want.dtype === "F16")) {
        if (gb.join() !== wb.join()) result.problems.push(`${key}: bytes differ`);
        continue;
      }
      if (got.dtype !== "F32") result.f32 = false;
      const go = ordered(got.dtype, gb);
      const wo = ordered(want.dtype, wb);
      for (let i = 0; i < go.length; i++) {
        const d = Math.abs(go[i]! - wo[i]!);
        result.elements++;
        if (d === 0) result.equal++;
        if (d > result.maxUlpTorch) result.maxUlpTorch = d;
      }
      const ex = exact.get(key);
      if (ex) {
        exactChecked.add(key);
        const e = new Float64Array((await ex.read()).slice().buffer);
        const g = decodeF32(got.dtype, gb);
        const b0 = plainBase.get(key);
        const w0 = b0 && b0.shape.join() === got.shape.join()
          ? decodeF32(b0.dtype, await b0.read())
          : new Float32Array(e.length);
        const dora = report.modules.some((m) => m.tensor === key && m.dora !== false);
        const cols = got.shape.length <= 1 ? 1 : numel(got.shape.slice(1));
        let maxDelta = 0;
        for (let i = 0; i < e.length; i++) maxDelta = Math.max(maxDelta, Math.abs(e[i]! - w0[i]!));
        for (let i = 0; i < e.length; i++) {
          // fp32 accumulation slack: rank-term dot products (rank <= 64 here), the add, and for
          // DoRA the norm over `cols` terms and the factor.
          const slack = 2 ** -24 *
            (66 * maxDelta + 4 * Math.abs(e[i]!) + (dora ? (cols + 8) * Math.abs(e[i]!) : 0));
          const bound = ulpOf(got.dtype, e[i]!) / 2 + slack;
          const ratio = Math.abs(g[i]! - e[i]!) / bound;
          if (!(ratio <= result.maxExactRatio)) {
            result.maxExactRatio = Number.isNaN(ratio) ? Infinity : ratio;
          }
        }
      }
    }
    for (const key of stateDict.keys()) {
      if (!expected.has(key)) result.problems.push(`unexpected ${key}`);
    }
    // Every merged tensor has a float64 expectation, and every expectation was compared.
    for (const m of report.modules) {
      if (!exact.has(m.tensor)) result.problems.push(`no float64 expectation for ${m.tensor}`);
    }
    for (const key of exact.keys()) {
      if (!exactChecked.has(key)) result.problems.push(`float64 expectation ${key} not compared`);
    }
    if (exactChecked.size === 0) result.problems.push("no tensor compared with float64");
  } finally {
    await stateDict.close();
  }
  return result;
}
