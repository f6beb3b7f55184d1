/**
 * Interop: a PEFT-wrapped LoRA model written by real FSDP2 as DCP shards (helper F's fixture
 * `tests/fixtures/dcp/lora_w2`), gathered by ckpt and merged with `wrapped: { r, alpha }`, equals
 * torch's PEFT merge of the same weights. Fails (never skips) when the peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { openDcpStateDict } from "../../formats/dcp.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { mergeLora } from "../../merge/lora.ts";
import { REPO_ROOT, runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { compareSafetensors } from "./_merge_peer.ts";

const DCP_EXPECTED = String.raw`
import json, sys, torch
from safetensors.torch import save_file
m = torch.load(sys.argv[1], weights_only=True)["model"]
P = "base_model.model."
out = {}
for k, v in m.items():
  if ".lora_" in k: continue
  name = k[len(P):].replace(".base_layer.", ".")
  if ".base_layer." in k:
    a = m[k.replace("base_layer.weight", "lora_A.default.weight")].float()
    b = m[k.replace("base_layer.weight", "lora_B.default.weight")].float()
    v = (v.float() + (b @ a) * (4 / 2)).to(v.dtype)
  out[name] = v.contiguous()
save_file(out, sys.argv[2])
print(json.dumps(len(out)))
`;

Deno.test("a PEFT-wrapped LoRA model gathered from real FSDP2 DCP shards merges like torch", async () => {
  const fixture = join(REPO_ROOT, "tests", "fixtures", "dcp", "lora_w2");
  await withTempDir(async (dir) => {
    const { r, lora_alpha } = JSON.parse(await Deno.readTextFile(join(fixture, "lora.json")));
    const sd = await openDcpStateDict(join(fixture, "model"));
    const { stateDict, report } = await mergeLora(sd, [], {
      wrapped: { r, alpha: lora_alpha },
      backend: "cpu",
      safe: true,
    });
    assert.equal(report.modules.length, 2);
    await writeSafetensors(join(dir, "ours.safetensors"), stateDict);
    await stateDict.close();
    await runPythonJson(DCP_EXPECTED, [
      join(fixture, "reference.pt"),
      join(dir, "expected.safetensors"),
    ]);
    const res = await compareSafetensors(
      join(dir, "ours.safetensors"),
      join(dir, "expected.safetensors"),
    );
    assert.ok(res.keys_equal && res.dtypes_equal);
    assert.ok(res.max_ulp <= 1, `max ${res.max_ulp} ulp`);
    console.log(`dcp lora_w2: ${res.equal}/${res.elements} equal to torch, max ${res.max_ulp} ulp`);
  });
});
