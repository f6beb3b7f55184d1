/**
 * Runs what `examples/` holds: both library programs, and each example config against a demo run
 * (the test task type-checks them too, with `deno check .`).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt } from "../cli/_cli.ts";

async function deno(args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

Deno.test("examples/demo.ts (deno task demo) builds, exports, lists and verifies", async () => {
  const r = await deno(["run", "-A", "examples/demo.ts", "--size", "tiny"]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /\[7\/7\] writeValueHead/);
  assert.match(r.out, /v_head\.pt/);
  assert.match(r.out, /verified: 10 files hashed, 10 loaded, \d+ merged rows recomputed/);
});

Deno.test("examples/export_run.ts exports and verifies a run", async () => {
  const r = await deno(["run", "-A", "examples/export_run.ts"]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /verified: true/);
});

Deno.test("examples/custom_stage.ts runs a custom stage beside the built-ins", async () => {
  const r = await deno(["run", "-A", "examples/custom_stage.ts"]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /README\.md/);
  assert.match(r.out, /Architecture: LlamaForCausalLM, 2 layers/);
});

Deno.test("every example config runs against the demo run layout", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    const outputs: Record<string, string> = {
      "halos_final.jsonc": "FINAL",
      "halos_intermediate.jsonc": "step-64000",
      "ppo_final.jsonc": "FINAL-ppo",
      "plain_merge.jsonc": "merged",
    };
    for (const [file, out] of Object.entries(outputs)) {
      const r = await ckpt([
        "run",
        join(REPO_ROOT, "examples", file),
        "--var",
        `run=${run.dir}`,
        "--log",
        "quiet",
      ]);
      assert.equal(r.code, 0, `${file}: ${r.stderr}`);
      const v = await ckpt(["verify", join(run.dir, out), "--hashes-only"]);
      assert.equal(v.code, 0, `${file}: ${v.stdout}`);
    }
  });
});
