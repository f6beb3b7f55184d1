/**
 * The torch-written fixtures (tests/fixtures/torch, made by its generate.py) and our view of a
 * loaded value in the form the fixtures' `expected.json` and the peer's `describe()` use.
 * @module
 */
import { join } from "node:path";
import { PyDict, type PyValue, toJSONish, TorchTensor } from "../../formats/torch/values.ts";
import { REPO_ROOT } from "./peer.ts";

/** The torch fixtures folder. */
export const TORCH_FIX: string = join(REPO_ROOT, "tests", "fixtures", "torch");

/** The fixture files torch 2.6 wrote with plain `torch.save` (protocol 2, current layout). */
export const TORCH_SAVED: readonly string[] = [
  "dtypes.pt",
  "views.pt",
  "params.pt",
  "model_sd.pt",
  "tied.pt",
  "optimizer.pt",
  "scheduler.pt",
  "values.pt",
];

/** `toJSONish(v)` without storage keys (Python cannot see them). */
export function pyTree(v: PyValue): unknown {
  return JSON.parse(JSON.stringify(toJSONish(v)), (k, x) => (k === "key" ? undefined : x));
}

/** Every tensor of a value tree, keyed by its path (dict keys / list positions joined with "."). */
export function flatTensors(
  v: PyValue,
  prefix = "",
  out: Map<string, TorchTensor> = new Map(),
): Map<string, TorchTensor> {
  if (v instanceof TorchTensor) out.set(prefix, v);
  else if (v instanceof PyDict) {
    for (const [k, x] of v) flatTensors(x, prefix === "" ? String(k) : `${prefix}.${k}`, out);
  } else if (Array.isArray(v)) {
    v.forEach((x, i) => flatTensors(x, prefix === "" ? String(i) : `${prefix}.${i}`, out));
  }
  return out;
}

/** JSON-ish view with tensors replaced by their dtype, shape and bytes (hex). */
export async function withBytes(v: PyValue, sortKeys = false): Promise<unknown> {
  if (v instanceof TorchTensor) {
    const b = await v.read();
    return {
      dtype: v.dtype,
      shape: [...v.shape],
      hex: Array.from(b, (x) => x.toString(16)).join(","),
    };
  }
  if (v instanceof PyDict) {
    const o: [unknown, unknown][] = [];
    for (const [k, x] of v) o.push([k, await withBytes(x, sortKeys)]);
    if (sortKeys) o.sort((a, b) => String(a[0]) < String(b[0]) ? -1 : 1);
    return { kind: v.kind, entries: o };
  }
  if (Array.isArray(v)) return Promise.all(v.map((x) => withBytes(x, sortKeys)));
  return toJSONish(v);
}
