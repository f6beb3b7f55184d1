/**
 * Validation of a {@linkcode MergeRowsRequest} shared by every merge backend: sizes of W, A, B and
 * the DoRA magnitude against `rows`, `cols` and `rank`, and the dtypes. Backends call it before
 * doing any work, so bad input fails the same way (and with the same code) on each of them.
 *
 * @example Checking a request
 * ```ts
 * import { validateMergeRequest } from "./validate.ts";
 * import assert from "node:assert/strict";
 *
 * const req = {
 *   name: "w", w: new Uint8Array(2 * 3 * 2), wDtype: "BF16", outDtype: "BF16", rows: 2, cols: 3,
 *   rank: 1, a: new Float32Array(3), b: new Float32Array(2), scale: 1,
 * } as const;
 * validateMergeRequest(req);
 * assert.throws(() => validateMergeRequest({ ...req, cols: 4 }), { code: "MERGE_SHAPE" });
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { isMergeDType, MERGE_DTYPE_SIZE, type MergeRowsRequest } from "./types.ts";

/**
 * Throws a `CkptError` when the request is inconsistent: `MERGE_DTYPE` for a dtype other than
 * BF16/F16/F32, `MERGE_SHAPE` for sizes of `w`, `a`, `b` or `magnitude` that do not match
 * `rows × cols`, `rank × cols`, `rows × rank` and `rows`, or non-integer/negative dimensions.
 * Messages name the tensor and both shapes.
 */
export function validateMergeRequest(req: MergeRowsRequest): void {
  validateMergeShape(req);
  checkBlockBytes(req, "W block", req.w, req.wDtype);
}

/**
 * `MERGE_SHAPE` unless `bytes` holds exactly `rows × cols` elements of `dtype` (`what` names the
 * buffer in the message: the W block, or the output of `mergeRowsInto`).
 */
export function checkBlockBytes(
  req: Pick<MergeRowsRequest, "name" | "rows" | "cols">,
  what: string,
  bytes: Uint8Array,
  dtype: MergeRowsRequest["wDtype"],
): void {
  const need = req.rows * req.cols * MERGE_DTYPE_SIZE[dtype];
  if (bytes.byteLength !== need) {
    throw new CkptError(
      "MERGE_SHAPE",
      `Cannot merge "${req.name}": ${what} has ${bytes.byteLength} bytes, ${dtype} [${req.rows}, ${req.cols}] needs ${need}`,
      { tensor: req.name },
    );
  }
}

/** {@linkcode validateMergeRequest} without the W block: everything a request holds but `w`. */
export function validateMergeShape(req: Omit<MergeRowsRequest, "w">): void {
  const { name, rows, cols, rank } = req;
  if (!isMergeDType(req.wDtype) || !isMergeDType(req.outDtype)) {
    throw new CkptError(
      "MERGE_DTYPE",
      `Cannot merge "${name}": dtypes ${req.wDtype} -> ${req.outDtype} are not among BF16, F16, F32`,
      { tensor: name },
    );
  }
  for (const [label, v] of [["rows", rows], ["cols", cols], ["rank", rank]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new CkptError("MERGE_SHAPE", `Cannot merge "${name}": ${label} is ${v}`, {
        tensor: name,
      });
    }
  }
  const shape = (r: number, c: number) => `[${r}, ${c}]`;
  if (req.a.length !== rank * cols) {
    throw new CkptError(
      "MERGE_SHAPE",
      `Cannot merge "${name}": A has ${req.a.length} elements, expected ${
        shape(rank, cols)
      } for W ${shape(rows, cols)}`,
      { tensor: name },
    );
  }
  if (req.b.length !== rows * rank) {
    throw new CkptError(
      "MERGE_SHAPE",
      `Cannot merge "${name}": B block has ${req.b.length} elements, expected ${
        shape(rows, rank)
      } for A ${shape(rank, cols)}`,
      { tensor: name },
    );
  }
  if (req.magnitude !== undefined && req.magnitude.length !== rows) {
    throw new CkptError(
      "MERGE_SHAPE",
      `Cannot merge "${name}": DoRA magnitude has ${req.magnitude.length} elements, expected ${rows} for W ${
        shape(rows, cols)
      }`,
      { tensor: name },
    );
  }
  if (!Number.isFinite(req.scale)) {
    throw new CkptError("MERGE_SCALE", `Cannot merge "${name}": scale is ${req.scale}`, {
      tensor: name,
    });
  }
}
