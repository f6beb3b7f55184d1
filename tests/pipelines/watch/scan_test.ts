import assert from "node:assert/strict";
import { scanCheckpoints, stepOf } from "../../../pipelines/watch/scan.ts";
import { withTempDir } from "../../_helpers/tmp.ts";

Deno.test("`scanCheckpoints()` finds matching folders oldest first", async () => {
  await withTempDir(async (runs) => {
    for (const d of ["step-1280", "step-64", "step-640", "FINAL", "logs", ".hidden-step-1"]) {
      await Deno.mkdir(`${runs}/${d}`);
    }
    await Deno.writeTextFile(`${runs}/step-9`, "a file, not a folder");
    await Deno.mkdir(`${runs}/.step-99.ckpt-staging-1-abc`);
    const found = await scanCheckpoints(runs, ["step-*", "FINAL"]);
    assert.deepEqual(found.map((c) => c.name), ["step-64", "step-640", "step-1280", "FINAL"]);
    assert.deepEqual(found.map((c) => c.step), [64, 640, 1280, undefined]);
    assert.equal(found[0]!.path, `${runs}/step-64`);
  });
});

Deno.test("`scanCheckpoints()` skips finished exports and excluded outputs", async () => {
  await withTempDir(async (runs) => {
    for (const d of ["step-1", "step-2", "step-2-hf", "step-3"]) await Deno.mkdir(`${runs}/${d}`);
    await Deno.writeTextFile(`${runs}/step-2-hf/ckpt-manifest.json`, "{}");
    const found = await scanCheckpoints(runs, ["step-*"], { exclude: new Set([`${runs}/step-3`]) });
    assert.deepEqual(found.map((c) => c.name), ["step-1", "step-2"]);
    const known = await scanCheckpoints(runs, ["step-*"], { known: new Set(["step-2-hf"]) });
    assert.deepEqual(known.map((c) => c.name), ["step-1", "step-2", "step-2-hf", "step-3"]);
  });
});

Deno.test("`scanCheckpoints()` follows multi-level patterns and tolerates a missing folder", async () => {
  await withTempDir(async (runs) => {
    for (const d of ["a/step-2", "a/step-10", "b/FINAL", "b/other"]) {
      await Deno.mkdir(`${runs}/${d}`, { recursive: true });
    }
    const found = await scanCheckpoints(runs, ["*/step-*", "*/FINAL", "a/step-2"]);
    assert.deepEqual(found.map((c) => c.name), ["a/step-2", "a/step-10", "b/FINAL"]);
    assert.deepEqual(await scanCheckpoints(`${runs}/nope`, ["*"]), []);
  });
});

Deno.test("`stepOf()` takes the last number in a name", () => {
  assert.equal(stepOf("step-64000"), 64000);
  assert.equal(stepOf("checkpoint-12-of-500"), 500);
  assert.equal(stepOf("FINAL"), undefined);
});
