import { parseStageOptions } from "../../../pipelines/stage.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../errors.ts";
import { StateDict, type TensorRef } from "../../../formats/state_dict.ts";
import { writeSafetensors } from "../../../formats/safetensors.ts";
import { loadTorch } from "../../../formats/torch/load.ts";
import type { TorchTensor } from "../../../formats/torch/values.ts";
import { writeValueHeadStage } from "../../../pipelines/stages/write_value_head.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { f32Tensor, fakeContext, listFiles } from "../_context.ts";

function f32(shape: number[], start = 0): TensorRef {
  return f32Tensor(shape, (i) => start + i);
}

Deno.test("`writeValueHead` writes v_head.pt (and v_head.safetensors) and checks hidden_size", async () => {
  await withTempDir(async (dir) => {
    await writeSafetensors(
      join(dir, "heads.safetensors"),
      new StateDict([["v_head.summary.weight", f32([1, 3], 5)], ["v_head.summary.bias", f32([1])], [
        "other",
        f32([2]),
      ]]),
    );
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir, modelConfig: { hidden_size: 3 } });
    await writeValueHeadStage.run(
      ctx,
      parseStageOptions(writeValueHeadStage, {
        from: "heads.safetensors",
        prefix: "v_head.",
        safetensors: true,
      }),
    );
    assert.deepEqual(await listFiles(out), ["v_head.pt", "v_head.safetensors"]);
    await using pt = await loadTorch(join(out, "v_head.pt"));
    const d = pt.dict();
    assert.equal(d.kind, "OrderedDict");
    assert.deepEqual([...d.keys()].sort(), ["summary.bias", "summary.weight"]);
    const w = d.get("summary.weight") as TorchTensor;
    assert.deepEqual([...new Float32Array((await w.read()).slice().buffer)], [5, 6, 7]);
    const out2 = join(dir, "out2");
    await Deno.mkdir(out2);
    await assert.rejects(
      writeValueHeadStage.run(
        fakeContext(out2, { baseDir: dir, modelConfig: { hidden_size: 8 } }),
        parseStageOptions(writeValueHeadStage, { from: "heads.safetensors", prefix: "v_head." }),
      ),
      (e) => isCkptError(e, "VALUE_HEAD_MISMATCH"),
    );
    await assert.rejects(
      writeValueHeadStage.run(
        fakeContext(out2, { baseDir: dir }),
        parseStageOptions(writeValueHeadStage, { from: "heads.safetensors", prefix: "nope." }),
      ),
      (e) => isCkptError(e, "VALUE_HEAD_MISSING"),
    );
    assert.deepEqual(await listFiles(out2), []);
  });
});
