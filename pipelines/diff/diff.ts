/**
 * `diffStateDicts`: what differs between two lazy state dicts, tensor by tensor, streaming. Tensors
 * are matched by name; each pair is read once, by row blocks of both sides in step (memory bounded
 * by the block size, not the model), and compared element by element in float64: differing
 * elements (the first one with its index and values), max |A−B| and where, max distance in ulps of
 * the wider dtype, ‖A−B‖/‖A‖ and the cosine similarity. Names only in A or only in B, shape and
 * dtype mismatches are reported too, with totals and a verdict under a {@linkcode Tolerance}.
 *
 * @example A flipped element, found with its index
 * ```ts
 * import { diffStateDicts } from "./diff.ts";
 * import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const t = (v: number[]) => tensorFromBytes("F32", [2, 2], new Uint8Array(new Float32Array(v).buffer));
 * const a = new StateDict([["w", t([1, 2, 3, 4])]]);
 * const b = new StateDict([["w", t([1, 2, -3, 4])]]);
 * const report = await diffStateDicts(a, b);
 * assert.equal(report.equal, false);
 * assert.deepEqual(report.tensors[0]!.first, { at: [1, 0], a: 3, b: -3 });
 * assert.equal(report.tensors[0]!.maxAbs, 6);
 * ```
 * @module
 */
import { type DType, DTYPES } from "../../formats/dtype.ts";
import {
  numel,
  rowCount,
  rowNumel,
  type StateDict,
  type TensorRef,
} from "../../formats/state_dict.ts";
import { type ComparedFigures, TensorComparer, ulpDType } from "./_compare.ts";

/** When two tensors count as equal: at most `ulp` ulps of the wider dtype apart, or `abs` apart. */
export type Tolerance = { ulp: number } | { abs: number };

/** How one tensor compares: `equal` (every value), `close` (within the tolerance), `different`,
 * `dtype` (values within the tolerance, dtypes differ), `shape` (shapes differ; not read). */
export type TensorStatus = "equal" | "close" | "different" | "dtype" | "shape";

/** The figures of one tensor present on both sides. */
export interface TensorDiff {
  /** Tensor name (after wrapper names are stripped). */
  name: string;
  /** Verdict for this tensor. */
  status: TensorStatus;
  /** dtype in A. */
  dtypeA: DType;
  /** dtype in B. */
  dtypeB: DType;
  /** Shape in A. */
  shapeA: number[];
  /** Shape in B. */
  shapeB: number[];
  /** Elements compared (0 when the shapes differ). */
  numel: number;
  /** Elements whose values differ. */
  differing: number;
  /** Elements where exactly one side is NaN (counted in `differing`). */
  nanMismatch: number;
  /** Largest |A−B| (NaN pairs aside). */
  maxAbs: number;
  /** Index of that element (absent when nothing differs). */
  maxAbsAt?: number[];
  /** Largest distance in ulps of the wider dtype (`ulpDType`), Infinity when a NaN meets a number. */
  maxUlp: number;
  /** The dtype whose ulps `maxUlp` counts (`"int"`: integer units). */
  ulpOf: DType | "int";
  /** ‖A‖ (Frobenius, float64). */
  normA: number;
  /** ‖A−B‖ (Frobenius, float64). */
  normDiff: number;
  /** ‖A−B‖/‖A‖ (0 when equal, Infinity when A is all zeros and B is not). */
  relNorm: number;
  /** A·B/(‖A‖‖B‖): 1 when both are all zeros, 0 when one is. */
  cosine: number;
  /** The first differing element: index and both values. */
  first?: { at: number[]; a: number; b: number };
}

/** Totals over all tensors. */
export interface DiffTotals {
  /** Names on both sides. */
  compared: number;
  /** Tensors per status. */
  equal: number;
  /** Within the tolerance but not equal. */
  close: number;
  /** Outside the tolerance. */
  different: number;
  /** Values within the tolerance, dtypes differ (and `allowDtype` is off). */
  dtype: number;
  /** Shapes differ. */
  shape: number;
  /** Names only in A. */
  onlyA: number;
  /** Names only in B. */
  onlyB: number;
  /** Elements compared. */
  elements: number;
  /** Elements that differ. */
  differing: number;
  /** Largest |A−B| over all tensors, and the tensor. */
  maxAbs: number;
  /** The tensor of `maxAbs` (absent when nothing differs). */
  maxAbsTensor?: string;
  /** Largest ulp distance over all tensors. */
  maxUlp: number;
  /** ‖A−B‖/‖A‖ over every compared element of every tensor. */
  relNorm: number;
}

