/**
 * The torch-written fixtures (tests/fixtures/torch, made by its generate.py) and our view of a
 * loaded value in the form the fixtures' `expected.json` and the peer's `describe()` use.
 * @module
 */
import { join } from "node:path";
import { type PyValue, toJSONish } from "../../formats/torch/values.ts";
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
