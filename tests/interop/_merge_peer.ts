/**
 * Peer scripts shared by the merge interop tests.
 * @module
 */
import { runPythonJson } from "../_helpers/peer.ts";

/** Peer script: ulp comparison of two safetensors files (ours, expected). */
export const COMPARE: string = String.raw`
import json, sys, torch
from safetensors.torch import load_file
ours = load_file(sys.argv[1]); exp = load_file(sys.argv[2])
def ordered(t):
  i = t.view(torch.int16).to(torch.int64) if t.dtype in (torch.bfloat16, torch.float16) else t.view(torch.int32).to(torch.int64)
  sign = 1 << (15 if t.dtype in (torch.bfloat16, torch.float16) else 31)
  neg = i < 0
  mag = torch.where(neg, i + sign, i)
  return torch.where(neg, -mag, mag)
res = {"keys_equal": sorted(ours) == sorted(exp), "elements": 0, "equal": 0, "max_ulp": 0, "dtypes_equal": True}
for k, v in exp.items():
  o = ours[k]
  if o.dtype != v.dtype or o.shape != v.shape:
    res["dtypes_equal"] = False; continue
  d = (ordered(o) - ordered(v)).abs()
  res["elements"] += d.numel(); res["equal"] += int((d == 0).sum()); res["max_ulp"] = max(res["max_ulp"], int(d.max()))
print(json.dumps(res))
`;

/** What {@linkcode COMPARE} reports. */
export interface Comparison {
  keys_equal: boolean;
  dtypes_equal: boolean;
  elements: number;
  equal: number;
  max_ulp: number;
}

/** Compares two safetensors files (ours, expected) element by element in ulps, through torch. */
export function compareSafetensors(ours: string, expected: string): Promise<Comparison> {
  return runPythonJson<Comparison>(COMPARE, [ours, expected]);
}