/** What {@linkcode diffStateDicts} returns. */
export interface DiffReport {
  /** The tolerance the verdict used. */
  tolerance: Tolerance;
  /** True when no name is on one side only and every tensor is `equal` or `close`. */
  equal: boolean;
  /** Tensors on both sides, in A's order. */
  tensors: TensorDiff[];
  /** Names only in A, in A's order. */
  onlyA: string[];
  /** Names only in B, in B's order. */
  onlyB: string[];
  /** Totals. */
  totals: DiffTotals;
}

/** Options of {@linkcode diffStateDicts}. */
export interface DiffOptions {
  /** Default `{ ulp: 0 }`: values must be equal. */
  tolerance?: Tolerance;
  /** Judge tensors whose dtypes differ by their values alone. Default false (status `dtype`). */
  allowDtype?: boolean;
  /** Bytes of the wider side per block read. Default 8 MiB. */
  blockBytes?: number;
  /** Called after each tensor (progress). */
  onTensor?: (diff: TensorDiff, index: number, total: number) => void;
  /** Aborts between blocks. */
  signal?: AbortSignal;
}

/** The index along each dimension of flat element `flat` of a row-major `shape`. */
export function unflatten(flat: number, shape: readonly number[]): number[] {
  const at = new Array<number>(shape.length).fill(0);
  let rest = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    const n = shape[d]!;
    at[d] = n === 0 ? 0 : rest % n;
    rest = n === 0 ? 0 : Math.floor(rest / n);
  }
  return at;
}

function within(f: ComparedFigures, tol: Tolerance): boolean {
  if (f.nanMismatch > 0) return false;
  return "ulp" in tol ? f.maxUlp <= tol.ulp : f.maxAbs <= tol.abs;
}

function relNorm(sumSqDiff: number, sumSqA: number): number {
  if (sumSqDiff === 0) return 0;
  return sumSqA === 0 ? Infinity : Math.sqrt(sumSqDiff) / Math.sqrt(sumSqA);
}

function cosine(f: ComparedFigures): number {
  if (f.sumSqA === 0 && f.sumSqB === 0) return 1;
  if (f.sumSqA === 0 || f.sumSqB === 0) return 0;
  return Math.max(-1, Math.min(1, f.dot / (Math.sqrt(f.sumSqA) * Math.sqrt(f.sumSqB))));
}

/** Reads rows `[s, e)` of both refs (one promise for the pair). */
function readPair(a: TensorRef, b: TensorRef, s: number, e: number) {
  return Promise.all([a.read(s, e), b.read(s, e)]);
}

/** Compares `a` and `b` (same shape) block by block, reading the next blocks while comparing. */
async function compareRefs(
  a: TensorRef,
  b: TensorRef,
  blockBytes: number,
  signal: AbortSignal | undefined,
): Promise<ComparedFigures> {
  const comparer = new TensorComparer(a.dtype, b.dtype);
  const rows = rowCount(a.shape);
  const perRow = rowNumel(a.shape) * Math.max(DTYPES[a.dtype].size, DTYPES[b.dtype].size);
  const step = Math.max(1, Math.floor(blockBytes / Math.max(1, perRow)));
  if (numel(a.shape) === 0) return comparer.figures;
  let next = readPair(a, b, 0, Math.min(rows, step));
  for (let s = 0; s < rows; s += step) {
    signal?.throwIfAborted();
    const [ba, bb] = await next;
    const ns = s + step;
    if (ns < rows) next = readPair(a, b, ns, Math.min(rows, ns + step));
    comparer.add(ba, bb);
  }
  return comparer.figures;
}

