/**
 * The library side of `ckpt inspect`: detect what a path holds with the input kinds' one set of
 * rules ({@linkcode inputKinds}) and describe it as a plain {@linkcode InspectReport} (tensors with
 * dtype, shape, size and file; totals; metadata), reading only headers, never tensor data.
 *
 * @example Inspecting a safetensors file
 * ```ts
 * import { inspectPath } from "./inspect.ts";
 * import { writeSafetensors } from "../formats/safetensors.ts";
 * import { StateDict, tensorFromBytes } from "../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, new StateDict([["w", tensorFromBytes("BF16", [2, 3], new Uint8Array(12))]]));
 * const report = await inspectPath(path);
 * assert.equal(report.kind, "safetensors");
 * assert.deepEqual(report.tensors[0], { name: "w", dtype: "BF16", shape: [2, 3], bytes: 12 });
 * assert.equal(report.totalBytes, 12);
 * await Deno.remove(path);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { byteLength } from "../formats/state_dict.ts";
import { inputKinds } from "./kinds.ts";
import { type InputProbe, probeInput } from "./probe.ts";
import type { InspectReport, InspectTensor } from "./report.ts";
import type { InputKind } from "./types.ts";

export type { InspectFile, InspectKind, InspectReport, InspectTensor } from "./report.ts";
export type { InputProbe } from "./probe.ts";

/** Options of {@linkcode inspectPath}. */
export interface InspectOptions {
  /** Extra input kinds, asked before the built-ins. */
  kinds?: readonly InputKind[];
}

function cannotInspect(path: string, cause: unknown): CkptError {
  return new CkptError("FILE_OPEN", `Cannot inspect "${path}": ${(cause as Error).message}`, {
    file: path,
    cause,
  });
}

/** A report listing the tensors of the state dict `kind` opens, for kinds without `inspect`. */
async function inspectByOpening(kind: InputKind, probe: InputProbe): Promise<InspectReport> {
  await using sd = await kind.open(probe, {});
  const tensors: InspectTensor[] = [...sd].map(([name, ref]) => ({
    name,
    dtype: ref.dtype,
    shape: [...ref.shape],
    bytes: byteLength(ref.dtype, ref.shape),
  }));
  return {
    kind: kind.name,
    path: probe.path,
    tensors,
    totalBytes: tensors.reduce((n, t) => n + t.bytes, 0),
  };
}

/**
 * Describes the checkpoint at `path` (a file or a folder) with the first input kind that
 * recognises it. `FILE_OPEN` when the path cannot be read, `INSPECT_UNKNOWN` when no kind
 * recognises it; a kind's own errors (a corrupt header) pass through with their codes.
 */
export async function inspectPath(
  path: string,
  options: InspectOptions = {},
): Promise<InspectReport> {
  let probe: InputProbe;
  try {
    probe = await probeInput(path);
  } catch (cause) {
    throw cannotInspect(path, cause);
  }
  if (probe.unreadable !== undefined) throw cannotInspect(path, probe.unreadable);
  const kinds = inputKinds(options.kinds);
  for (const kind of kinds) {
    if (!(await kind.detect(probe))) continue;
    return kind.inspect ? await kind.inspect(probe) : await inspectByOpening(kind, probe);
  }
  throw new CkptError(
    "INSPECT_UNKNOWN",
    `Cannot inspect "${path}": it is not a checkpoint ckpt recognises (${
      kinds.map((k) => k.name).join(", ")
    })`,
    { file: path },
  );
}