/** The figures of one pair: shapes first (a shape mismatch reads nothing), then the values. */
async function diffTensor(
  name: string,
  a: TensorRef,
  b: TensorRef,
  options: DiffOptions,
): Promise<TensorDiff> {
  const tol = options.tolerance ?? { ulp: 0 };
  const head = {
    name,
    dtypeA: a.dtype,
    dtypeB: b.dtype,
    shapeA: [...a.shape],
    shapeB: [...b.shape],
    ulpOf: ulpDType(a.dtype, b.dtype),
  };
  const sameShape = a.shape.length === b.shape.length && a.shape.every((d, i) => d === b.shape[i]);
  if (!sameShape) {
    return {
      ...head,
      status: "shape",
      numel: 0,
      differing: 0,
      nanMismatch: 0,
      maxAbs: 0,
      maxUlp: 0,
      normA: 0,
      normDiff: 0,
      relNorm: 0,
      cosine: 0,
    };
  }
  const f = await compareRefs(a, b, options.blockBytes ?? 8 << 20, options.signal);
  const status: TensorStatus = f.differing === 0 ? "equal" : within(f, tol) ? "close" : "different";
  const dtypeOff = a.dtype !== b.dtype && !options.allowDtype && status !== "different";
  return {
    ...head,
    status: dtypeOff ? "dtype" : status,
    numel: f.numel,
    differing: f.differing,
    nanMismatch: f.nanMismatch,
    maxAbs: f.maxAbs,
    ...(f.maxAbsIndex < 0 ? {} : { maxAbsAt: unflatten(f.maxAbsIndex, a.shape) }),
    maxUlp: f.maxUlp,
    normA: Math.sqrt(f.sumSqA),
    normDiff: Math.sqrt(f.sumSqDiff),
    relNorm: relNorm(f.sumSqDiff, f.sumSqA),
    cosine: cosine(f),
    ...(f.first
      ? { first: { at: unflatten(f.first.index, a.shape), a: f.first.a, b: f.first.b } }
      : {}),
  };
}

/**
 * Compares `a` against `b` (see the module doc). Reads every tensor present on both sides with
 * equal shapes exactly once per side; closes neither state dict.
 */
export async function diffStateDicts(
  a: StateDict,
  b: StateDict,
  options: DiffOptions = {},
): Promise<DiffReport> {
  const tolerance = options.tolerance ?? { ulp: 0 };
  const both = [...a.keys()].filter((k) => b.has(k));
  const onlyA = [...a.keys()].filter((k) => !b.has(k));
  const onlyB = [...b.keys()].filter((k) => !a.has(k));
  const tensors: TensorDiff[] = [];
  let sumSqA = 0, sumSqDiff = 0;
  const totals: DiffTotals = {
    compared: both.length,
    equal: 0,
    close: 0,
    different: 0,
    dtype: 0,
    shape: 0,
    onlyA: onlyA.length,
    onlyB: onlyB.length,
    elements: 0,
    differing: 0,
    maxAbs: 0,
    maxUlp: 0,
    relNorm: 0,
  };
  for (const [i, name] of both.entries()) {
    options.signal?.throwIfAborted();
    const d = await diffTensor(name, a.require(name), b.require(name), { ...options, tolerance });
    tensors.push(d);
    totals[d.status]++;
    totals.elements += d.numel;
    totals.differing += d.differing;
    if (
      d.maxAbsAt !== undefined && (totals.maxAbsTensor === undefined || d.maxAbs > totals.maxAbs)
    ) {
      totals.maxAbs = d.maxAbs;
      totals.maxAbsTensor = name;
    }
    totals.maxUlp = Math.max(totals.maxUlp, d.maxUlp);
    sumSqA += d.normA * d.normA;
    sumSqDiff += d.normDiff * d.normDiff;
    options.onTensor?.(d, i, both.length);
  }
  totals.relNorm = relNorm(sumSqDiff, sumSqA);
  const equal = onlyA.length === 0 && onlyB.length === 0 &&
    tensors.every((t) => t.status === "equal" || t.status === "close");
  return { tolerance, equal, tensors, onlyA, onlyB, totals };
}
